"""Every variant of an experiments family x N seeds, one launch/run.py process each (the library
behind launch/grid.py, whose docstring describes the command): plan the jobs, skip those FINISHED in
MLflow with the same family, variant, seed and config hash, run the rest and report `[N/M]` with an
ETA. Its config helpers (split_spec, load_module, load_config) serve ankh3/sweep.py too.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time

from ankh3 import names
from ankh3.errors import ERROR_PREFIX, UserError

ROOT = names.REPO_ROOT

RUN_SCRIPT = os.path.join(ROOT, "launch", "run.py")
LOG_FILE = names.LAUNCH_LOG
# Fields that do not change what a run computes, so they stay out of the config hash.
UNHASHED = ("seed", "tracking", "budget", "downstream.cache_dir", "data.worker_count", "train.progress_every_s")


class GridError(UserError, ValueError):
    """Bad grid input (family file, variant list, override); the message says what and how to fix it."""


# ---- the family file and its configs ----------------------------------------------------------------
def split_spec(spec: str) -> tuple[str, str | None]:
    """'experiments/f.py:ARG' -> (absolute path, 'ARG' or None)."""
    path, sep, arg = spec.partition(":")
    path = path if os.path.isabs(path) or os.path.exists(path) else os.path.join(ROOT, path)
    if not os.path.isfile(path):
        raise GridError(f"no such experiments file {spec.partition(':')[0]!r}; pass --config=experiments/FAMILY.py")
    return os.path.abspath(path), (arg if sep else None)


def load_module(path: str):
    """The experiments file as a module (imports of experiments.common work: ROOT is on sys.path)."""
    name = "grid_family_" + hashlib.sha1(path.encode()).hexdigest()[:8]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 -- a broken experiments file: report it on one line
        raise GridError(f"cannot import {path}: {type(e).__name__}: {e}") from None
    return module


def list_variants(module, path: str) -> tuple[str, ...]:
    """The family's VARIANTS (docs/interfaces.md: every experiments family file defines it)."""
    found = getattr(module, "VARIANTS", None)
    if isinstance(found, (tuple, list)) and found:
        return tuple(str(v) for v in found)
    raise GridError(f"{os.path.relpath(path, ROOT)} defines no VARIANTS tuple; add one (docs/interfaces.md, "
                    "Experiment families) or name the variants with --variants=a,b")


def load_config(path: str, arg: str | None, overrides: list[str]):
    """The ConfigDict that `launch/run.py --config=PATH:ARG OVERRIDES` would use (same parser)."""
    from absl import flags
    from ml_collections import config_flags

    spec = path if arg is None else f"{path}:{arg}"
    argv = ["grid", f"--config={spec}", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "experiment config", flag_values=values, sys_argv=argv)
    try:
        values(argv)
    except Exception as e:  # noqa: BLE001 -- config files and overrides raise many kinds
        line = config_error_line(e)
        where = os.path.relpath(path, ROOT)
        raise GridError(line if where in line else f"{where}:{arg}: {line}") from None
    return values.config


def check_override_keys(config, overrides: list[str]) -> None:
    """One line naming the first --config.KEY that the config does not have (before any run starts)."""
    from ankh3.config import unknown_key

    for override in overrides:
        key = override.split("=", 1)[0][len("--config."):]
        why = unknown_key(config, key)
        if why:
            raise GridError(f"unknown config key {key!r} in --config.{key}: {why}")


def config_error_line(error: BaseException) -> str:
    """The most useful line of a config failure: a ConfigError's message, else the innermost error."""
    from ankh3.config import ConfigError

    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        chain.append(error)
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    for e in reversed(chain):
        if isinstance(e, ConfigError):
            return str(e).strip().splitlines()[-1]
    last = chain[-1]
    lines = str(last).strip().splitlines()
    return f"{type(last).__name__}: {lines[-1] if lines else ''}"


