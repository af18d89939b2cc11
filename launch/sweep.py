"""Optuna sweep over a search space defined in an experiments file; every trial is a launch/run.py run.

    python launch/sweep.py --config=experiments/sweep_masking.py --study=masking --n_trials=20 --workers=2
    python launch/sweep.py --config=experiments/sweep_masking.py --study=masking --n_trials=10   # resumes: 10 more
    python launch/sweep.py --config=experiments/sweep_masking.py --study=masking --timeout=3600 \
        --storage=postgresql://user:pw@host/optuna          # the same command on several machines shares one study
    python analysis/aggregate.py --sweep=masking                                                  # table and plots

The experiments file defines `get_config(arg)` (the recipe every trial starts from), `search_space(trial)`
-> {config key: value}, OBJECTIVE = (metric, 'minimize'|'maximize') and optionally PRUNE_ON (a held-out
metric reported at every evaluation) and PRUNER ('median' | 'halving' | 'none'). The objective is a
metric of the trial's run (e.g. eval/nlu/loss) or TASK/SOURCE/SPLIT/METRIC of one of its downstream
probes (e.g. ssp3/model/valid/q3_mean).

Storage: --storage=sqlite:///optuna.db (default, repo root), any SQLAlchemy URL, or journal:PATH (an
Optuna journal file, best for many processes on one file system). --n_trials is the number of new
trials this command runs, shared by its --workers processes; the study resumes by --study name.
In MLflow the sweep is a parent run (tags optuna.study, sweep.role=parent) with one nested run per
trial (params optuna.trial_number and optuna.params.*, metric `objective`, tag optuna.state). A trial
whose run fails (an error, a non-finite loss) is marked FAIL with its reason and the study goes on.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ankh3.studies import StorageError, open_storage, public_url  # noqa: E402
from launch.grid import (GridError, cache_env, fail, failure_reason, load_module, make_job,  # noqa: E402
                         open_run, parse_command_line, split_spec, start_process)

PARENT_TAG = "mlflow.parentRunId"
PRUNERS = ("median", "halving", "none")
POLL_S = 1.0
STOP_WAIT_S = 120.0  # how long a pruned run may take to save its checkpoint and exit
from ankh3.names import HISTORY, child_run_name  # noqa: E402


class SweepError(ValueError):
    """Bad sweep input (file, storage, objective); the message says what and how to fix it."""


class TrialFailed(RuntimeError):
    """A trial that could not produce its objective; the message is the reason kept in the study."""


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


def load_spec(spec: str, objective: str | None = None, direction: str | None = None,
              pruner: str | None = None) -> SweepSpec:
    path, arg = split_spec(spec)
    module = load_module(path)
    where = os.path.relpath(path, ROOT)
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
    return SweepSpec(path, arg, module, metric, direction, getattr(module, "PRUNE_ON", "eval/s2s/loss"), pruner)


def format_override(key: str, value) -> str:
    """--config.KEY=VALUE as ml_collections parses it (tuples as Python literals)."""
    if isinstance(value, (tuple, list)):
        text = "(" + ", ".join(repr(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    else:
        text = str(value)
    return f"--config.{key}={text}"


# ---- storage ----------------------------------------------------------------------------------------
def default_storage() -> str:
    return "sqlite:///" + os.path.join(ROOT, "optuna.db")


# ---- one trial --------------------------------------------------------------------------------------
@dataclasses.dataclass
class SweepContext:
    spec: SweepSpec
    study_name: str
    parent_run_id: str
    uri: str | None  # MLflow store (None: the config's, MLFLOW_TRACKING_URI, or the default)
    overrides: list[str]  # passed to every trial
    workdir_root: str
    mode: str
    seed: int
    env: dict = dataclasses.field(default_factory=dict)  # added to each trial's environment


def objective_value(client, run_id: str, metric: str) -> float | None:
    """The metric from the trial's run, else from its downstream child run TASK/SOURCE (metric SPLIT/NAME)."""
    run = client.get_run(run_id)
    if metric in run.data.metrics:
        return run.data.metrics[metric]
    child_name, _, child_metric = metric.partition("/")
    source, _, rest = child_metric.partition("/")
    children = client.search_runs([run.info.experiment_id], f"tags.`{PARENT_TAG}` = '{run_id}'")
    for child in children:
        if child.info.run_name == child_run_name(child_name, source) and rest in child.data.metrics:
            return child.data.metrics[rest]
    return None


