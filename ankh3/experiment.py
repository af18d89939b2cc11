"""One experiment as a library call: `run(config, workdir, mode, hooks) -> RunResult`.

    from ankh3 import experiment
    experiment.resolve(config)                         # defaults, budget, checks: before any work
    result = experiment.run(config, workdir, "all")    # pretrain, then probe the frozen encoder

`launch/run.py` is flag parsing around this; grid and sweep call it too (a sweep passes an
`on_eval` hook that prunes). Every user mistake raises an ankh3.errors.UserError whose message is
one line; a signal stops training at a checkpoint and the result says so (`stopped_by`).

Several JAX processes (ankh3.distributed.initialize first) run the same call: they train together
and save checkpoints together; process 0 alone tracks to MLflow, prints, writes artifacts and the
summary, and probes the encoder downstream (on its own devices, with the gathered parameters).
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
from typing import Callable, TextIO

from ankh3 import names
from ankh3.assembly import Pieces, build_data, build_pieces, sharding_rules
from ankh3.config import ConfigError


class RunPruned(Exception):
    """Raised by an `on_eval` hook to stop a run early (a sweep's pruner); the run ends KILLED."""


@dataclasses.dataclass
class Hooks:
    """Callbacks into a run: `on_start(tracker)` once its MLflow run is open, `on_eval(step, metrics)`
    after each evaluation (raise RunPruned to stop), and where progress is printed."""

    on_start: Callable[[object], None] | None = None
    on_eval: Callable[[int, dict], None] | None = None
    out: TextIO = sys.stdout


@dataclasses.dataclass
class RunResult:
    workdir: str
    run_id: str | None
    tracking_uri: str
    metrics: dict                 # final pretraining metrics (empty for --mode=downstream)
    downstream: list              # ankh3.downstream.evaluate results, one per (task, source)
    step: int                     # the step trained to (or probed at)
    stopped_by: str = ""          # '' when finished, else the signal's name (SIGTERM, SIGINT)
    wall_s: float = 0.0

    @property
    def exit_code(self) -> int:
        """What a command should exit with: 0, or 128 + signal number when a signal stopped training."""
        return 128 + int(getattr(signal, self.stopped_by)) if self.stopped_by else 0


# ---- configuration ---------------------------------------------------------------------------------
def resolve(config, workdir: str | None = None) -> None:
    """Applies defaults that depend on the command line (budget after overrides, data paths) and
    checks everything that can be checked before any work starts: the settings, the paths and the
    workdir (default: the experiment's; `run` checks it again)."""
    from ankh3.config import check_config, record_budget, resolve_path
    from ankh3.preflight import check_settings
    from ankh3.workdir_check import check_usable

    if config.tracking.experiment == "":
        config.tracking.experiment = config.family
    record_budget(config)
    check_config(config)
    check_settings(config)
    for key in ("train", "valid"):
        config.data[key] = resolve_path(config.data[key], names.REPO_ROOT)
        check_readable(config.data[key], f"config.data.{key}")
    if config.init_from:
        config.init_from = resolve_path(config.init_from, names.REPO_ROOT)
        if not os.path.isdir(config.init_from):
            raise ConfigError(f"config.init_from: {config.init_from} is not a directory; point it at a directory "
                              "written by python -m ankh3.hf_checkpoint")
    check_usable(workdir or default_workdir(config))
    from ankh3.tracking import check_uri

    check_uri(tracking_uri(config))  # an unknown scheme would drop every event; refuse before any work


def check_readable(path: str, key: str) -> None:
    """Fails before any work when a data path cannot be read (the full check is the source's own)."""
    if not os.path.exists(path):
        raise ConfigError(f"{key}: no such file or directory {path}; point it at a FASTA file (.fasta, .gz, .xz) "
                          "or a directory of ArrayRecord shards")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{key}: {path} is not readable (permissions); fix its mode or choose another path")


def default_workdir(config) -> str:
    return names.default_workdir(config.tracking.experiment, config.variant, config.seed)


def dry_run_report(config, devices: int | None = None) -> str:
    """The resolved config, parameter count, token budget and the per-device memory plan: what
    `--dry_run` prints. `devices`: the mesh size to plan for (default: the devices of this machine)."""
    from ankh3.config import model_config
    from ankh3.memory_plan import plan_for_config
    from ankh3.model import count_params

    cfg = model_config(config.model)
    return "\n".join([
        str(config).rstrip(),
        f"parameters: {count_params(cfg):,} ({config.model.shape}, d_model {cfg.d_model}, "
        f"{cfg.num_encoder_layers}+{cfg.num_decoder_layers} layers)",
        f"tokens per step: {config.budget.tokens_per_step:,} "
        f"(batch {config.data.batch_size} x accumulation {config.optimizer.grad_accum} x "
        f"({config.data.encoder_length} encoder + {config.data.decoder_length} decoder positions))",
        f"token budget: {config.budget.total_tokens:,} over {config.train.steps:,} steps",
        plan_for_config(config, devices).report(),
    ])


# ---- tracking --------------------------------------------------------------------------------------
def tracking_uri(config) -> str:
    from ankh3.tracking import default_uri

    return config.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri(names.REPO_ROOT)


def run_description(config, mode: str) -> str:
    """The run's description in the MLflow UI: what it is and what it compares to."""
    what = {"pretrain": "pretraining", "downstream": "frozen-encoder probes", "all": "pretraining, then probes"}[mode]
    return (f"{config.family} / {config.variant} on shape {config.model.shape}, seed {config.seed}: {what}. "
            f"Compare with the other variants of `{config.family}` (same shape, same seeds): "
            f"python analysis/aggregate.py --experiment={config.tracking.experiment}")


class SilentTracker:
    """The tracker of processes other than 0: same calls, nothing recorded (process 0 records the run)."""

    def __init__(self, uri: str, workdir: str):
        self.uri, self.workdir, self.run_id = uri, workdir, None

    def start(self):
        return self

    def end(self, status: str = "FINISHED") -> bool:
        return True

    def log_params(self, *args, **kwargs) -> None: ...
    def log_metrics(self, *args, **kwargs) -> None: ...
    def log_artifact(self, *args, **kwargs) -> None: ...
    def log_child(self, *args, **kwargs) -> None: ...
    def set_tags(self, *args, **kwargs) -> None: ...
    def flush(self, *args, **kwargs) -> None: ...


def make_tracker(config, workdir: str, name: str, mode: str):
    import jax

    from ankh3 import distributed
    from ankh3.tracking import Tracker, git_state, hostname

    if not distributed.is_main():
        return SilentTracker(tracking_uri(config), workdir)

    commit, dirty = git_state(names.REPO_ROOT)
    tags = {names.TAG_FAMILY: config.family, names.TAG_VARIANT: config.variant, names.TAG_SEED: config.seed,
            names.TAG_MODE: mode, "shape": config.model.shape, "git_commit": commit, "git_dirty": dirty,
            "host": hostname(), "jax_version": jax.__version__, "device_kind": jax.devices()[0].device_kind,
            "mlflow.source.git.commit": commit, "mlflow.note.content": run_description(config, mode)}
    return Tracker(tracking_uri(config), config.tracking.experiment, name, workdir, tags=tags)


def log_config(tracker, config, workdir: str) -> None:
    """config.json and the params. A resumed run may have changed a few keys (a longer train.steps):
    MLflow keeps a param's first value, so those go to the tag `changed_on_resume` instead."""
    from ankh3.provenance import portable_params
    from ankh3.tracking import flatten, param_values
    from ankh3.workdir_check import recorded_config

    if isinstance(tracker, SilentTracker):
        return

    path = os.path.join(workdir, names.CONFIG_FILE)
    before = param_values(recorded_config(workdir) or {})
    params = flatten(config.to_dict())
    now = param_values(params)
    changed = sorted(k for k in now if k in before and before[k] != now[k])
    if changed:
        tracker.set_tags({"changed_on_resume": "; ".join(f"{k}: {before[k]} -> {now[k]}" for k in changed)})
        params = {k: v for k, v in params.items() if k not in changed}
    with open(path, "w") as f:
        f.write(config.to_json_best_effort(indent=1))
    tracker.log_params(portable_params(params))  # relative or digested paths: comparable across machines
    tracker.log_artifact(path)


# ---- pretraining -----------------------------------------------------------------------------------
def pretrain(config, workdir: str, tracker, pieces: Pieces, hooks: Hooks):
    """Trains (or resumes) to config.train.steps, or until a signal; returns the TrainResult."""
    import jax
    from flax import nnx

    from ankh3 import distributed, train
    from ankh3.checkpoint import Checkpointer, PreemptionGuard
    from ankh3.config import build_mixture
    from ankh3.data.frequencies import unigram_entropy
    from ankh3.data.sources import open_source
    from ankh3.optimizer import OptimizerSpec, make_optimizer

    mixture = build_mixture(config.objectives, config.mixture_granularity)
    task_names = mixture.task_names
    train_source = open_source(config.data.train)  # read once: batches and the unigram floor
    batches, eval_batches = build_data(config, pieces.tokenizer, mixture, train_source=train_source)
    tx, schedule = make_optimizer(OptimizerSpec.from_config(config.optimizer, config.train.steps))
    graphdef, state = sharded_state(config, pieces, tx)
    checkpointer = Checkpointer(os.path.join(workdir, names.CHECKPOINTS), keep=config.train.keep_checkpoints)
    if checkpointer.latest_step() is not None:
        state, data_state = checkpointer.restore(None, state)
        batches.set_state(data_state)
        print(f"resumed from {checkpointer.directory} at step "
              f"{checkpointer.latest_step() // config.optimizer.grad_accum}", file=hooks.out, flush=True)
    settings = train.LoopSettings(
        steps=config.train.steps, grad_accum=config.optimizer.grad_accum, log_every=config.train.log_every,
        eval_every=config.train.eval_every, checkpoint_every=config.train.checkpoint_every,
        progress_every_s=config.train.progress_every_s, tokens_per_step=config.budget.tokens_per_step,
        dropout=pieces.model_cfg.dropout_rate > 0,
        unigram_floor=unigram_entropy(train_source, pieces.tokenizer,
                                      on_invalid=config.data.on_invalid))
    residues = train.residue_ids(pieces.tokenizer)  # a converted checkpoint may place residues at other ids
    train_step = train.make_train_step(graphdef, tx, len(task_names), settings.dropout, residues)
    eval_step = train.make_eval_step(graphdef, len(task_names), residues)
    agreement = distributed.StopAgreement(pieces.mesh) if distributed.multi_process() else None
    try:
        with jax.set_mesh(pieces.mesh), PreemptionGuard(agreement=agreement) as guard:
            eval_device = [train.device_batch(b, pieces.mesh) for b in eval_batches]
            result = train.train_loop(
                state=state, train_step=train_step, eval_step=eval_step, batches=batches, eval_batches=eval_device,
                task_names=task_names, settings=settings, mesh=pieces.mesh, checkpointer=checkpointer,
                data_state=batches.get_state, tracker=tracker, guard=guard, schedule=schedule,
                workdir=workdir if distributed.is_main() else None, out=hooks.out, on_eval=hooks.on_eval,
                on_log=health_monitor(config, pieces, tracker, hooks.out))
    finally:
        checkpointer.close()  # lets pending asynchronous saves finish, whatever happened
    nnx.update(pieces.model, result.state["params"], result.state["rest"])
    if distributed.is_main():
        write_pretrain_artifacts(tracker, workdir, task_names, result, config)
    return result


def sharded_state(config, pieces: Pieces, tx):
    """(graphdef, train state) with the model and optimizer state laid out on the mesh by the run's rules."""
    from ankh3.sharding import shard_model
    from ankh3.train import init_state

    shard_model(pieces.model, pieces.mesh, sharding_rules(config))
    return init_state(pieces.model, tx, pieces.mesh)


def health_monitor(config, pieces: Pieces, tracker, out: TextIO) -> Callable[[int, dict], None]:
    """The loop's per-log callback: a run that is not learning (loss at chance, zero gradient) is said
    in the terminal (the progress stream, and stderr when that is a file), as the run's `health` tag and as
    the metric health/not_learning."""
    from ankh3.health import TAG, HealthCheck

    check = HealthCheck(pieces.model_cfg.vocab_size, after_step=int(config.optimizer.warmup_steps))

    def on_log(step: int, metrics: dict) -> None:
        for warning in check.observe(step, metrics):
            for stream in (out,) if out is sys.stdout else (out, sys.stderr):  # the terminal sees it once
                print(f"WARNING: {warning}", file=stream, flush=True)
            tracker.set_tags({TAG: "; ".join(check.warned.values())})
            tracker.log_metrics(step, {"health/not_learning": 1.0})

    return on_log


def write_pretrain_artifacts(tracker, workdir: str, task_names, result, config) -> None:
    from ankh3.tracking import write_loss_plots
    from ankh3.train import loss_curves, read_history

    history_path = os.path.join(workdir, names.HISTORY)
    records = read_history(history_path) if os.path.exists(history_path) else []
    if not result.metrics:  # nothing left to train (a finished run re-run): report its last values
        for record in records:
            result.metrics.update({k: v for k, v in record.items() if k not in ("step", "time")})
    for path in write_loss_plots(loss_curves(records, task_names), os.path.join(workdir, names.PLOTS)):
        tracker.log_artifact(path, names.PLOTS)
    summary = {"step": result.final_step, "wall_s": round(result.wall_s, 1), "stopped_by": result.stopped_by,
               "total_tokens": config.budget.tokens_per_step * result.final_step, **result.metrics}
    path = os.path.join(workdir, names.PRETRAIN_SUMMARY)
    with open(path, "w") as f:
        json.dump(summary, f, indent=1)
    tracker.log_artifact(path)


# ---- downstream ------------------------------------------------------------------------------------
def restore_for_downstream(config, workdir: str, pieces: Pieces, out: TextIO) -> int:
    """Loads the latest checkpoint's parameters into the model (mode=downstream); returns its step."""
    import jax
    from flax import nnx

    from ankh3.checkpoint import Checkpointer
    from ankh3.optimizer import OptimizerSpec, make_optimizer

    checkpointer = Checkpointer(os.path.join(workdir, names.CHECKPOINTS), keep=config.train.keep_checkpoints)
    if checkpointer.latest_step() is None:
        if config.init_from:
            return 0  # probing published weights as they are
        raise ConfigError(f"--mode=downstream: no checkpoint in {workdir}/{names.CHECKPOINTS}; pretrain first "
                          "(--mode=pretrain) or pass --workdir of a trained run or --config.init_from=DIR")
    tx, _ = make_optimizer(OptimizerSpec.from_config(config.optimizer, config.train.steps))
    _, state = sharded_state(config, pieces, tx)  # the checkpoint's layout, also across processes
    state, _ = checkpointer.restore(None, state)
    checkpointer.close()
    nnx.update(pieces.model, state["params"])
    step = int(jax.device_get(state["step"])) // int(config.optimizer.grad_accum)
    print(f"probing the encoder of {workdir} at step {step}", file=out, flush=True)
    return step


def downstream(config, workdir: str, tracker, pieces: Pieces, encoder_id: str, out: TextIO) -> list:
    """Probes the frozen encoder on config.downstream.tasks; one MLflow child run per (task, source)."""
    from ankh3.config import downstream_tasks
    from ankh3.downstream import evaluate, tasks
    from ankh3.downstream.embed import make_model_encode_fn, random_control

    section = config.downstream
    limit = int(section.max_per_split) or None
    loaded = [tasks.load(decl, max_per_split=limit) for decl in downstream_tasks(section, names.REPO_ROOT)]
    out_dir = os.path.join(workdir, names.DOWNSTREAM)
    controls = tuple(section.controls)

    def log_result(result) -> None:
        tracker.log_child(names.child_run_name(result.name, result.source),
                          params={"prefix": section.prefix, **result.params}, metrics=result.metrics,
                          tags={names.TAG_TASK: result.name, names.TAG_SOURCE: result.source},
                          artifacts=result.artifacts)
        tracker.flush()

    random_fn, random_id = (random_control(pieces.model_cfg, config.model.shape, config.seed)
                            if "random" in controls else (None, None))
    results = evaluate.run_tasks(
        make_model_encode_fn(pieces.model), pieces.tokenizer, loaded, section.prefix,
        seeds=tuple(section.seeds), epochs=int(section.epochs),
        cache_dir=section.cache_dir or os.path.join(out_dir, "embeddings"), controls=controls,
        random_encode_fn=random_fn, out_dir=out_dir, encoder_id=encoder_id,
        random_encoder_id=random_id, on_result=log_result,
        progress=True)  # a bar on a terminal, plain N/M lines with an ETA otherwise
    print(evaluate.format_results_table(results), file=out, flush=True)
    return results


def gather_to_local(model) -> None:
    """Replaces the model's arrays, laid out over every process's devices, by whole copies on this
    process's first device (a collective: every process calls it). Probes then run on one host."""
    import jax
    from flax import nnx
    from jax.experimental import multihost_utils

    def whole(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(whole(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            x = multihost_utils.process_allgather(x, tiled=True)
        return jax.device_put(x, jax.local_devices()[0])

    nnx.update(model, jax.tree.map(whole, nnx.state(model)))


def write_summary(tracker, workdir: str, metrics: dict, results: list) -> None:
    """summary.json (pretraining metrics and every probe's metrics) as an artifact. The probes' metrics
    live on their child runs only ('TASK/SOURCE'), so the parent's metrics tab opens on its curves."""
    path = os.path.join(tracker.workdir, names.SUMMARY)
    with open(path, "w") as f:
        json.dump({"pretrain": metrics, "downstream": [
            {"task": r.name, "source": r.source, "primary_metric": r.params.get("primary_metric"),
             "metrics": r.metrics, "per_seed": r.per_seed}
            for r in results]}, f, indent=1)
    tracker.log_artifact(path)


def summary_text(result: RunResult) -> str:
    """The lines printed at the end of a run: final metrics, child runs, workdir, how to open MLflow."""
    from ankh3.tracking import ui_command

    metrics = result.metrics
    lines = []
    keys = [k for k in metrics if k.endswith("/loss") or k.endswith("/accuracy") or k == "perf/tokens_per_s"]
    if keys:
        width = max(len(k) for k in keys)
        lines.append("\nfinal pretraining metrics")
        lines += [f"  {key:<{width}}  {metrics[key]:.4f}" for key in sorted(keys)]
    if result.downstream:
        lines.append(f"downstream: {len(result.downstream)} child runs (table above)")
    lines.append(f"workdir: {result.workdir}  ({result.wall_s / 60:.1f} min)")
    lines.append(f"MLflow: {ui_command(result.tracking_uri)}")
    return "\n".join(lines)


# ---- the run ---------------------------------------------------------------------------------------
def run(config, workdir: str, mode: str = "all", hooks: Hooks | None = None) -> RunResult:
    """Pretrains (mode 'pretrain'), probes a workdir's checkpoint ('downstream'), or both ('all').

    `config` must have been through `resolve`. Resuming is automatic: the same workdir continues from
    its last checkpoint and its MLflow run. A signal (SIGTERM, SIGINT) saves a checkpoint and returns
    with `stopped_by` set; RunPruned from `hooks.on_eval` ends the run KILLED and propagates.
    """
    from ankh3 import distributed

    hooks = hooks or Hooks()
    if not distributed.multi_process():
        return _run(config, workdir, mode, hooks)
    if not distributed.is_main():
        hooks = dataclasses.replace(hooks, out=open(os.devnull, "w"))
    try:
        result = _run(config, workdir, mode, hooks)
    except Exception as e:  # noqa: BLE001 -- a collective that failed because a peer died
        if distributed.is_peer_failure(e):
            distributed.peer_lost(str(e).strip().splitlines()[0])
        raise
    distributed.barrier("run-finished", 7 * 24 * 3600)  # the others wait for process 0's probes
    return result


def _run(config, workdir: str, mode: str, hooks: Hooks) -> RunResult:
    from ankh3 import distributed
    from ankh3.workdir_check import check_same_config, check_usable

    start = time.monotonic()
    check_usable(workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--workdir {workdir} cannot be created ({e.strerror}); pass another --workdir") from None
    pieces = build_pieces(config)
    if mode != "downstream":  # probes may use other settings; a checkpoint of another model fails to restore
        check_same_config(workdir, config)
    if mode == "downstream":
        tracker = make_tracker(config, os.path.join(workdir, names.DOWNSTREAM),
                               names.downstream_run_name(config.variant, config.seed), mode)
    else:
        tracker = make_tracker(config, workdir, names.run_name(config.variant, config.seed), mode)
    tracker.start()
    log_config(tracker, config, tracker.workdir)
    if hooks.on_start is not None:
        hooks.on_start(tracker)
    distributed.barrier("tracking-started")  # process 0 opened the store; all reach the first collective together
    metrics, results = {}, []
    try:
        if mode in ("pretrain", "all"):
            trained = pretrain(config, workdir, tracker, pieces, hooks)
            metrics, step = trained.metrics, trained.final_step
            if trained.stopped_by:
                tracker.end("KILLED")
                print(f"stopped by {trained.stopped_by} at step {step}; checkpoint saved in {workdir}. "
                      "Re-run the same command to resume.", file=hooks.out, flush=True)
                return RunResult(workdir, tracker.run_id, tracker.uri, metrics, [], step, trained.stopped_by,
                                 time.monotonic() - start)
        else:
            step = restore_for_downstream(config, workdir, pieces, hooks.out)
        if mode in ("downstream", "all"):
            if distributed.multi_process():
                gather_to_local(pieces.model)
            if distributed.is_main():
                encoder_id = f"{config.init_from or workdir}@step{step}"
                results = downstream(config, workdir, tracker, pieces, encoder_id, hooks.out)
    except BaseException as e:
        tracker.end("KILLED" if isinstance(e, (KeyboardInterrupt, RunPruned)) else "FAILED")
        raise
    if distributed.is_main():
        write_summary(tracker, workdir, metrics, results)
    if not tracker.end("FINISHED"):
        print(f"MLflow store unreachable: metrics kept in {tracker.workdir}/{names.JOURNAL}; send them later with "
              f"python launch/run.py --sync_workdir={tracker.workdir}", file=hooks.out, flush=True)
    result = RunResult(workdir, tracker.run_id, tracker.uri, metrics, results, step, "", time.monotonic() - start)
    print(summary_text(result), file=hooks.out, flush=True)
    return result


def sync(workdir: str, uri: str | None = None) -> None:
    """Sends a workdir's journaled (offline) tracking events to the store the run recorded, or to `uri`
    when given (an explicit choice: MLFLOW_TRACKING_URI serves only a run that recorded no store)."""
    from ankh3.tracking import TrackingError, sync_workdir

    left = sync_workdir(os.path.abspath(workdir), uri, fallback_uri=os.environ.get("MLFLOW_TRACKING_URI"))
    if left:
        error = TrackingError(f"{left} journaled events of {workdir} could not be sent; is the store reachable? "
                              "Try again later")
        error.exit_code = 1
        raise error