def config_hash(config) -> str:
    """12 hex digits over the resolved config minus fields that do not change the computation."""
    tree = config.to_dict()
    for key in UNHASHED:
        node, parts = tree, key.split(".")
        for part in parts[:-1]:
            node = node.get(part, {})
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    text = json.dumps(tree, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


# ---- planning ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class Job:
    """One (variant, seed) of the matrix and where it lives."""

    path: str  # the experiments file
    arg: str | None
    seed: int
    overrides: list[str]  # --config.KEY=VALUE, seed and tracking uri included
    family: str
    variant: str
    config_hash: str
    experiment: str
    uri: str
    workdir: str
    mode: str = "all"
    extra_tags: dict = dataclasses.field(default_factory=dict)

    @property
    def run_name(self) -> str:
        return names.run_name(self.variant, self.seed)

    @property
    def tags(self) -> dict:
        return {"family": self.family, "variant": self.variant, "seed": str(self.seed),
                "config_hash": self.config_hash, **self.extra_tags}

    def command(self) -> list[str]:
        spec = self.path if self.arg is None else f"{self.path}:{self.arg}"
        return [sys.executable, RUN_SCRIPT, f"--config={spec}", *self.overrides, f"--workdir={self.workdir}",
                f"--mode={self.mode}"]


def resolve_uri(flag_uri: str | None, config) -> str:
    """--tracking_uri, else the config's, MLFLOW_TRACKING_URI, or the repository's SQLite; checked."""
    from ankh3.tracking import check_uri, default_uri

    return check_uri(flag_uri or config.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri(ROOT))


def safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-," else "_" for c in text)


def make_job(path: str, arg: str | None, seed: int, overrides: list[str], *, flag_uri: str | None,
             workdir_root: str, mode: str = "all", workdir: str | None = None, extra_tags: dict | None = None) -> Job:
    """Loads the config of (ARG, seed) with the overrides and fixes its tracking store and workdir."""
    kept = [o for o in overrides if not o.startswith(("--config.seed=", "--config.tracking.uri="))]
    config = load_config(path, arg, [*kept, f"--config.seed={seed}"])
    uri = resolve_uri(flag_uri, config)
    experiment = config.tracking.experiment or config.family
    digest = config_hash(config)
    if workdir is None:
        workdir = os.path.join(workdir_root, safe_name(experiment), f"{safe_name(config.variant)}-s{seed}-{digest[:8]}")
    return Job(path=path, arg=arg, seed=seed, overrides=[*kept, f"--config.seed={seed}", f"--config.tracking.uri={uri}"],
               family=config.family, variant=config.variant, config_hash=digest, experiment=experiment, uri=uri,
               workdir=os.path.abspath(workdir), mode=mode, extra_tags=dict(extra_tags or {}))


def plan(spec: str, seeds: int, variants: list[str] | None, overrides: list[str], *, flag_uri: str | None = None,
         workdir_root: str | None = None, mode: str = "all", shape: str | None = None) -> list[Job]:
    """Every (variant, seed) job of a family at `shape`; `variants` narrows the list (or, for an
    open-ended family such as ablate_masking, names ARGs beyond its listed examples)."""
    if seeds < 1:
        raise GridError(f"--seeds={seeds}: need at least 1")
    path, arg = split_spec(spec)
    if arg is not None:
        raise GridError(f"--config={spec}: the grid runs every variant of a family, so it takes no ':ARG'; "
                        "pick variants with --variants=a,b and the model shape with --shape=SHAPE")
    listed = list_variants(load_module(path), path) if not variants else ()
    names = list(variants or listed)
    if any("@" in n for n in names):
        raise GridError(f"--variants={','.join(names)}: give the shape once with --shape=SHAPE, not per variant")
    args = [f"{n}@{shape}" if shape else n for n in names]
    root = workdir_root or os.path.join(ROOT, "runs")
    check_override_keys(load_config(path, args[0], []), overrides)
    # Seed-major: a first complete comparison (every variant at seed 0) comes before any repeat.
    return [make_job(path, a, s, overrides, flag_uri=flag_uri, workdir_root=root, mode=mode)
            for s in range(seeds) for a in args]


# ---- MLflow -----------------------------------------------------------------------------------------
def _quote(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def find_finished(client, job: Job) -> str | None:
    """The id of a FINISHED run of this job's experiment with its family, variant, seed and config hash."""
    experiment = client.get_experiment_by_name(job.experiment)
    if experiment is None:
        return None
    query = " and ".join(f"tags.{k} = {_quote(v)}" for k, v in
                         (("family", job.family), ("variant", job.variant), ("seed", job.seed),
                          ("config_hash", job.config_hash)))
    runs = client.search_runs([experiment.experiment_id], f"{query} and attributes.status = 'FINISHED'",
                              max_results=1)
    return runs[0].info.run_id if runs else None


def open_run(job: Job) -> str | None:
    """Creates (or finds) the job's MLflow run with its tags, recorded in WORKDIR/tracking.json.

    launch/run.py's Tracker reopens the run it finds there, so the run carries the grid's tags from
    its first second and an interrupted job resumes into the same run.
    """
    from ankh3.tracking import Tracker

    tracker = Tracker(job.uri, job.experiment, job.run_name, job.workdir, tags=job.tags)
    if tracker.run_id is None:
        tracker.start()
    return tracker.run_id


# ---- launching --------------------------------------------------------------------------------------
@dataclasses.dataclass
class Outcome:
    job: Job
    status: str  # 'skipped' | 'finished' | 'failed'
    seconds: float = 0.0
    reason: str = ""
    run_id: str | None = None


def start_process(job: Job, env: dict | None = None) -> subprocess.Popen:
    """launch/run.py for the job in its own process; stdout and stderr go to WORKDIR/launch.log."""
    os.makedirs(job.workdir, exist_ok=True)
    log = open(os.path.join(job.workdir, LOG_FILE), "a")
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(job.command())}\n")
    log.flush()
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(job.command(), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=child_env)
    log.close()  # the child holds its own descriptor
    return proc


def failure_reason(job: Job, returncode: int) -> str:
    """The run's own one-line error ('error: ...') from its log, else its exit status."""
    try:
        with open(os.path.join(job.workdir, LOG_FILE), errors="replace") as f:
            lines = f.read().splitlines()[-400:]
    except OSError:
        lines = []
    errors = [line for line in lines if line.startswith(ERROR_PREFIX)]
    if errors:
        return errors[-1][len(ERROR_PREFIX):]
    tail = [line for line in lines if line.strip() and not line.startswith("=== ")]
    return f"exit status {returncode}: {tail[-1].strip()[:300] if tail else 'no output'}"


def run_job(job: Job, env: dict | None = None) -> Outcome:
    start = time.monotonic()
    proc = start_process(job, env)
    returncode = proc.wait()
    seconds = time.monotonic() - start
    if returncode == 0:
        return Outcome(job, "finished", seconds)
    reason = failure_reason(job, returncode)
    close_failed_run(job, reason)
    return Outcome(job, "failed", seconds, reason)


def close_failed_run(job: Job, reason: str) -> None:
    """Marks the job's run FAILED with the reason when the process died before ending it itself
    (e.g. a config rejected before run.py reopened the run)."""
    from mlflow import MlflowClient

    from ankh3.tracking import Tracker

    run_id = Tracker(job.uri, job.experiment, job.run_name, job.workdir, tags=job.tags).run_id
    if run_id is None:
        return
    try:
        client = MlflowClient(tracking_uri=job.uri)
        client.set_tag(run_id, "fail_reason", reason[:5000])
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, "FAILED")
    except Exception as e:  # noqa: BLE001 -- the failure itself is already reported
        print(f"could not mark run {run_id} failed: {type(e).__name__}", file=sys.stderr, flush=True)


