"""A workdir is usable and holds one run: checked before anything is written or tracked.

`check_usable` (also run by --dry_run) refuses a workdir that cannot be created or written, or whose
files are of the wrong kind; `check_same_config` refuses to continue a workdir with another config,
which would otherwise resume the old run while recording values it did not train with.
"""
from __future__ import annotations

import json
import os

from ankh3 import names
from ankh3.config import ConfigError

_DIRECTORIES = (names.CHECKPOINTS, names.PLOTS, names.DOWNSTREAM)
_FILES = (names.CONFIG_FILE, names.HISTORY, names.TRACKING_FILE, names.JOURNAL, names.PRETRAIN_SUMMARY,
          names.SUMMARY)
_SYSTEM_ROOTS = ("/sys", "/proc", "/dev")  # kernel file systems: writable-looking to root, unusable for runs
# What may change between the runs of one workdir: where results go and how the frozen encoder is probed.
_FREE_SECTIONS = ("downstream.", "tracking.")


def check_usable(workdir: str) -> None:
    """ConfigError unless `workdir` exists as a writable directory (or can be made one) whose
    known entries (checkpoints/, config.json, ...) are of the right kind. Creates nothing."""
    path = os.path.abspath(workdir)
    fix = "pass another --workdir"
    system = next((root for root in _SYSTEM_ROOTS if path == root or path.startswith(root + "/")), None)
    if system is not None:
        raise ConfigError(f"--workdir {path} lies under {system}, a system file system; {fix}")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "is" if existing == path else f"lies inside {existing}, which is"
        raise ConfigError(f"--workdir {path} {where} a file, not a directory; {fix}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--workdir {path}: {existing} is not writable; fix its permissions or {fix}")
    if existing != path:
        return
    for name in _DIRECTORIES:
        entry = os.path.join(path, name)
        if os.path.exists(entry) and not os.path.isdir(entry):
            raise ConfigError(f"{entry} is a file where the run keeps its {name} directory; move it away or {fix}")
    for name in _FILES:
        entry = os.path.join(path, name)
        if os.path.isdir(entry):
            raise ConfigError(f"{entry} is a directory where the run writes its {name} file; move it away or {fix}")


def recorded_config(workdir: str) -> dict | None:
    """The flattened config a workdir's run recorded (config.json), or None when it has none."""
    from ankh3.tracking import flatten

    path = os.path.join(workdir, names.CONFIG_FILE)
    try:
        with open(path) as f:
            return flatten(json.load(f))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} cannot be read ({e}); restore it from the run's MLflow artifacts or pass another "
                          "--workdir") from None


def differing_keys(recorded: dict, current: dict) -> list[str]:
    """Keys whose values differ, except those free to change: downstream, tracking, a longer train.steps
    (and the token budget that follows from it)."""
    keys = sorted(set(recorded) | set(current))
    changed = []
    for key in keys:
        before, after = recorded.get(key, "<unset>"), current.get(key, "<unset>")
        if before == after or key.startswith(_FREE_SECTIONS) or key == "budget.total_tokens":
            continue
        if key == "train.steps" and isinstance(before, int) and isinstance(after, int) and after >= before:
            continue
        changed.append(key)
    return changed


def check_same_config(workdir: str, config) -> None:
    """ConfigError listing the changed keys when `workdir` holds a run with another config."""
    from ankh3.tracking import flatten

    recorded = recorded_config(workdir)
    if recorded is None:
        return
    current = flatten(json.loads(config.to_json_best_effort()))
    changed = differing_keys(recorded, current)
    if changed:
        shown = ", ".join(f"{k} ({_short(recorded.get(k, '<unset>'))} -> {_short(current.get(k, '<unset>'))})"
                          for k in changed[:6])
        more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
        raise ConfigError(f"--workdir {workdir} holds a run with another config: {shown}{more}; rerun with its values "
                          "to resume it, or pass a new --workdir to start a fresh run")


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."