class HistoryReader:
    """New records of a run's history.jsonl since the last read (the run appends one line per log step)."""

    def __init__(self, path: str):
        self.path, self.offset = path, 0

    def read(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        complete = data[:data.rfind(b"\n") + 1]  # a line being written is read next time
        self.offset += len(complete)
        return [json.loads(line) for line in complete.decode().splitlines() if line.strip()]


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM (the run saves a checkpoint and exits), then SIGKILL if it does not."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def watch(proc: subprocess.Popen, trial, ctx: SweepContext, workdir: str) -> int:
    """Waits for the run, reporting PRUNE_ON at each evaluation; raises TrialPruned when the pruner says so."""
    import optuna

    reader = HistoryReader(os.path.join(workdir, HISTORY))
    sign = -1.0 if ctx.spec.direction == "maximize" else 1.0  # a loss reported to a maximising study
    while True:
        returncode = proc.poll()
        for record in reader.read():
            value = record.get(ctx.spec.prune_on) if ctx.spec.prune_on else None
            if value is None or not math.isfinite(value):
                continue
            trial.report(sign * value, int(record["step"]))
            if trial.should_prune():
                stop_process(proc)
                raise optuna.TrialPruned(f"pruned at step {record['step']} ({ctx.spec.prune_on} {value:.4f})")
        if returncode is not None:
            return returncode
        time.sleep(POLL_S)


def trial_tags(ctx: SweepContext, number: int) -> dict:
    return {PARENT_TAG: ctx.parent_run_id, "optuna.study": ctx.study_name, "optuna.trial_number": str(number),
            "sweep.role": "trial"}


def run_trial(trial, ctx: SweepContext, client_box: dict) -> float:
    """Samples the overrides, runs launch/run.py on them, and returns the objective."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    sampled = ctx.spec.module.search_space(trial)
    overrides = [*ctx.overrides, *[format_override(k, v) for k, v in sampled.items()]]
    workdir = os.path.join(ctx.workdir_root, "sweeps", ctx.study_name, f"trial-{trial.number:04d}")
    try:
        job = make_job(ctx.spec.path, ctx.spec.arg, ctx.seed, overrides, flag_uri=ctx.uri,
                       workdir_root=ctx.workdir_root, mode=ctx.mode, workdir=workdir,
                       extra_tags=trial_tags(ctx, trial.number))
    except GridError as e:
        raise TrialFailed(str(e)) from None
    run_id = open_run(job)
    client = client_box.setdefault("client", MlflowClient(tracking_uri=job.uri))
    client_box["run_id"] = run_id
    trial.set_user_attr("mlflow_run_id", run_id)
    trial.set_user_attr("workdir", job.workdir)
    trial.set_user_attr("command", " ".join(job.command()[1:]))
    params = [Param("optuna.trial_number", str(trial.number))]
    params += [Param(f"optuna.params.{k}", str(v)) for k, v in trial.params.items()]
    client.log_batch(run_id, params=params)
    returncode = watch(start_process(job, ctx.env), trial, ctx, job.workdir)
    if returncode != 0:
        raise TrialFailed(failure_reason(job, returncode))
    value = objective_value(client, run_id, ctx.spec.metric)
    if value is None or not math.isfinite(value):
        raise TrialFailed(f"the run finished without a finite {ctx.spec.metric!r} (got {value}); "
                          "check the objective's name against the run's metrics")
    client.log_batch(run_id, metrics=[Metric("objective", float(value), int(time.time() * 1000), 0)])
    return float(value)


def make_objective(ctx: SweepContext):
    """The Optuna objective: failures become TrialFailed with a one-line reason, recorded in both stores."""
    import optuna

    def objective(trial) -> float:
        box: dict = {}
        try:
            value = run_trial(trial, ctx, box)
        except optuna.TrialPruned as e:
            mark_run(box, "KILLED", "PRUNED", str(e))
            raise
        except Exception as e:  # noqa: BLE001 -- any failure ends this trial, never the study
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            trial.set_user_attr("fail_reason", reason)
            mark_run(box, "FAILED", "FAIL", reason)
            print(f"trial {trial.number} failed: {reason}", flush=True)
            raise TrialFailed(reason) from None
        mark_run(box, None, "COMPLETE", "")
        return value

    return objective


def mark_run(box: dict, status: str | None, state: str, reason: str) -> None:
    """Tags the trial's MLflow run with its Optuna state (and ends it, for runs that did not end themselves)."""
    client, run_id = box.get("client"), box.get("run_id")
    if client is None or run_id is None:
        return
    try:
        client.set_tag(run_id, "optuna.state", state)
        if reason:
            client.set_tag(run_id, "optuna.fail_reason", reason[:5000])
        if status is not None:
            client.set_terminated(run_id, status)
    except Exception as e:  # noqa: BLE001 -- bookkeeping must not turn a failure into a crash
        print(f"could not tag MLflow run {run_id}: {type(e).__name__}", file=sys.stderr, flush=True)


# ---- the study --------------------------------------------------------------------------------------
def make_pruner(name: str):
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def open_study(name: str, storage_url: str, spec: SweepSpec):
    """Creates or resumes the study; its direction must match the objective's."""
    import optuna

    storage = open_storage(storage_url)
    for attempt in range(3):
        try:
            study = optuna.create_study(study_name=name, storage=storage, direction=spec.direction,
                                        pruner=make_pruner(spec.pruner), load_if_exists=True)
            break
        except optuna.exceptions.DuplicatedStudyError:  # created by another process between check and insert
            if attempt == 2:
                raise
            time.sleep(1.0)
    wanted = optuna.study.StudyDirection.MAXIMIZE if spec.direction == "maximize" else optuna.study.StudyDirection.MINIMIZE
    if study.direction != wanted:
        raise SweepError(f"study {name!r} in {public_url(storage_url)} was created to "
                         f"{study.direction.name.lower()}, not {spec.direction}; use another --study name")
    recorded = study.user_attrs.get("objective")
    if recorded and recorded != spec.metric:
        raise SweepError(f"study {name!r} optimises {recorded!r}, not {spec.metric!r}; use another --study name")
    if not recorded:
        study.set_user_attr("objective", spec.metric)
    return study


def open_parent_run(study, spec: SweepSpec, uri: str, experiment: str, storage_url: str, family: str) -> str:
    """The sweep's MLflow parent run: found through the study's user attrs, else created (and recorded)."""
    from mlflow import MlflowClient

    from ankh3.tracking import artifact_location

    client = MlflowClient(tracking_uri=uri)
    known = study.user_attrs.get("mlflow_parent_run_id")
    if known and study.user_attrs.get("mlflow_uri") == uri:
        try:
            client.update_run(known, status="RUNNING")
            return known
        except Exception:  # noqa: BLE001 -- deleted or from another store: make a new one
            pass
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
    else:
        experiment_id = client.create_experiment(experiment, artifact_location=artifact_location(uri, experiment))
    run = client.create_run(experiment_id, run_name=f"sweep-{study.study_name}", tags={
        "optuna.study": study.study_name, "optuna.storage": public_url(storage_url), "sweep.role": "parent",
        "sweep.objective": spec.metric, "sweep.direction": spec.direction, "family": family})
    study.set_user_attr("mlflow_parent_run_id", run.info.run_id)
    study.set_user_attr("mlflow_uri", uri)
    return run.info.run_id


def optimize(study, ctx: SweepContext, n_trials: int | None, timeout: float | None) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO)
    study.optimize(make_objective(ctx), n_trials=n_trials, timeout=timeout, catch=(TrialFailed,))


