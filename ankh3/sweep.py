"""Optuna sweeps over a search space in an experiments file (the library behind launch/sweep.py).

A study holds a number of trials to run ("slots": WAITING trials, enqueued once). Workers are
independent processes, on one machine or many, that share nothing but the study's database and the
MLflow tracking server: each takes a waiting trial (an atomic claim in the storage, so no two run the
same one and no more than the requested number run), trains it in-process through
`ankh3.experiment.run`, and reports the held-out loss to the pruner at every evaluation (`on_eval`), so
a pruned trial stops within one evaluation interval. On a database storage every running trial sends
Optuna heartbeats; a worker that dies (kill -9, a lost machine) stops sending them, and after the grace
period another worker marks its trial FAIL and re-queues it (RetryHeartbeatStaleTrialCallback).

The sweep file defines `get_config(arg)`, `search_space(trial)` -> {config key: value}, OBJECTIVE =
(metric, 'minimize'|'maximize'), and optionally PRUNE_ON, PRUNER ('median' | 'halving' | 'none'), GRID
({param: [values]}: a grid search, every point once) and LABELS ({param: short name} for trial names).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import socket
import subprocess
import sys
import time

from ankh3 import names
from ankh3.errors import UserError, one_line
from ankh3.grid import load_config, load_module, check_override_keys, format_duration, resolve_uri, split_spec
from ankh3.studies import open_storage, public_url

PARENT_TAG = "mlflow.parentRunId"
PRUNERS = ("median", "halving", "none")
SLOTS_ATTR = "slots_ready"  # set by the process that created the study once its trials are queued
MAX_RETRY = 2  # how often a trial whose worker died is run again


class SweepError(UserError, ValueError):
    """Bad sweep input (file, storage, objective); the message says what and how to fix it."""


class TrialFailed(RuntimeError):
    """A trial that could not produce its objective; the message is the reason kept in the study."""


class WorkerStopped(TrialFailed):
    """A signal (SIGTERM from a scheduler, Ctrl-C) stopped training: the trial is queued again and the
    worker ends."""


# ---- the sweep file ---------------------------------------------------------------------------------
@dataclasses.dataclass
class SweepSpec:
    path: str
    arg: str | None
    module: object
    metric: str
    direction: str
    prune_on: str | None
    pruner: str
    grid: dict | None = None
    labels: dict = dataclasses.field(default_factory=dict)


def load_spec(spec: str, objective: str | None = None, direction: str | None = None,
              pruner: str | None = None) -> SweepSpec:
    path, arg = split_spec(spec)
    module = load_module(path)
    where = os.path.relpath(path, names.REPO_ROOT)
    for name in ("get_config", "search_space"):
        if not callable(getattr(module, name, None)):
            raise SweepError(f"{where} has no {name}(); a sweep file defines get_config(arg) and search_space(trial)")
    metric, file_direction = getattr(module, "OBJECTIVE", (None, None))
    metric, direction = objective or metric, direction or file_direction or "minimize"
    if not metric:
        raise SweepError(f"{where} has no OBJECTIVE = (metric, direction); pass --objective=METRIC --direction=...")
    if direction not in ("minimize", "maximize"):
        raise SweepError(f"direction {direction!r}: use 'minimize' or 'maximize'")
    pruner = pruner or getattr(module, "PRUNER", "median")
    if pruner not in PRUNERS:
        raise SweepError(f"pruner {pruner!r}: use one of {', '.join(PRUNERS)}")
    grid = getattr(module, "GRID", None)
    if grid is not None and not (isinstance(grid, dict) and grid and all(list(v) for v in grid.values())):
        raise SweepError(f"{where}: GRID must be {{param: [values, ...]}} with at least one value per param")
    return SweepSpec(path, arg, module, metric, direction, getattr(module, "PRUNE_ON", "eval/s2s/loss"), pruner,
                     grid, dict(getattr(module, "LABELS", {})))


def default_storage() -> str:
    """OPTUNA_STORAGE (what launch/services.sh up prints), else optuna.db at the repository root."""
    return os.environ.get("OPTUNA_STORAGE") or "sqlite:///" + os.path.join(names.REPO_ROOT, "optuna.db")


def trial_label(params: dict, labels: dict) -> str:
    """A trial's name from its parameters, e.g. `nlu=0.15,0.3 mu=3`: runs that compare well in MLflow."""
    def text(value):
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    return " ".join(f"{labels.get(k, k)}={text(v)}" for k, v in params.items()) or "default"


