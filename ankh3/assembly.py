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
    """The (data, model) mesh over every device of every process; data parallel over what model leaves."""
    import jax

    from ankh3.sharding import make_mesh

    model_axis = int(config.mesh.model)
    count = jax.device_count()
    if model_axis < 1 or count % model_axis:
        raise ConfigError(f"config.mesh.model={model_axis} must divide the {count} devices")
    return make_mesh(data=count // model_axis, model=model_axis)


def sharding_rules(config):
    """The logical-axis rules of the run: tensor parallel (default) or fully sharded (config.mesh.fsdp)."""
    from ankh3.sharding import FSDP_RULES, RULES

    return FSDP_RULES if config.mesh.get("fsdp", False) else RULES


def build_pieces(config) -> Pieces:
    """Model, tokenizer and mesh; with init_from, the checkpoint's architecture is written back into
    config.model, so what the run records is what runs."""
    model_cfg, model, tokenizer = build_model(config)
    if config.init_from:
        for field in dataclasses.fields(model_cfg):
            config.model[field.name] = getattr(model_cfg, field.name)
    return Pieces(model_cfg, model, tokenizer, build_mesh(config))


def host_batch_size(global_batch: int, shards: int) -> int:
    """One input shard's share of config.data.batch_size, which is the global batch over all hosts."""
    if global_batch % shards:
        raise ConfigError(f"config.data.batch_size={global_batch} is the global batch and must split evenly over "
                          f"the {shards} input shards (one per process unless config.data.host_shards is set); "
                          f"set it to a multiple of {shards}")
    return global_batch // shards


def input_shards(config, process_count: int) -> int:
    """How many input shards the global batch is drawn from: config.data.host_shards, 0 = one per process.

    The batches a run sees depend on this number, not on how many processes read them: a run on
    one host with host_shards=N sees what N hosts see (the same losses), and a run can resume on
    another number of hosts that divides it.
    """
    shards = int(config.data.get("host_shards", 0)) or process_count
    if shards % process_count:
        raise ConfigError(f"config.data.host_shards={shards} must be a multiple of the {process_count} processes "
                          f"(each reads the same number of shards); set it to a multiple of {process_count} or 0")
    return shards


class ShardBatches:
    """Several input shards read by one process: each batch is theirs side by side (in shard order).

    Its state is the list of the shards' states; one shard is never wrapped (its state is its own).
    """

    def __init__(self, iterators):
        self.iterators = list(iterators)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        import numpy as np

        parts = [next(it) for it in self.iterators]
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}

    def get_state(self) -> dict:
        return {"shards": [it.get_state() for it in self.iterators]}

    def set_state(self, state: dict) -> None:
        for it, shard_state in zip(self.iterators, state["shards"], strict=True):
            it.set_state(shard_state)


def build_data(config, tokenizer, mixture, process_index: int | None = None, process_count: int | None = None,
               train_source=None):
    """(training batch iterator, fixed held-out batches) of this process: both from the Grain pipeline.

    The global batch (config.data.batch_size rows) is drawn from `input_shards` shards of the records;
    each of the process_count processes (default: jax's) reads its consecutive run of them, so its
    share is batch_size / process_count rows, and ankh3.train.device_batch assembles the shares into
    one global array. `train_source` is config.data.train already opened (the runner also measures its
    residue frequencies), so the file is read once.
    """
    import jax

    from ankh3.data import pipeline
    from ankh3.data.sources import open_source

    data = config.data
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    shards = input_shards(config, process_count)
    per_process = shards // process_count
    mine = range(process_index * per_process, (process_index + 1) * per_process)
    common = dict(batch_size=host_batch_size(data.batch_size, shards), encoder_length=data.encoder_length,
                  decoder_length=data.decoder_length, max_residues=data.max_residues, crop=data.crop,
                  min_residues=data.min_residues, on_invalid=data.on_invalid,
                  process_count=shards)

    def read(source, seed: int, **options):
        parts = [pipeline.make_iterator(source, tokenizer, mixture, seed=seed, process_index=shard, **common,
                                        **options) for shard in mine]
        return parts[0] if len(parts) == 1 else ShardBatches(parts)

    train = read(train_source or open_source(data.train), config.seed, shuffle=True, worker_count=data.worker_count)
    # The held-out batches are drawn once (fixed masking too), so every evaluation sees the same data.
    valid = read(open_source(data.valid), config.seed + 1, shuffle=False)
    return train, [next(valid) for _ in range(config.train.eval_batches)]
