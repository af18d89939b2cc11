"""MLflow tracking that never stops training: buffered metrics, child runs, and an offline journal.

Everything a run records (params, metrics, artifacts, child runs, the end) is an event. Events are
sent in batches (`log_batch`: one call per metric would cost more than a CPU training step); when
the store cannot be reached they are appended to `WORKDIR/metrics.jsonl` and replayed, in order,
once the store answers again or when `sync_workdir` is run.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import subprocess
import time
from typing import Any, Iterable, Mapping

from ankh3.errors import UserError
from ankh3.names import JOURNAL, TRACKING_FILE as RUN_FILE

MAX_PARAMS_PER_CALL = 100  # MLflow's limit for params (and tags) per log_batch
MAX_METRICS_PER_CALL = 1000
MAX_PARAM_LENGTH = 6000
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")
# what MLflow can track to: a server, a database (SQLAlchemy dialect, optionally +driver), a folder
URI_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks")

log = logging.getLogger(__name__)


class TrackingError(UserError, RuntimeError):
    """The tracking store refused a request for a reason that retrying cannot fix."""


# ----------------------------------------------------------------------------- helpers

def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> {'a.b.c': leaf}; an empty mapping stays visible as '{}'."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = {} if isinstance(value, Mapping) else value
    return flat


def param_values(flat: Mapping[str, Any]) -> dict[str, str]:
    """Leaves as MLflow param strings, cut to MLflow's value length limit."""
    return {clean_key(k): _param_text(v)[:MAX_PARAM_LENGTH] for k, v in flat.items()}