def apply_overrides(config, values: dict) -> None:
    """Sets {dotted.key: value} on a ConfigDict; an unknown key is a TrialFailed naming it."""
    for key, value in values.items():
        node, parts = config, key.split(".")
        try:
            for part in parts[:-1]:
                node = node[part]
            node[parts[-1]] = value
        except (KeyError, TypeError, AttributeError) as e:
            raise TrialFailed(f"search_space set {key}={value!r}: {one_line(e)}") from None


# ---- storage and study ------------------------------------------------------------------------------
def make_pruner(name: str):
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def open_study_storage(url: str, heartbeat_s: int):
    """The storage; on a database, with heartbeats and a retry of trials whose worker died."""
    import warnings

    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    if url.startswith("journal:"):
        return open_storage(url)  # one file system: no heartbeats (a dead worker's trial stays RUNNING)
    with warnings.catch_warnings():  # heartbeats are marked experimental; they are what retries rely on
        warnings.simplefilter("ignore", ExperimentalWarning)
        return open_storage(url, heartbeat_interval=heartbeat_s, grace_period=max(2 * heartbeat_s, heartbeat_s + 2),
                            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))


def open_study(name: str, storage_url: str, spec: SweepSpec, heartbeat_s: int = 30):
    """(study, created): creates or loads the study; its direction and objective must match the file's."""
    import optuna

    storage = open_study_storage(storage_url, heartbeat_s)
    direction = spec.direction
    try:  # exactly one process creates a study: that one queues its trials (a GRID's points, each once)
        study = optuna.create_study(study_name=name, storage=storage, direction=direction,
                                    pruner=make_pruner(spec.pruner))
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, pruner=make_pruner(spec.pruner))
        created = False
    wanted = optuna.study.StudyDirection.MAXIMIZE if direction == "maximize" else optuna.study.StudyDirection.MINIMIZE
    if study.direction != wanted:
        raise SweepError(f"study {name!r} in {public_url(storage_url)} was created to "
                         f"{study.direction.name.lower()}, not {direction}; use another --study name")
    recorded = study.user_attrs.get("objective")
    if recorded and recorded != spec.metric:
        raise SweepError(f"study {name!r} optimises {recorded!r}, not {spec.metric!r}; use another --study name")
    if created:
        import warnings

        study.set_user_attr("objective", spec.metric)
        with warnings.catch_warnings():  # experimental since Optuna 3.2; names the objective in dashboards
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([spec.metric])
    return study, created


def grid_points(grid: dict) -> list[dict]:
    import itertools

    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def add_trials(study, n_trials: int, spec: SweepSpec) -> int:
    """Queues n_trials trials (grid points not yet queued or run first, in order); returns how many."""
    if spec.grid:
        import optuna

        seen = {json.dumps(t.params, sort_keys=True) for t in study.get_trials(deepcopy=False)
                if t.state != optuna.trial.TrialState.FAIL}
        seen |= {json.dumps(t.system_attrs.get("fixed_params", {}), sort_keys=True)
                 for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))}
        points = [p for p in grid_points(spec.grid) if json.dumps(p, sort_keys=True) not in seen][:n_trials]
    else:
        points = [{}] * n_trials  # the sampler fills in the parameters when a worker takes the trial
    for point in points:
        study.enqueue_trial(point, skip_if_exists=False)
    study.set_user_attr(SLOTS_ATTR, True)
    return len(points)


def wait_for_trials(study, timeout_s: float = 300.0) -> None:
    """A worker that joined a study another process is creating waits until its trials are queued."""
    deadline = time.monotonic() + timeout_s
    while not study.user_attrs.get(SLOTS_ATTR):
        if time.monotonic() > deadline:
            raise SweepError(f"study {study.study_name!r} has no queued trials after {timeout_s:.0f} s; "
                             "start it with --n_trials=N")
        time.sleep(1.0)


# ---- MLflow -----------------------------------------------------------------------------------------
def open_parent_run(study, spec: SweepSpec, uri: str, experiment: str, storage_url: str, family: str) -> str:
    """The sweep's MLflow parent run: found through the study's user attrs, else created (and recorded)."""
    from mlflow import MlflowClient

    from ankh3.tracking import experiment_id

    client = MlflowClient(tracking_uri=uri)
    known = study.user_attrs.get("mlflow_parent_run_id")
    if known and study.user_attrs.get("mlflow_uri") == uri:
        try:
            client.update_run(known, status="RUNNING")
            return known
        except Exception:  # noqa: BLE001 -- deleted or from another store: make a new one
            pass
    run = client.create_run(experiment_id(client, experiment), run_name=f"sweep-{study.study_name}", tags={
        "optuna.study": study.study_name, "optuna.storage": public_url(storage_url), "sweep.role": "parent",
        "sweep.objective": spec.metric, "sweep.direction": spec.direction, "family": family})
    study.set_user_attr("mlflow_parent_run_id", run.info.run_id)
    study.set_user_attr("mlflow_uri", uri)
    return run.info.run_id