def shares(total: int | None, workers: int) -> list[int | None]:
    """How many trials each worker runs, so that the workers together run exactly `total`."""
    if total is None:
        return [None] * workers
    return [total // workers + (1 if i < total % workers else 0) for i in range(workers)]


def spawn_workers(argv: list[str], counts: list[int | None]) -> list[int]:
    """Runs this command once per worker (--workers=1 --worker, its share of --n_trials); their exit codes."""
    base = [a for a in argv[1:] if a not in ("--worker", "--noworker") and not a.startswith(("--workers=", "--n_trials="))]
    procs = []
    for count in counts:
        if count == 0:
            continue
        extra = [f"--n_trials={count}"] if count is not None else []
        procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), *base, "--workers=1", "--worker",
                                       *extra], cwd=ROOT))
    return [p.wait() for p in procs]


def finish_parent(study, uri: str, run_id: str) -> str:
    """Best value and trial counts on the parent run; returns a one-line summary."""
    import optuna
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=uri)
    states = [t.state for t in study.trials]
    counts = {s.name: states.count(s) for s in optuna.trial.TrialState if states.count(s)}
    now = int(time.time() * 1000)
    metrics = [Metric(f"trials_{k.lower()}", float(v), now, 0) for k, v in counts.items()]
    line = f"study {study.study_name}: {len(states)} trials ({', '.join(f'{v} {k}' for k, v in counts.items())})"
    if counts.get("COMPLETE"):
        best = study.best_trial
        metrics.append(Metric("best_objective", float(best.value), now, 0))
        client.set_tag(run_id, "best.trial_number", str(best.number))
        client.set_tag(run_id, "best.params", json.dumps(best.params))
        line += f"; best trial {best.number}: {best.value:.4f} with {best.params}"
    client.log_batch(run_id, metrics=metrics)
    client.set_terminated(run_id, "FINISHED")
    return line