def _param_text(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return json.dumps(list(value))
    return str(value)


def clean_key(name: str) -> str:
    """A metric/param name MLflow accepts: other characters become '_'."""
    return _BAD_KEY_CHARS.sub("_", name)


def artifact_location(uri: str, experiment: str) -> str | None:
    """For a SQLite store, `mlruns/EXPERIMENT` beside the database file; a server picks its own."""
    if not uri.startswith("sqlite:///"):
        return None
    db_path = os.path.abspath(uri[len("sqlite:///"):])
    folder = os.path.join(os.path.dirname(db_path), "mlruns", clean_key(experiment).replace("/", "_"))
    return "file://" + folder


def check_uri(uri: str) -> str:
    """The tracking URI, or a TrackingError when MLflow could not use it (MLflow itself would drop every event)."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if "://" in uri and scheme not in URI_SCHEMES:
        raise TrackingError(f"tracking URI {uri}: unknown scheme {scheme!r}; give http://HOST:PORT (a tracking "
                            "server, e.g. from launch/services.sh up), sqlite:///PATH or postgresql://...")
    return uri


def default_uri(root: str) -> str:
    return "sqlite:///" + os.path.join(os.path.abspath(root), "mlflow.db")


def ui_command(uri: str) -> str:
    """The shell command that opens the MLflow UI on this store."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return f"mlflow ui --backend-store-uri {uri}"


def git_state(repo_dir: str) -> tuple[str, bool]:
    """(commit, dirty) of the checkout at repo_dir; ('unknown', False) outside git."""
    def git(*args):
        return subprocess.run(("git", "-C", repo_dir, *args), capture_output=True, text=True, timeout=20)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return "unknown", False
        status = git("status", "--porcelain", "--untracked-files=no")
        return head.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


def hostname() -> str:
    return socket.gethostname()


# ----------------------------------------------------------------------------- the tracker

def experiment_id(client, name: str) -> str:
    """The id of experiment `name`, created on first use (artifacts where `artifact_location` puts them
    for the client's store). Safe when several processes (sweep workers, grid jobs) create it at once:
    the losers of the race read the winner's id."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(client.tracking_uri, name))
    except Exception:  # noqa: BLE001 -- RESOURCE_ALREADY_EXISTS from a REST store, IntegrityError from a file/SQL one
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


class Tracker:
    """One MLflow run (the pretraining or evaluation run) with buffered, journaled events.

    The run id is kept in `WORKDIR/tracking.json`, so re-running the same command resumes the
    same MLflow run. `uri=None` disables the store (everything stays in the journal).
    """

    def __init__(self, uri: str | None, experiment: str, run_name: str, workdir: str, *,
                 tags: Mapping[str, str] | None = None, flush_every_s: float = 10.0,
                 retry_every_s: float = 30.0):
        if uri is not None:
            check_uri(uri)  # before anything is written
        self.uri, self.experiment, self.run_name, self.workdir = uri, experiment, run_name, workdir
        self.tags = {k: str(v) for k, v in (tags or {}).items()}
        self.flush_every_s, self.retry_every_s = flush_every_s, retry_every_s
        self._retry_wait = retry_every_s  # doubles while the store stays down (each try can block seconds)
        self._client = None
        self._run_id: str | None = None
        self._ask_store = False  # the store may hold some of our rows (a resumed run, a failed send)
        self._stored_through: dict[str, int] | None = None  # per metric, the last step the store holds
        self._pending: list[dict] = []
        self._last_flush = time.monotonic()
        self._next_retry = 0.0
        self.offline = False
        os.makedirs(workdir, exist_ok=True)
        self._record_run_info()

    # ---- public API -------------------------------------------------------------
    @property
    def run_id(self) -> str | None:
        return self._run_id or self._saved_run_id()

    def start(self) -> "Tracker":
        """Opens (or reopens) the run; offline if the store cannot be reached."""
        self._pending.append({"kind": "start"})
        self.flush(force=True)
        return self

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._pending.append({"kind": "params", "params": param_values(params)})

    def log_metrics(self, step: int, metrics: Mapping[str, float], timestamp_ms: int | None = None) -> None:
        """Buffers metrics; they go out with the next flush (at most every flush_every_s)."""
        values = {clean_key(k): float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        if values:
            ts = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
            self._pending.append({"kind": "metrics", "step": int(step), "ts": ts, "values": values})
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Tags set on the run with the next flush (e.g. a health warning to see in the runs table)."""
        self._pending.append({"kind": "tags", "tags": {k: str(v)[:MAX_PARAM_LENGTH] for k, v in tags.items()}})

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        self._pending.append({"kind": "artifact", "path": os.path.abspath(path), "dir": artifact_path})

    def log_child(self, name: str, *, params: Mapping[str, Any] | None = None,
                  metrics: Mapping[str, float] | None = None, tags: Mapping[str, str] | None = None,
                  artifacts: Iterable[str] = ()) -> None:
        """A nested child run (e.g. one downstream task) under this run."""
        self._pending.append({
            "kind": "child", "name": name,
            "params": param_values(params or {}),
            "metrics": {clean_key(k): float(v) for k, v in (metrics or {}).items()
                        if v is not None and math.isfinite(float(v))},
            "tags": {k: str(v) for k, v in (tags or {}).items()},
            "artifacts": [os.path.abspath(p) for p in artifacts],
        })

    def end(self, status: str = "FINISHED") -> bool:
        """Marks the run ended and sends everything; True when nothing is left in the journal."""
        self._pending.append({"kind": "end", "status": status})
        self.flush(force=True)
        return not self.offline and not os.path.exists(self._journal_path())

    def flush(self, force: bool = False) -> None:
        """Sends journaled then buffered events, in order; journals what the store did not take."""
        self._last_flush = time.monotonic()
        journal = self._journal_path()
        if not self._pending and not (force and os.path.exists(journal)):
            return
        if self.uri is None or (self.offline and not force and time.monotonic() < self._next_retry):
            self._journal(self._pending)
            self._pending = []
            return
        events = (read_journal(journal) if os.path.exists(journal) else []) + self._pending
        self._pending = []
        sent, error = self._send_all(events)
        if error is None:
            if os.path.exists(journal):
                os.remove(journal)
            if self.offline:
                log.warning("MLflow store %s is back; the journal has been sent", self.uri)
            self.offline = False
            self._retry_wait = self.retry_every_s
            return
        if not self.offline:
            log.warning("MLflow store %s unreachable (%s); metrics go to %s until it is back",
                        self.uri, error, journal)
        self.offline = True
        self._next_retry = time.monotonic() + self._retry_wait
        self._retry_wait = min(2 * self._retry_wait, 600.0)
        _write_journal(journal, events[sent:])

    # ---- sending ----------------------------------------------------------------
    def _send_all(self, events: list[dict]) -> tuple[int, str | None]:
        """Sends events in order; (number handled, None) or (number sent before failing, why)."""
        done = 0
        for group in _group_metrics(events):
            size = len(group) if isinstance(group, list) else 1
            try:
                self._send(group)
            except Exception as e:  # noqa: BLE001 -- no store failure may stop training
                if not _is_permanent(e):
                    first_line = str(e).splitlines()[0][:200] if str(e) else ""
                    return done, f"{type(e).__name__}: {first_line}"
                log.warning("MLflow refused %s; dropped: %s", _describe(group), str(e)[:300])
            done += size
        return done, None

    def _send(self, group) -> None:
        client = self._connect()
        if isinstance(group, list):  # consecutive metric events
            self._send_metrics(client, self._ensure_run(client), group)
            return
        kind = group["kind"]
        if kind == "start":
            self._ensure_run(client, reopen=True)
        elif kind == "params":
            self._send_params(client, self._ensure_run(client), group["params"])
        elif kind == "tags":
            self._send_tags(client, self._ensure_run(client), group["tags"])
        elif kind == "artifact":
            if os.path.exists(group["path"]):
                client.log_artifact(self._ensure_run(client), group["path"], group["dir"])
        elif kind == "child":
            self._send_child(client, self._ensure_run(client), group)
        elif kind == "end":
            client.set_terminated(self._ensure_run(client), status=group["status"])

    def _connect(self):
        if self._client is None:
            from mlflow import MlflowClient  # heavy import; only when a store is used

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _ensure_run(self, client, reopen: bool = False) -> str:
        if self._run_id is None:
            saved = self._saved_run_id()
            if saved is not None:
                self._run_id = saved
                self._ask_store = True
                reopen = True
            else:
                experiment = experiment_id(client, self.experiment)
                tags = dict(self.tags)
                run = client.create_run(experiment, run_name=self.run_name, tags=tags)
                self._run_id = run.info.run_id
                self._save_run_id()
                return self._run_id
        if reopen:
            client.update_run(self._run_id, status="RUNNING")
            if self.tags:
                self._send_tags(client, self._run_id, self.tags)
        return self._run_id

    def _send_metrics(self, client, run_id: str, events: list[dict]) -> None:
        """Sends each (metric, step) the store does not hold yet, so that it holds every row exactly once.

        A resumed run logs again the steps after its checkpoint; some of them (and journaled rows sent
        before a crash) may already be stored. Rows are sent in step order, so per metric the store holds
        a prefix of the steps: a row at or below the last stored step of its metric is a repeat.
        """
        from mlflow.entities import Metric

        if self._stored_through is None:
            self._stored_through = stored_steps(client, run_id) if self._ask_store else {}
        through = self._stored_through
        metrics = []
        for event in events:
            for key, value in event["values"].items():
                if event["step"] > through.get(key, -1):
                    metrics.append(Metric(key, value, event["ts"], event["step"]))
                    through[key] = event["step"]
        try:
            for i in range(0, len(metrics), MAX_METRICS_PER_CALL):
                client.log_batch(run_id, metrics=metrics[i:i + MAX_METRICS_PER_CALL])
        except Exception:
            self._stored_through, self._ask_store = None, True  # how much went in? ask before the next send
            raise

    @staticmethod
    def _send_params(client, run_id: str, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS_PER_CALL):
            client.log_batch(run_id, params=items[i:i + MAX_PARAMS_PER_CALL])

    @staticmethod
    def _send_tags(client, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, v) for k, v in tags.items()]
        for i in range(0, len(items), MAX_PARAMS_PER_CALL):
            client.log_batch(run_id, tags=items[i:i + MAX_PARAMS_PER_CALL])

    def _send_child(self, client, parent_id: str, event: dict) -> None:
        from mlflow.entities import Metric

        parent = client.get_run(parent_id)
        tags = {**self.tags, **event["tags"], "mlflow.parentRunId": parent_id}
        child = client.create_run(parent.info.experiment_id, run_name=event["name"], tags=tags)
        child_id = child.info.run_id
        self._send_params(client, child_id, event["params"])
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in event["metrics"].items()]
        for i in range(0, len(metrics), MAX_METRICS_PER_CALL):
            client.log_batch(child_id, metrics=metrics[i:i + MAX_METRICS_PER_CALL])
        for path in event["artifacts"]:
            if os.path.isdir(path):
                client.log_artifacts(child_id, path, os.path.basename(path))
            elif os.path.exists(path):
                client.log_artifact(child_id, path)
        client.set_terminated(child_id, status="FINISHED")

    # ---- local files ------------------------------------------------------------
    def _journal_path(self) -> str:
        return os.path.join(self.workdir, JOURNAL)

    def _journal(self, events: list[dict]) -> None:
        if not events:
            return
        with open(self._journal_path(), "a") as f:
            for event in events:
                f.write(json.dumps(event) + "\n")

    def _run_file(self) -> str:
        return os.path.join(self.workdir, RUN_FILE)

    def _read_run_info(self) -> dict:
        try:
            with open(self._run_file()) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def _saved_run_id(self) -> str | None:
        saved = self._read_run_info()
        return saved.get("run_id") if saved.get("uri") == self.uri else None

    def _record_run_info(self) -> None:
        """Writes what `sync_workdir` needs to create or find the run later, keeping a known run id."""
        info = {"uri": self.uri, "run_id": self._run_id or self._saved_run_id(), "experiment": self.experiment,
                "run_name": self.run_name, "tags": self.tags}
        tmp = self._run_file() + ".tmp"
        with open(tmp, "w") as f:
            json.dump(info, f, indent=1)
        os.replace(tmp, self._run_file())

    def _save_run_id(self) -> None:
        self._record_run_info()


