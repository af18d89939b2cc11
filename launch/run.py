"""Run one experiment: pretrain a config on its data, then probe the frozen encoder downstream.

    python launch/run.py --config=experiments/base.py                       # the tiny Ankh3 recipe, CPU
    python launch/run.py --config=experiments/ablate_completion.py:0.75 --config.seed=1
    python launch/run.py --config=experiments/base.py --dry_run             # config, size and token budget
    python launch/run.py --config=experiments/base.py --mode=downstream     # probe a workdir's checkpoint
    python launch/run.py --sync_workdir=runs/base/ankh3-s0                  # send an offline run to MLflow

Re-running the same command with the same --workdir resumes from its last checkpoint. Bad input
(unknown config argument or key, unreadable data) ends with one line on stderr and exit status 2.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # experiments/ and ankh3/ import from the repository root

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ankh3.config import RUN_MODES, ConfigError  # noqa: E402
from ankh3.errors import UserError, one_line  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiment config: experiments/FAMILY.py[:ARG]; override fields with --config.KEY=VALUE")
flags.DEFINE_string("workdir", None, "checkpoints, logs and artifacts (default runs/EXPERIMENT/RUN_NAME)")
flags.DEFINE_enum("mode", "all", RUN_MODES, "pretrain, downstream (probe a checkpoint), or all (both)")
flags.DEFINE_bool("dry_run", False, "print the resolved config, parameter count and token budget; then exit")
flags.DEFINE_string("sync_workdir", None, "send a workdir's offline-journaled metrics to the MLflow store; then exit")
FLAGS = flags.FLAGS

EXIT_USAGE, EXIT_NONFINITE = 2, 3


def fail(message: str, status: int = EXIT_USAGE):
    """One line on stderr and a non-zero exit: how every user error ends."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