# ---- command line -----------------------------------------------------------------------------------
def define_flags(flags) -> None:
    flags.DEFINE_string("config", None, "sweep file: experiments/FILE.py[:ARG] with get_config and search_space")
    flags.DEFINE_string("study", None, "Optuna study name; an existing one is resumed")
    flags.DEFINE_integer("n_trials", None, "new trials this command runs (over all workers)")
    flags.DEFINE_float("timeout", None, "stop starting trials after this many seconds")
    flags.DEFINE_string("storage", None, "sqlite:///PATH, a database URL, or journal:PATH (default sqlite:///optuna.db)")
    flags.DEFINE_integer("workers", 1, "worker processes sharing the study")
    flags.DEFINE_string("objective", None, "metric to optimise (default: the file's OBJECTIVE)")
    flags.DEFINE_enum("direction", None, ("minimize", "maximize"), "direction of --objective")
    flags.DEFINE_enum("pruner", None, PRUNERS, "pruner on PRUNE_ON (default: the file's PRUNER or median)")
    flags.DEFINE_enum("mode", "auto", ("auto", "all", "pretrain"),
                      "what each trial runs; auto: pretraining only when the objective is a pretraining metric")
    flags.DEFINE_integer("seed", 0, "config.seed of every trial")
    flags.DEFINE_string("tracking_uri", None, "MLflow store (default: config, MLFLOW_TRACKING_URI, sqlite:///mlflow.db)")
    flags.DEFINE_string("workdir_root", None, "trial workdirs go to ROOT/sweeps/STUDY/ (default: runs/)")
    flags.DEFINE_string("compile_cache", os.path.join(ROOT, "runs", "jax_cache"),
                        "JAX compilation cache shared by the trials ('' = none; JAX_COMPILATION_CACHE_DIR wins)")
    flags.DEFINE_bool("worker", False, "internal: this process is one of --workers")


def main() -> None:
    from absl import flags

    define_flags(flags)
    try:
        F, overrides = parse_command_line(flags, sys.argv, SweepError, "sweep.py")
        if not F.config or not F.study:
            raise SweepError("pass --config=experiments/SWEEP.py and --study=NAME (e.g. --study=masking)")
        if F.n_trials is None and F.timeout is None:
            raise SweepError("pass --n_trials=N and/or --timeout=SECONDS, or the sweep never ends")
        if F.workers < 1 or (F.n_trials is not None and F.n_trials < 1):
            raise SweepError("--workers and --n_trials must be >= 1")
        spec = load_spec(F.config, F.objective, F.direction, F.pruner)
        if F.objective and not F.direction:
            raise SweepError(f"--objective={F.objective}: also pass --direction=minimize or maximize")
        mode = F.mode if F.mode != "auto" else ("pretrain" if spec.metric.startswith(("eval/", "train/")) else "all")
        root = os.path.abspath(F.workdir_root) if F.workdir_root else os.path.join(ROOT, "runs")
        probe = make_job(spec.path, spec.arg, F.seed, overrides, flag_uri=F.tracking_uri, workdir_root=root)
        storage_url = F.storage or default_storage()
        study = open_study(F.study, storage_url, spec)
        parent = open_parent_run(study, spec, probe.uri, probe.experiment, storage_url, probe.family)
        ctx = SweepContext(spec, F.study, parent, probe.uri, overrides, root, mode, F.seed, cache_env(F.compile_cache))
        if F.workers > 1:
            codes = spawn_workers(sys.argv, shares(F.n_trials, F.workers))
            if any(codes):
                print(f"{sum(c != 0 for c in codes)} worker(s) ended with an error; see their output above", flush=True)
        else:
            optimize(study, ctx, F.n_trials, F.timeout)
    except (SweepError, GridError, StorageError) as e:
        fail(str(e))
    if not F.worker:
        print(finish_parent(study, probe.uri, parent), flush=True)
        print(f"tables and plots: python analysis/aggregate.py --sweep={F.study} --storage={public_url(storage_url)}"
              + (f" --tracking_uri={probe.uri}" if F.tracking_uri else ""), flush=True)


if __name__ == "__main__":
    main()