def stored_steps(client, run_id: str) -> dict[str, int]:
    """{metric: last step the store holds} of a run."""
    keys = client.get_run(run_id).data.metrics
    return {key: max(m.step for m in client.get_metric_history(run_id, key)) for key in keys}


def _group_metrics(events: list[dict]):
    """Consecutive metric events become one list (one log_batch); other events stay single."""
    run: list[dict] = []
    for event in events:
        if event["kind"] == "metrics":
            run.append(event)
            continue
        if run:
            yield run
            run = []
        yield event
    if run:
        yield run


def _is_permanent(error: Exception) -> bool:
    """An MLflow request error (bad value, conflicting param) rather than an unreachable store."""
    code = getattr(error, "error_code", None)
    return code in ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST", "RESOURCE_DOES_NOT_EXIST")


def _describe(group) -> str:
    return "metrics" if isinstance(group, list) else group["kind"]


def read_journal(path: str) -> list[dict]:
    events = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    events.append(json.loads(line))
                except ValueError:
                    log.warning("skipping a corrupt line in %s", path)  # e.g. cut by a crash mid-write
    return events


def _write_journal(path: str, events: list[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for event in events:
            f.write(json.dumps(event) + "\n")
    os.replace(tmp, path)


def sync_workdir(workdir: str, uri: str | None = None, fallback_uri: str | None = None) -> int:
    """Sends a workdir's journaled events to the store; returns how many remain unsent (0 = done).

    The store is the one the run was started with (recorded in tracking.json), whatever the environment
    says; `uri` sends elsewhere (explicitly: the run is then created there and recorded as being there);
    `fallback_uri` serves only a run that recorded no store.
    """
    try:
        with open(os.path.join(workdir, RUN_FILE)) as f:
            info = json.load(f)
    except (OSError, ValueError):
        raise TrackingError(f"{workdir}: no readable {RUN_FILE}; pass the workdir of a run "
                            "(runs/EXPERIMENT/RUN_NAME)") from None
    journal = os.path.join(workdir, JOURNAL)
    if not os.path.exists(journal):
        return 0
    target = uri or info.get("uri") or fallback_uri
    if not target:
        raise TrackingError(f"{workdir}: the run had no tracking store; set MLFLOW_TRACKING_URI to sync it")
    tracker = Tracker(target, info["experiment"], info["run_name"], workdir, tags=info.get("tags"))
    tracker.flush(force=True)
    return len(read_journal(journal)) if os.path.exists(journal) else 0


def write_loss_plots(curves: Mapping[str, Mapping[str, list[tuple[int, float]]]], out_dir: str) -> list[str]:
    """One PNG per objective: {objective: {'train': [(step, loss)], 'eval': [...]}} -> file paths.

    A series named 'unigram ...' is drawn as a horizontal line at its last value (a floor, not a curve)."""
    from ankh3.figures import new_figure, save_figure

    paths = []
    for objective, series in curves.items():
        fig = new_figure(6, 4)
        ax = fig.subplots()
        for split, points in series.items():
            if points and split.startswith("unigram"):
                ax.axhline(points[-1][1], color="grey", linestyle="--", label=f"{split} {points[-1][1]:.3f}")
            elif points:
                steps, values = zip(*points)
                ax.plot(steps, values, label=split, marker="." if len(points) < 30 else None)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title(f"loss: {objective}")
        ax.grid(alpha=0.3)
        ax.legend()
        paths.append(save_figure(fig, os.path.join(out_dir, f"loss_{clean_key(objective).replace('/', '_')}.png")))
    return paths