class Progress:
    """`[N/M] ... ETA` lines: M things to do, the ETA from the mean time per thing done so far."""

    def __init__(self, total: int, out=sys.stdout):
        self.total, self.done, self.out, self.start = total, 0, out, time.monotonic()

    def step(self, what: str) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.start
        left = elapsed / self.done * (self.total - self.done)
        eta = f", ETA {format_duration(left)}" if self.done < self.total else ""
        print(f"[{self.done}/{self.total}] {what} ({format_duration(elapsed)} so far{eta})", file=self.out, flush=True)


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def run_grid(jobs: list[Job], parallel: int = 1, out=sys.stdout, env: dict | None = None) -> list[Outcome]:
    """Skips finished jobs, then runs the rest, `parallel` processes at a time (with `env` added)."""
    from mlflow import MlflowClient

    outcomes, todo = [], []
    for job in jobs:
        finished = find_finished(MlflowClient(tracking_uri=job.uri), job)
        if finished:
            outcomes.append(Outcome(job, "skipped", run_id=finished))
            print(f"skip  {job.family} {job.variant} seed {job.seed}: finished run {finished}", file=out, flush=True)
        else:
            todo.append(job)
    for job in todo:
        job_run = open_run(job)
        print(f"start {job.family} {job.variant} seed {job.seed} -> {job.workdir} (run {job_run})", file=out, flush=True)
    progress = Progress(len(todo), out)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        for outcome in pool.map(lambda j: run_job(j, env), todo):
            outcomes.append(outcome)
            job = outcome.job
            if outcome.status == "finished":
                progress.step(f"done  {job.family} {job.variant} seed {job.seed} in {outcome.seconds:.0f} s")
            else:
                progress.step(f"FAIL  {job.family} {job.variant} seed {job.seed}: {outcome.reason} "
                              f"(log: {os.path.join(job.workdir, LOG_FILE)})")
    return outcomes


