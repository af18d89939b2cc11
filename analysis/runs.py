"""Reading a family's runs from MLflow: finished top-level runs, their children's probe metrics flattened in.

Used by analysis/aggregate.py; names of tags and child runs come from ankh3/names.py (the runner writes them).
"""
from __future__ import annotations

import dataclasses
import os

from ankh3.names import REPO_ROOT, TAG_CONFIG_HASH, TAG_FAMILY, TAG_SEED, TAG_VARIANT

PARENT_TAG = "mlflow.parentRunId"


class AnalysisError(ValueError):
    """Nothing to analyse, or bad analysis input; the message says what and how to fix it."""



# ---- reading MLflow ---------------------------------------------------------------------------------
@dataclasses.dataclass
class RunRecord:
    """One top-level run: its identity and its final metrics, downstream children flattened in."""

    run_id: str
    variant: str
    seed: int
    start_time: int
    config_hash: str
    metrics: dict[str, float]
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    params: dict[str, str] = dataclasses.field(default_factory=dict)


def connect(uri: str | None):
    from mlflow import MlflowClient

    from ankh3.tracking import default_uri

    return MlflowClient(tracking_uri=uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri(REPO_ROOT))


def get_experiment(client, name: str):
    try:
        found = client.get_experiment_by_name(name)
    except Exception as e:  # noqa: BLE001 -- an unreachable server or a broken store
        raise AnalysisError(f"cannot read the MLflow store {client.tracking_uri}: {type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200] if str(e) else ''}; check --tracking_uri") from None
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise AnalysisError(f"no MLflow experiment {name!r} in {client.tracking_uri}; it has: "
                            f"{', '.join(names) or 'none'} (pass --experiment=FAMILY or --tracking_uri)")
    return found


def all_runs(client, experiment_id: str, filter_string: str = "") -> list:
    """Every run of the experiment matching the filter (all pages)."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def child_metrics(child) -> dict[str, float]:
    """A downstream child run 'TASK/SOURCE' with metrics 'SPLIT/NAME' -> {'TASK/SOURCE/SPLIT/NAME': v}."""
    name = child.info.run_name or ""
    return {f"{name}/{key}": value for key, value in child.data.metrics.items()}


def read_family(client, family: str, experiment: str | None = None) -> list[RunRecord]:
    """FINISHED top-level runs tagged with the family, each with its children's metrics flattened in."""
    exp = get_experiment(client, experiment or family)
    runs = all_runs(client, exp.experiment_id)
    children: dict[str, list] = {}
    for run in runs:
        parent = run.data.tags.get(PARENT_TAG)
        if parent:
            children.setdefault(parent, []).append(run)
    records = []
    for run in runs:
        tags = run.data.tags
        if tags.get(PARENT_TAG) or tags.get(TAG_FAMILY) != family or run.info.status != "FINISHED":
            continue
        probes = {}
        for child in children.get(run.info.run_id, []):
            probes.update(child_metrics(child))
        # run.py also copies each probe's test means onto the parent as 'downstream/KEY' (for the MLflow
        # UI's run comparison); count each figure once, under the child's name.
        metrics = {k: v for k, v in run.data.metrics.items()
                   if not (k.startswith("downstream/") and k[len("downstream/"):] in probes)}
        metrics.update(probes)
        records.append(RunRecord(run.info.run_id, tags.get(TAG_VARIANT, "?"), int(tags.get(TAG_SEED, 0)),
                                 run.info.start_time or 0, tags.get(TAG_CONFIG_HASH, ""), metrics, dict(tags),
                                 dict(run.data.params)))
    if not records:
        raise AnalysisError(f"no FINISHED runs tagged family={family!r} in experiment {exp.name!r} of "
                            f"{client.tracking_uri}; run python launch/grid.py --config=experiments/{family}.py first")
    return records


def latest_per_seed(records: list[RunRecord]) -> tuple[list[RunRecord], list[str]]:
    """One run per (variant, seed): the latest; notes say where older runs were set aside."""
    chosen: dict[tuple[str, int], RunRecord] = {}
    notes = []
    for record in sorted(records, key=lambda r: r.start_time):
        key = (record.variant, record.seed)
        if key in chosen:
            notes.append(f"{record.variant} seed {record.seed}: run {chosen[key].run_id[:8]} replaced by the later "
                         f"run {record.run_id[:8]}")
        chosen[key] = record
    return list(chosen.values()), notes