def finish_parent(study, uri: str, run_id: str) -> str:
    """Best value and trial counts on the parent run; returns a one-line summary."""
    import optuna
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=uri)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    counts = {s.name: states.count(s) for s in optuna.trial.TrialState if states.count(s)}
    now = int(time.time() * 1000)
    metrics = [Metric(f"trials_{k.lower()}", float(v), now, 0) for k, v in counts.items()]
    line = f"study {study.study_name}: {len(states)} trials ({', '.join(f'{v} {k}' for k, v in counts.items())})"
    if counts.get("COMPLETE"):
        best = study.best_trial
        metrics.append(Metric("best_objective", float(best.value), now, 0))
        client.set_tag(run_id, "best.trial_number", str(best.number))
        client.set_tag(run_id, "best.params", json.dumps(best.params))
        line += f"; best trial {best.number} ({best.user_attrs.get('name', '')}): {best.value:.4f}"
    client.log_batch(run_id, metrics=metrics)
    client.set_terminated(run_id, "FINISHED")
    return line


def mark_run(uri: str, run_id: str | None, status: str | None, state: str, reason: str,
             value: float | None = None) -> None:
    """Tags the trial's MLflow run with its Optuna state (and ends it, if the run did not end itself)."""
    if run_id is None:
        return
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    try:
        client = MlflowClient(tracking_uri=uri)
        tags = [RunTag("optuna.state", state)] + ([RunTag("optuna.fail_reason", reason[:5000])] if reason else [])
        metrics = [Metric("objective", value, int(time.time() * 1000), 0)] if value is not None else []
        client.log_batch(run_id, metrics=metrics, tags=tags)
        if status is not None and client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status)
    except Exception as e:  # noqa: BLE001 -- bookkeeping must not turn a trial's outcome into a crash
        print(f"could not tag MLflow run {run_id}: {type(e).__name__}", file=sys.stderr, flush=True)


# ---- one trial --------------------------------------------------------------------------------------
@dataclasses.dataclass
class SweepContext:
    spec: SweepSpec
    study_name: str
    parent_run_id: str
    uri: str
    base_config: object  # the sweep file's config with the command line's overrides, seed and tracking URI
    workdir_root: str
    mode: str


def objective_value(result, metric: str) -> float | None:
    """The metric from the run's final metrics, else TASK/SOURCE/SPLIT/NAME of one of its probes."""
    if metric in result.metrics:
        return float(result.metrics[metric])
    for probe in result.downstream:
        prefix = f"{probe.name}/{probe.source}/"
        if metric.startswith(prefix) and metric[len(prefix):] in probe.metrics:
            return float(probe.metrics[metric[len(prefix):]])
    return None


def pruning_hook(trial, spec: SweepSpec):
    """on_eval for ankh3.experiment: reports PRUNE_ON at each evaluation; raises RunPruned when told to."""
    from ankh3.experiment import RunPruned

    sign = -1.0 if spec.direction == "maximize" else 1.0  # a loss reported to a maximising study

    def on_eval(step: int, metrics: dict) -> None:
        value = metrics.get(spec.prune_on) if spec.prune_on else None
        if value is None or not math.isfinite(value):
            return
        trial.report(sign * value, step)
        if trial.should_prune():
            raise RunPruned(f"pruned at step {step} ({spec.prune_on} {value:.4f})")

    return on_eval


def run_trial(trial, ctx: SweepContext, box: dict) -> float:
    """Samples the trial's config and trains it in this process; returns the objective."""
    import optuna

    from ankh3 import experiment

    sampled = ctx.spec.module.search_space(trial)
    label = trial_label(trial.params, ctx.spec.labels)
    trial.set_user_attr("name", label)
    config = copy.deepcopy(ctx.base_config)
    apply_overrides(config, sampled)
    config.variant = label
    try:
        experiment.resolve(config)
    except UserError as e:
        raise TrialFailed(one_line(e)) from None
    workdir = os.path.join(ctx.workdir_root, "sweeps", ctx.study_name, f"trial-{trial.number:04d}")
    trial.set_user_attr("workdir", workdir)

    def on_start(tracker) -> None:
        box["run_id"] = tracker.run_id
        trial.set_user_attr("mlflow_run_id", tracker.run_id)
        tag_trial_run(ctx, trial, tracker.run_id)

    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, names.LAUNCH_LOG), "a") as log:
        hooks = experiment.Hooks(on_start=on_start, on_eval=pruning_hook(trial, ctx.spec), out=log)
        try:
            result = experiment.run(config, workdir, ctx.mode, hooks)
        except experiment.RunPruned as e:
            raise optuna.TrialPruned(str(e)) from None
    if result.stopped_by:
        trial.study.enqueue_trial(trial.params)
        raise WorkerStopped(f"stopped by {result.stopped_by}; its parameters are queued again")
    value = objective_value(result, ctx.spec.metric)
    if value is None or not math.isfinite(value):
        raise TrialFailed(f"the run finished without a finite {ctx.spec.metric!r} (got {value}); "
                          "check the objective's name against the run's metrics")
    return value


