"""The names that cross process and tool boundaries: runs, workdir files, tags, child runs.

The runner writes them, grid, sweep and analysis read them; defining them once here is what keeps
those tools from drifting apart (a renamed file or tag breaks them all the same way, in tests).
"""
from __future__ import annotations

import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---- a run's workdir --------------------------------------------------------------------------------
CONFIG_FILE = "config.json"              # the resolved config the run trained with
CHECKPOINTS = "checkpoints"              # orbax steps (parameters, optimizer, every host's data state)
HISTORY = "history.jsonl"                # one line of metrics per log step, appended by the training loop
TRACKING_FILE = "tracking.json"          # tracking URI, experiment, run name and MLflow run id
JOURNAL = "metrics.jsonl"                # tracking events not yet accepted by the store
PRETRAIN_SUMMARY = "pretrain_summary.json"
SUMMARY = "summary.json"                 # pretraining metrics and every probe's metrics
PLOTS = "plots"
DOWNSTREAM = "downstream"                # probes: embeddings cache, per-task outputs, its own tracking files
LAUNCH_LOG = "launch.log"                # stdout+stderr of a run started by grid or sweep

# ---- tags every run carries (analysis groups by them) -----------------------------------------------
TAG_FAMILY, TAG_VARIANT, TAG_SEED, TAG_MODE = "family", "variant", "seed", "mode"
TAG_TASK, TAG_SOURCE = "task", "source"  # on a probe's child run
TAG_CONFIG_HASH = "config_hash"


def run_name(variant: str, seed: int) -> str:
    """The MLflow run name of one (variant, seed); the run directory's default name too."""
    return f"{variant}-s{seed}"


def downstream_run_name(variant: str, seed: int) -> str:
    """The run of `--mode=downstream` on an existing workdir (kept apart from its pretraining run)."""
    return run_name(variant, seed) + "-downstream"


def child_run_name(task: str, source: str) -> str:
    """A probe's child run: TASK/SOURCE, where SOURCE is model, random or onehot."""
    return f"{task}/{source}"


def split_child_run_name(name: str) -> tuple[str, str] | None:
    """(task, source) of a child run name, None for any other run name."""
    task, sep, source = name.rpartition("/")
    return (task, source) if sep and task and source else None


def summary_experiment_name(experiment: str) -> str:
    """Where analysis/aggregate.py logs the summary runs of an experiment's runs (kept apart from them)."""
    return f"{experiment}/summaries"


def default_workdir(experiment: str, variant: str, seed: int) -> str:
    return os.path.join(REPO_ROOT, "runs", experiment.replace("/", "_"), run_name(variant, seed))


def workdir_file(workdir: str, name: str) -> str:
    return os.path.join(workdir, name)