# ---- flags -----------------------------------------------------------------------------------------
def parse_flags(argv: list[str]) -> list[str]:
    """absl parsing, with config errors (bad ARG, unknown --config.KEY) turned into one line."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        fail(_config_error_message(e, argv))
    except Exception as e:  # noqa: BLE001 -- config files and overrides raise many kinds
        fail(_config_error_message(e, argv))


def _config_error_message(error: BaseException, argv: list[str]) -> str:
    cause = _find_cause(error, ConfigError)
    if cause is not None:
        return str(cause)
    unknown = _unknown_override(argv)
    if unknown is not None:
        return unknown
    last = _innermost(error)
    text = str(last).strip().splitlines()
    return f"{type(last).__name__}: {text[-1] if text else ''} (in {' '.join(argv[1:])})"


def _find_cause(error: BaseException | None, kind):
    """The innermost exception of `kind` in the chain (config_flags re-raises a config's
    ValueError as a new one of the same type whose message is the whole traceback)."""
    found, seen = None, set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            found = error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return found


def _innermost(error: BaseException) -> BaseException:
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    return error


def _unknown_override(argv: list[str]) -> str | None:
    """'unknown config key ...' for the first --config.KEY that the config does not have."""
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None:
        return None
    from ml_collections.config_flags.config_flags import ConfigFileFlagParser

    try:
        config = ConfigFileFlagParser("config").parse(spec)
    except Exception:  # noqa: BLE001 -- the config itself is broken; reported by the caller
        return None
    from ankh3.config import unknown_key

    for arg in argv:
        if not arg.startswith("--config."):
            continue
        key = arg.split("=", 1)[0][len("--config."):]
        why = unknown_key(config, key)
        if why:
            return f"unknown config key '{key}' in {arg.split('=', 1)[0]}: {why}"
    return None


# ---- configuration ---------------------------------------------------------------------------------
def resolve(config) -> None:
    """Applies defaults that depend on the command line (budget after overrides, data paths)."""
    from ankh3.config import check_config, record_budget, resolve_path

    if config.tracking.experiment == "":
        config.tracking.experiment = config.family
    record_budget(config)
    check_config(config)
    for key in ("train", "valid"):
        config.data[key] = resolve_path(config.data[key], ROOT)
        check_readable(config.data[key], f"config.data.{key}")
    if config.init_from:
        config.init_from = resolve_path(config.init_from, ROOT)


def check_readable(path: str, key: str) -> None:
    """Fails before any work when a data path cannot be read (the full check is the source's own)."""
    if not os.path.exists(path):
        raise ConfigError(f"{key}: no such file or directory {path}; point it at a FASTA file (.fasta, .gz, .xz) "
                          "or a directory of ArrayRecord shards")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{key}: {path} is not readable (permissions); fix its mode or choose another path")


def run_name(config) -> str:
    return f"{config.variant}-s{config.seed}"


def default_workdir(config) -> str:
    return os.path.join(ROOT, "runs", config.tracking.experiment.replace("/", "_"), run_name(config))


def tracking_uri(config) -> str:
    from ankh3.tracking import default_uri

    return config.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri(ROOT)


def print_dry_run(config) -> None:
    from ankh3.config import model_config
    from ankh3.model import count_params

    cfg = model_config(config.model)
    print(config)
    print(f"parameters: {count_params(cfg):,} ({config.model.shape}, d_model {cfg.d_model}, "
          f"{cfg.num_encoder_layers}+{cfg.num_decoder_layers} layers)")
    print(f"tokens per step: {config.budget.tokens_per_step:,} "
          f"(batch {config.data.batch_size} x accumulation {config.optimizer.grad_accum} x "
          f"({config.data.encoder_length} encoder + {config.data.decoder_length} decoder positions))")
    print(f"token budget: {config.budget.total_tokens:,} over {config.train.steps:,} steps")


# ---- tracking --------------------------------------------------------------------------------------
def make_tracker(config, workdir: str, name: str, extra_tags: dict | None = None):
    import jax

    from ankh3.tracking import Tracker, git_state, hostname

    commit, dirty = git_state(ROOT)
    tags = {"family": config.family, "variant": config.variant, "seed": config.seed, "git_commit": commit,
            "git_dirty": dirty, "host": hostname(), "jax_version": jax.__version__,
            "device_kind": jax.devices()[0].device_kind, "mlflow.source.git.commit": commit,
            **(extra_tags or {})}
    return Tracker(tracking_uri(config), config.tracking.experiment, name, workdir, tags=tags)


def log_config(tracker, config, workdir: str) -> None:
    from ankh3.tracking import flatten

    path = os.path.join(workdir, "config.json")
    with open(path, "w") as f:
        f.write(config.to_json_best_effort(indent=1))
    tracker.log_params(flatten(config.to_dict()))
    tracker.log_artifact(path)


# ---- pretraining -----------------------------------------------------------------------------------
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
        from ankh3.convert import load_pretrained_dir

        # The checkpoint fixes the architecture; the run still picks how it computes.
        runtime = {k: getattr(cfg, k) for k in ("dtype", "remat", "attention", "dropout_rate", "scan_unroll")}
        return load_pretrained_dir(config.init_from, seed=config.seed, **runtime)
    return cfg, T5(cfg, rngs=nnx.Rngs(config.seed)), Tokenizer.default(cfg.vocab_size)


def build_mesh(config):
    import jax

    from ankh3.sharding import make_mesh

    model_axis = int(config.mesh.model)
    count = jax.device_count()
    if model_axis < 1 or count % model_axis:
        raise ConfigError(f"config.mesh.model={model_axis} must divide the {count} devices")
    return make_mesh(data=count // model_axis, model=model_axis)


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
    which ankh3.train.device_batch does not do yet, so `run` refuses more than one process (see
    check_single_process).
    """
    import jax

    from ankh3.data import pipeline
    from ankh3.data.sources import open_source

    data = config.data
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    common = dict(batch_size=host_batch_size(data.batch_size, process_count), encoder_length=data.encoder_length,
                  decoder_length=data.decoder_length, min_residues=data.min_residues, on_invalid=data.on_invalid,
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


def pretrain(config, workdir: str, tracker, pieces: Pieces):
    """Trains (or resumes) to config.train.steps, or until a signal; returns the TrainResult."""
    import jax

    from ankh3 import train
    from ankh3.checkpoint import Checkpointer, PreemptionGuard
    from ankh3.config import build_mixture
    from ankh3.optimizer import OptimizerSpec, make_optimizer
    from ankh3.sharding import shard_model

    mixture = build_mixture(config.objectives, config.mixture_granularity)
    task_names = mixture.task_names
    batches, eval_batches = build_data(config, pieces.tokenizer, mixture)
    shard_model(pieces.model, pieces.mesh)
    tx, schedule = make_optimizer(OptimizerSpec.from_config(config.optimizer, config.train.steps))
    graphdef, state = train.init_state(pieces.model, tx, pieces.mesh)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.train.keep_checkpoints)
    if checkpointer.latest_step() is not None:
        state, data_state = checkpointer.restore(None, state)
        batches.set_state(data_state)
        print(f"resumed from {checkpointer.directory} at step "
              f"{checkpointer.latest_step() // config.optimizer.grad_accum}", flush=True)
    settings = train.LoopSettings(
        steps=config.train.steps, grad_accum=config.optimizer.grad_accum, log_every=config.train.log_every,
        eval_every=config.train.eval_every, checkpoint_every=config.train.checkpoint_every,
        progress_every_s=config.train.progress_every_s, tokens_per_step=config.budget.tokens_per_step,
        dropout=pieces.model_cfg.dropout_rate > 0)
    residues = train.residue_ids(pieces.tokenizer)  # a converted checkpoint may place residues at other ids
    train_step = train.make_train_step(graphdef, tx, len(task_names), settings.dropout, residues)
    eval_step = train.make_eval_step(graphdef, len(task_names), residues)
    try:
        with jax.set_mesh(pieces.mesh), PreemptionGuard() as guard:
            eval_device = [train.device_batch(b, pieces.mesh) for b in eval_batches]
            result = train.train_loop(
                state=state, train_step=train_step, eval_step=eval_step, batches=batches, eval_batches=eval_device,
                task_names=task_names, settings=settings, mesh=pieces.mesh, checkpointer=checkpointer,
                data_state=batches.get_state, tracker=tracker, guard=guard, schedule=schedule, workdir=workdir)
    finally:
        checkpointer.close()  # lets pending asynchronous saves finish, whatever happened
    from flax import nnx

    nnx.update(pieces.model, result.state["params"], result.state["rest"])
    write_pretrain_artifacts(tracker, workdir, task_names, result, config)
    return result


def write_pretrain_artifacts(tracker, workdir: str, task_names, result, config) -> None:
    from ankh3.tracking import write_loss_plots
    from ankh3.train import HISTORY, loss_curves, read_history

    history_path = os.path.join(workdir, HISTORY)
    records = read_history(history_path) if os.path.exists(history_path) else []
    if not result.metrics:  # nothing left to train (a finished run re-run): report its last values
        for record in records:
            result.metrics.update({k: v for k, v in record.items() if k not in ("step", "time")})
    for path in write_loss_plots(loss_curves(records, task_names), os.path.join(workdir, "plots")):
        tracker.log_artifact(path, "plots")
    summary = {"step": result.final_step, "wall_s": round(result.wall_s, 1), "stopped_by": result.stopped_by,
               "total_tokens": config.budget.tokens_per_step * result.final_step, **result.metrics}
    path = os.path.join(workdir, "pretrain_summary.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=1)
    tracker.log_artifact(path)


# ---- downstream ------------------------------------------------------------------------------------
def restore_for_downstream(config, workdir: str, pieces: Pieces) -> int:
    """Loads the latest checkpoint's parameters into the model (mode=downstream); returns its step."""
    import jax
    from flax import nnx

    from ankh3.checkpoint import Checkpointer
    from ankh3.optimizer import OptimizerSpec, make_optimizer
    from ankh3.train import init_state

    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.train.keep_checkpoints)
    if checkpointer.latest_step() is None:
        if config.init_from:
            return 0  # probing published weights as they are
        raise ConfigError(f"--mode=downstream: no checkpoint in {workdir}/checkpoints; pretrain first "
                          "(--mode=pretrain) or pass --workdir of a trained run or --config.init_from=DIR")
    tx, _ = make_optimizer(OptimizerSpec.from_config(config.optimizer, config.train.steps))
    _, state = init_state(pieces.model, tx)
    state, _ = checkpointer.restore(None, state)
    checkpointer.close()
    nnx.update(pieces.model, state["params"])
    step = int(jax.device_get(state["step"])) // int(config.optimizer.grad_accum)
    print(f"probing the encoder of {workdir} at step {step}", flush=True)
    return step


def downstream(config, workdir: str, tracker, pieces: Pieces, encoder_id: str) -> list:
    """Probes the frozen encoder on config.downstream.tasks; one MLflow child run per (task, source)."""
    from ankh3.config import downstream_tasks
    from ankh3.downstream import evaluate, tasks
    from ankh3.downstream.embed import make_model_encode_fn, make_random_encode_fn

    section = config.downstream
    limit = int(section.max_per_split) or None
    loaded = [tasks.load(decl, max_per_split=limit) for decl in downstream_tasks(section, ROOT)]
    out_dir = os.path.join(workdir, "downstream")
    controls = tuple(section.controls)

    def log_result(result) -> None:
        tracker.log_child(f"{result.name}/{result.source}", params={"prefix": section.prefix, **result.params},
                          metrics=result.metrics, tags={"task": result.name, "source": result.source},
                          artifacts=result.artifacts)
        tracker.flush()

    random_fn = make_random_encode_fn(pieces.model_cfg, seed=config.seed + 10_000) if "random" in controls else None
    results = evaluate.run_tasks(
        make_model_encode_fn(pieces.model), pieces.tokenizer, loaded, section.prefix,
        seeds=tuple(section.seeds), epochs=int(section.epochs),
        cache_dir=section.cache_dir or os.path.join(out_dir, "embeddings"), controls=controls,
        random_encode_fn=random_fn, out_dir=out_dir, encoder_id=encoder_id,
        random_encoder_id=f"random:{config.model.shape}:{config.seed + 10_000}", on_result=log_result,
        progress=True)  # a bar on a terminal, plain N/M lines with an ETA otherwise
    print(evaluate.format_results_table(results), flush=True)
    return results


# ---- the end ---------------------------------------------------------------------------------------
def stop(tracker, trained, workdir: str) -> None:
    """After SIGTERM/SIGINT: the checkpoint is saved; mark the run and exit 128 + signal number."""
    tracker.end("KILLED")
    print(f"stopped by {trained.stopped_by} at step {trained.final_step}; checkpoint saved in {workdir}. "
          "Re-run the same command to resume.", flush=True)
    sys.exit(128 + int(getattr(signal, trained.stopped_by)))


def write_summary(tracker, workdir: str, metrics: dict, results: list) -> None:
    """summary.json (pretraining metrics and every probe's metrics) as an artifact. The probes' metrics
    live on their child runs only ('TASK/SOURCE'), so the parent's metrics tab opens on its curves."""
    path = os.path.join(tracker.workdir, "summary.json")
    with open(path, "w") as f:
        json.dump({"pretrain": metrics, "downstream": [
            {"task": r.name, "source": r.source, "metrics": r.metrics} for r in results]}, f, indent=1)
    tracker.log_artifact(path)


def print_summary(metrics: dict, results: list, uri: str, workdir: str, wall_s: float) -> None:
    from ankh3.tracking import ui_command

    keys = [k for k in metrics if k.endswith("/loss") or k.endswith("/accuracy") or k == "perf/tokens_per_s"]
    if keys:
        width = max(len(k) for k in keys)
        print("\nfinal pretraining metrics")
        for key in sorted(keys):
            print(f"  {key:<{width}}  {metrics[key]:.4f}")
    if results:
        print(f"downstream: {len(results)} child runs (table above)")
    print(f"workdir: {workdir}  ({wall_s / 60:.1f} min)")
    print(f"MLflow: {ui_command(uri)}", flush=True)


def run(config, workdir: str, mode: str) -> None:
    import jax

    check_single_process(jax.process_count())
    start = time.monotonic()
    os.makedirs(workdir, exist_ok=True)
    model_cfg, model, tokenizer = build_model(config)
    if config.init_from:  # the checkpoint's architecture is what runs: record it, not the shape's
        for field in dataclasses.fields(model_cfg):
            config.model[field.name] = getattr(model_cfg, field.name)
    pieces = Pieces(model_cfg, model, tokenizer, build_mesh(config))
    if mode == "downstream":
        tracker = make_tracker(config, os.path.join(workdir, "downstream"), run_name(config) + "-downstream",
                               {"mode": "downstream"}).start()
    else:
        tracker = make_tracker(config, workdir, run_name(config), {"mode": mode}).start()
    log_config(tracker, config, tracker.workdir)
    metrics, results = {}, []
    try:
        if mode in ("pretrain", "all"):
            trained = pretrain(config, workdir, tracker, pieces)
            if trained.stopped_by:
                stop(tracker, trained, workdir)
            metrics, step = trained.metrics, trained.final_step
        else:
            step = restore_for_downstream(config, workdir, pieces)
        if mode in ("downstream", "all"):
            encoder_id = f"{config.init_from or workdir}@step{step}"
            results = downstream(config, workdir, tracker, pieces, encoder_id)
    except SystemExit:  # `stop` already ended the run
        raise
    except BaseException as e:
        tracker.end("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    write_summary(tracker, workdir, metrics, results)
    if not tracker.end("FINISHED"):
        print(f"MLflow store unreachable: metrics kept in {tracker.workdir}/metrics.jsonl; send them later with "
              f"python launch/run.py --sync_workdir={tracker.workdir}", flush=True)
    print_summary(metrics, results, tracker.uri, workdir, time.monotonic() - start)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {' '.join(argv[1:])}; use --config=experiments/FAMILY.py:ARG and --config.KEY=VALUE")
    logging.set_verbosity(logging.WARNING)  # orbax narrates every save at INFO
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # a dead server must not stall training
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    try:
        if FLAGS.sync_workdir:
            return sync(FLAGS.sync_workdir)
        config = _CONFIG.value
        if config is None:
            fail("no --config given; e.g. --config=experiments/base.py (see experiments/ for the families)")
        resolve(config)
        if FLAGS.dry_run:
            return print_dry_run(config)
        run(config, os.path.abspath(FLAGS.workdir or default_workdir(config)), FLAGS.mode)
    except UserError as e:
        fail(one_line(e))
    except IOError as e:  # a config file that does not exist or cannot be read
        if _find_cause(e, FileNotFoundError) or "Configuration is not available" in str(e):
            missing = _find_cause(e, FileNotFoundError)
            why = f"no such file {missing.filename}" if missing is not None else str(_innermost(e)).splitlines()[-1].strip()
            fail(f"cannot load the config: {why}; pass --config=experiments/FAMILY.py[:ARG]")
        raise
    except _nonfinite() as e:
        fail(str(e), EXIT_NONFINITE)


def _nonfinite():
    from ankh3.train import NonFiniteLossError

    return NonFiniteLossError


def sync(workdir: str) -> None:
    from ankh3.tracking import sync_workdir

    left = sync_workdir(os.path.abspath(workdir), os.environ.get("MLFLOW_TRACKING_URI"))
    if left:
        fail(f"{left} journaled events of {workdir} could not be sent; is the store reachable? Try again later", 1)
    print(f"synced {workdir}", flush=True)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