def tag_trial_run(ctx: SweepContext, trial, run_id: str | None) -> None:
    """Nests the trial's run under the sweep's parent run, with the trial's number and parameters."""
    if run_id is None:
        return  # the store is unreachable: the run is journaled and tagged by the runner alone
    from mlflow import MlflowClient
    from mlflow.entities import Param, RunTag

    tags = {PARENT_TAG: ctx.parent_run_id, "optuna.study": ctx.study_name, "optuna.trial_number": str(trial.number),
            "sweep.role": "trial"}
    params = [Param("optuna.trial_number", str(trial.number))]
    params += [Param(f"optuna.params.{k}", str(v)) for k, v in trial.params.items()]
    try:
        MlflowClient(tracking_uri=ctx.uri).log_batch(run_id, params=params,
                                                     tags=[RunTag(k, v) for k, v in tags.items()])
    except Exception as e:  # noqa: BLE001 -- a retried trial's run may hold these already
        print(f"could not tag MLflow run {run_id}: {type(e).__name__}", file=sys.stderr, flush=True)


def was_queued(trial) -> bool:
    """Whether the trial was taken from the queue (enqueued trials carry their fixed parameters)."""
    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    return "fixed_params" in frozen.system_attrs


def make_objective(ctx: SweepContext, state: dict):
    """The Optuna objective: failures become TrialFailed with a one-line reason, recorded in both stores.
    state['queue_empty'] is set when the trial was not a queued one (the queue emptied under us)."""
    import optuna

    def objective(trial) -> float:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        if not was_queued(trial):  # the queue emptied between our look and our ask
            state["queue_empty"] = True
            reason = "no queued trial was left when this worker asked; nothing ran"
            trial.set_user_attr("fail_reason", reason)
            raise TrialFailed(reason)
        box: dict = {}
        try:
            value = run_trial(trial, ctx, box)
        except optuna.TrialPruned as e:
            mark_run(ctx.uri, box.get("run_id"), "KILLED", "PRUNED", str(e))
            raise
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 -- any failure ends this trial, never the study
            state["stop"] = isinstance(e, WorkerStopped)
            reason = one_line(e)
            trial.set_user_attr("fail_reason", reason)
            mark_run(ctx.uri, box.get("run_id"), "FAILED", "FAIL", reason)
            raise TrialFailed(reason) from None
        mark_run(ctx.uri, box.get("run_id"), None, "COMPLETE", "", value)
        return value

    return objective