def dry_run_report(jobs: list[Job]) -> str:
    """One line per job: whether it would run or be skipped (finished in MLflow), its hash and workdir."""
    from mlflow import MlflowClient

    lines = []
    for job in jobs:
        done = find_finished(MlflowClient(tracking_uri=job.uri), job)
        lines.append(f"{'skip' if done else 'run '}  {job.variant} seed {job.seed} hash {job.config_hash} {job.workdir}")
    return "\n".join(lines)


def summarize(outcomes: list[Outcome]) -> str:
    counts = {s: sum(o.status == s for o in outcomes) for s in ("finished", "skipped", "failed")}
    return (f"grid: {counts['finished']} finished, {counts['skipped']} skipped (finished before), "
            f"{counts['failed']} failed")


# ---- command line -----------------------------------------------------------------------------------
def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(argv for absl, --config.KEY=VALUE overrides passed through to every run)."""
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    bad = [a for a in overrides if "=" not in a]
    if bad:
        raise GridError(f"override {bad[0]!r} has no value; write --config.KEY=VALUE")
    return [argv[0], *[a for a in argv[1:] if not a.startswith("--config.")]], overrides


def parse_command_line(flags, argv, error: type[Exception], script: str, doc: str = ""):
    """(parsed absl FLAGS, --config.* overrides) from argv; a usage mistake raises `error` (one line).
    --help (-h, --helpfull) prints `doc` and the flags, then exits 0."""
    if any(a in ("--help", "-h", "--helpfull", "-?") for a in argv[1:]):
        print(doc.strip() + "\n\nflags:\n" + flags.FLAGS.module_help(sys.modules["__main__"]), flush=True)
        sys.exit(0)
    argv, overrides = split_overrides(argv)
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        raise error(f"{e}; see python launch/{script} --helpfull") from None
    if len(rest) > 1:
        raise error(f"unexpected arguments {' '.join(rest[1:])}")
    return flags.FLAGS, overrides
