"""Assembling a run from its config: the model (fresh or published weights), the device mesh, the data.

Pretraining and the downstream evaluation both start from these; nothing here trains or tracks.
"""
from __future__ import annotations

import dataclasses

from ankh3.config import ConfigError
from ankh3.errors import UserError


@dataclasses.dataclass
class Pieces:
    """What pretraining and the downstream evaluation share."""

    model_cfg: object
    model: object
    tokenizer: object
    mesh: object


def build_model(config):
    """(ModelConfig, T5, Tokenizer): fresh from the seed, or the published weights in init_from."""
    import jax
    from flax import nnx

    from ankh3.config import model_config
    from ankh3.model import T5
    from ankh3.tokenizer import Tokenizer

    cfg = model_config(config.model, jax.default_backend())
    if config.init_from:
        from ankh3.hf_checkpoint import load_pretrained_dir

        # The checkpoint fixes the architecture; the run still picks how it computes.
        runtime = {k: getattr(cfg, k) for k in ("dtype", "remat", "attention", "dropout_rate", "scan_unroll")}
        from ankh3.checkpoint import collect_abandoned_reads, first_line

        try:
            return load_pretrained_dir(config.init_from, seed=config.seed, **runtime)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 -- orbax/tensorstore on damaged files: bare Exception, OSError, ...
            why = first_line(e)
        finally:
            collect_abandoned_reads()
        raise ConfigError(f"config.init_from: {config.init_from} cannot be read ({why}); it is damaged or cut "
                          "short: write it again with python -m ankh3.hf_checkpoint")
    return cfg, T5(cfg, rngs=nnx.Rngs(config.seed)), Tokenizer.default(cfg.vocab_size)


def build_mesh(config):
    import jax

    from ankh3.sharding import make_mesh

    model_axis = int(config.mesh.model)
    count = jax.device_count()
    if model_axis < 1 or count % model_axis:
        raise ConfigError(f"config.mesh.model={model_axis} must divide the {count} devices")
    return make_mesh(data=count // model_axis, model=model_axis)


def build_pieces(config) -> Pieces:
    """Model, tokenizer and mesh; with init_from, the checkpoint's architecture is written back into
    config.model, so what the run records is what runs."""
    model_cfg, model, tokenizer = build_model(config)
    if config.init_from:
        for field in dataclasses.fields(model_cfg):
            config.model[field.name] = getattr(model_cfg, field.name)
    return Pieces(model_cfg, model, tokenizer, build_mesh(config))


def host_batch_size(global_batch: int, process_count: int) -> int:
    """This process's share of config.data.batch_size, which is the global batch over all hosts."""
    if global_batch % process_count:
        raise ConfigError(f"config.data.batch_size={global_batch} is the global batch and must split evenly over "
                          f"the {process_count} processes; set it to a multiple of {process_count}")
    return global_batch // process_count


def build_data(config, tokenizer, mixture, process_index: int | None = None, process_count: int | None = None):
    """(training batch iterator, fixed held-out batches) of this process: both from the Grain pipeline.

    Each of the process_count hosts (default: jax's) reads its own 1/process_count of the records and
    builds batches of batch_size / process_count rows. The global batch is those shares side by side:
    assembling it is jax.make_array_from_process_local_data(NamedSharding(mesh, batch spec), share),
    which ankh3.train.device_batch does not do yet, so `experiment.run` refuses more than one process
    (see check_single_process).
    """
    import jax

    from ankh3.data import pipeline
    from ankh3.data.sources import open_source

    data = config.data
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    common = dict(batch_size=host_batch_size(data.batch_size, process_count), encoder_length=data.encoder_length,
                  decoder_length=data.decoder_length, max_residues=data.max_residues, crop=data.crop,
                  min_residues=data.min_residues, on_invalid=data.on_invalid,
                  process_index=process_index, process_count=process_count)
    train = pipeline.make_iterator(open_source(data.train), tokenizer, mixture, seed=config.seed, shuffle=True,
                                   worker_count=data.worker_count, **common)
    # The held-out batches are drawn once (fixed masking too), so every evaluation sees the same data.
    valid = pipeline.make_iterator(open_source(data.valid), tokenizer, mixture, seed=config.seed + 1,
                                   shuffle=False, **common)
    return train, [next(valid) for _ in range(config.train.eval_batches)]


def check_single_process(process_count: int) -> None:
    """Several JAX processes (multi-host) would each place their share of the batch as if it were the
    whole batch; until ankh3.train.device_batch assembles the global array, refuse instead of training wrong."""
    if process_count > 1:
        raise ConfigError(f"launch/run.py runs as one of {process_count} JAX processes (multi-host), which is not "
                          "supported yet: the per-host batches are not assembled into one global batch; run on "
                          "one host (all its local devices are used)")