# ---- workers ----------------------------------------------------------------------------------------
def count(study, *states) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def work(study, ctx: SweepContext, timeout: float | None = None, heartbeat_s: float = 30.0, out=sys.stdout) -> None:
    """Runs queued trials until none is left, then waits for the other workers' running trials (one of
    them may die and be re-queued) before returning. Prints `[N/M]` with an ETA after each trial."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial's outcome is our own [N/M] line
    finished_states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    start, done_at_start = time.monotonic(), count(study, *finished_states)
    state: dict = {}
    objective = make_objective(ctx, state)
    while timeout is None or time.monotonic() - start < timeout:
        if count(study, TrialState.WAITING):
            ran: list = []
            study.optimize(objective, n_trials=1, catch=(TrialFailed,), callbacks=[lambda _, t: ran.append(t)])
            if state.pop("queue_empty", False):
                continue  # nothing ran; wait below for the other workers' trials
            if ran:
                print(progress_line(study, ran[-1], start, done_at_start), file=out, flush=True)
            if state.get("stop"):
                break
            continue
        if not count(study, TrialState.RUNNING):
            break
        if heartbeat_s:  # another worker's trial runs: if its worker died, it is failed and re-queued here
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        time.sleep(min(heartbeat_s or 5.0, 5.0))


def progress_line(study, trial, start: float, done_at_start: int) -> str:
    from optuna.trial import TrialState

    finished = count(study, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    left = count(study, TrialState.WAITING, TrialState.RUNNING)
    elapsed = time.monotonic() - start
    rate = (finished - done_at_start) / elapsed if finished > done_at_start else 0.0
    eta = f", ETA {format_duration(left / rate)}" if rate and left else ""
    value = f" {trial.value:.4f}" if trial.value is not None else ""
    why = f": {trial.user_attrs['fail_reason']}" if trial.state == TrialState.FAIL and "fail_reason" in trial.user_attrs else ""
    return (f"[{finished}/{finished + left}] trial {trial.number} {trial.user_attrs.get('name', '')} "
            f"{trial.state.name}{value}{why} ({format_duration(elapsed)} so far{eta})")


def spawn_workers(argv: list[str], workers: int) -> list[int]:
    """This command once per worker, as `--worker` (each joins the study); their exit codes."""
    base = [a for a in argv[1:] if a not in ("--worker", "--noworker") and not a.startswith("--workers=")]
    script = os.path.join(names.REPO_ROOT, "launch", "sweep.py")
    procs = [subprocess.Popen([sys.executable, script, *base, "--workers=1", "--worker"], cwd=names.REPO_ROOT)
             for _ in range(workers)]
    return [p.wait() for p in procs]


# ---- the whole command ------------------------------------------------------------------------------
@dataclasses.dataclass
class SweepRequest:
    """What launch/sweep.py's flags ask for."""

    config: str
    study: str
    n_trials: int | None
    overrides: list[str]
    storage: str | None = None
    workers: int = 1
    worker: bool = False
    timeout: float | None = None
    objective: str | None = None
    direction: str | None = None
    pruner: str | None = None
    mode: str = "auto"
    seed: int = 0
    tracking_uri: str | None = None
    workdir_root: str | None = None
    heartbeat_s: int = 30


def sweep(req: SweepRequest, argv: list[str], out=sys.stdout) -> int:
    """Opens the study (queueing --n_trials trials unless this is a worker joining one), runs the trials
    here or in --workers processes, and returns the number of workers that failed."""
    if req.workers < 1 or (req.n_trials is not None and req.n_trials < 1) or req.heartbeat_s < 1:
        raise SweepError("--workers, --n_trials and --heartbeat_s must be >= 1")
    spec = load_spec(req.config, req.objective, req.direction, req.pruner)
    if req.objective and not req.direction:
        raise SweepError(f"--objective={req.objective}: also pass --direction=minimize or maximize")
    mode = req.mode if req.mode != "auto" else ("pretrain" if spec.metric.startswith(("eval/", "train/")) else "all")
    check_override_keys(load_config(spec.path, spec.arg, []), req.overrides)
    config = load_config(spec.path, spec.arg, [*req.overrides, f"--config.seed={req.seed}"])
    config.tracking.uri = resolve_uri(req.tracking_uri, config)
    experiment_name = config.tracking.experiment or config.family
    storage_url = req.storage or default_storage()
    study, created = open_study(req.study, storage_url, spec, req.heartbeat_s)
    if created or not req.worker:
        if req.n_trials is None:
            raise SweepError("pass --n_trials=N: the number of trials to add to the study")
        added = add_trials(study, req.n_trials, spec)
        print(f"study {req.study}: {added} trials queued in {public_url(storage_url)}", file=out, flush=True)
    else:
        wait_for_trials(study)
    parent = open_parent_run(study, spec, config.tracking.uri, experiment_name, storage_url, config.family)
    root = os.path.abspath(req.workdir_root) if req.workdir_root else os.path.join(names.REPO_ROOT, "runs")
    failed = 0
    if req.workers > 1 and not req.worker:
        failed = sum(code != 0 for code in spawn_workers(argv, req.workers))
    else:
        ctx = SweepContext(spec, req.study, parent, config.tracking.uri, config, root, mode)
        work(study, ctx, req.timeout, req.heartbeat_s if not storage_url.startswith("journal:") else 0, out)
    from optuna.trial import TrialState

    if not count(study, TrialState.WAITING, TrialState.RUNNING):  # the last worker out closes the parent run
        print(finish_parent(study, config.tracking.uri, parent), file=out, flush=True)
        print(f"tables and plots: python analysis/aggregate.py --sweep={req.study} --storage={public_url(storage_url)}"
              + (f" --tracking_uri={config.tracking.uri}" if req.tracking_uri else ""), file=out, flush=True)
    return failed
