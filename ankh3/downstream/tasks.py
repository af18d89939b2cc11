"""Downstream tasks: what each one predicts and is scored by, the bundled real tasks, and loading.

    data = load_task("ssp3")                                   # bundled, data/downstream/
    data = load_task("ssp3", max_per_split=50)                 # first 50 of each split
    data = load_task("cb513", format="netsurfp", states=8,
                     path={"train": "Train_HHblits.csv", "test": "CB513_HHblits.csv"})
    data = load_task("fluorescence", format="tape", path="fluorescence/")   # *_train.json, *_valid.json ...

Labels (`Example.label`): residue classification -> int8 [L] class indices, -1 = not scored;
contact -> float32 [L, 3] CB coordinates, NaN rows for unresolved residues (`contact_map` turns them
into the int8 [L, L] target); regression -> float.
"""
from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Mapping

import numpy as np

from ankh3.downstream.readers import (SPLITS, SSP3, SSP8, Example, TaskDataError, encode_labels,
                                      read_flip_csv, read_labeled_fasta, read_netsurfp_csv,
                                      read_split_csv, read_tape)

__all__ = ["KINDS", "TaskSpec", "TaskData", "Example", "TaskDataError", "load_task", "task_spec",
           "contact_map", "BUNDLED_TASKS", "BUNDLE_DIR", "CONTACT_THRESHOLD"]

KINDS = ("residue_classification", "contact", "regression")
BUNDLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "data", "downstream")
CONTACT_THRESHOLD = 8.0  # Å between CB atoms
CONTACT_METRICS = tuple(f"p_{k}_{r}" for r in ("long", "medium", "short") for k in ("l", "l2", "l5"))
# Bundled task -> (bundle file, task kind, states); every other name needs `format`.
BUNDLED_TASKS = {
    "ssp3": ("structures.npz", "residue_classification", 3),
    "ssp8": ("structures.npz", "residue_classification", 8),
    "contact": ("structures.npz", "contact", 0),
    "gb1": ("gb1.csv", "regression", 0),
}
FORMATS = ("netsurfp", "fasta", "tape", "flip", "csv")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What a task predicts and how it is judged; `primary_metric` picks the model in comparisons."""

    name: str
    kind: str
    metrics: tuple[str, ...]
    primary_metric: str
    higher_is_better: bool = True
    num_classes: int = 0  # residue_classification only
    classes: str = ""     # letter of each class index (residue_classification only)


@dataclasses.dataclass
class TaskData:
    spec: TaskSpec
    splits: dict[str, list[Example]]

    def counts(self) -> dict[str, int]:
        return {name: len(examples) for name, examples in self.splits.items()}


def task_spec(name: str, kind: str, states: int = 0) -> TaskSpec:
    """The spec of a task of `kind`; `states` (3 or 8) for secondary structure."""
    if kind == "residue_classification":
        if states not in (3, 8):
            raise TaskDataError(f"task {name!r}: states must be 3 or 8, got {states!r}")
        metric = f"q{states}"
        return TaskSpec(name, kind, (metric,), metric, True, states, SSP3 if states == 3 else SSP8)
    if kind == "contact":
        return TaskSpec(name, kind, CONTACT_METRICS, "p_l5_long", True)
    if kind == "regression":
        return TaskSpec(name, kind, ("spearman", "pearson", "mse"), "spearman", True)
    raise TaskDataError(f"task {name!r}: unknown kind {kind!r}; use one of {', '.join(KINDS)}")


def contact_map(coords: np.ndarray, threshold: float = CONTACT_THRESHOLD) -> np.ndarray:
    """int8 [L, L]: 1 where CB atoms are closer than `threshold` Å, 0 if not, -1 if either is unresolved."""
    coords = np.asarray(coords, np.float32)
    dist = np.sqrt(((coords[:, None, :] - coords[None, :, :]) ** 2).sum(-1))
    out = (dist < threshold).astype(np.int8)
    resolved = ~np.isnan(coords).any(-1)
    out[~(resolved[:, None] & resolved[None, :])] = -1
    return out


# ---- loading --------------------------------------------------------------------------------------
def load_task(name: str, path=None, format: str | None = None, *, states: int = 3,
              target: str = "log_fluorescence", use_cb513_mask: bool = False,
              max_per_split: int | None = None, valid_fraction: float = 0.1, seed: int = 0) -> TaskData:
    """Load a bundled task by name, or any task from user files when `format` is given.

    `path`: for bundled tasks an alternative bundle file (as written by data/build_downstream.py);
    for `netsurfp`, `fasta` and `tape` a mapping split -> file or a folder holding `*_train.*`,
    `*_valid.*`, `*_test.*`; for `flip` and `csv` one file carrying the split. `states` picks 3- or
    8-state labels, `target` the TAPE record key. A missing validation split is carved from train:
    a seeded `valid_fraction` of it. `max_per_split` keeps the first examples of each split.
    """
    if format is None:
        if name not in BUNDLED_TASKS:
            raise TaskDataError(f"unknown task {name!r}: bundled tasks are {', '.join(BUNDLED_TASKS)}; "
                                f"for your own files give format= one of {', '.join(FORMATS)}")
        spec, splits = load_bundled(name, path)
    else:
        spec, splits = load_user_task(name, path, format, states, target, use_cb513_mask)
        splits = carve_validation(splits, valid_fraction, seed, where=describe(path))
    check_splits(splits, name, describe(path) if path is not None else BUNDLE_DIR)
    if max_per_split is not None:
        splits = {k: v[:max_per_split] for k, v in splits.items()}
    return TaskData(spec, splits)


def load_bundled(name: str, path) -> tuple[TaskSpec, dict[str, list[Example]]]:
    filename, kind, states = BUNDLED_TASKS[name]
    path = path or os.path.join(BUNDLE_DIR, filename)
    spec = task_spec(name, kind, states)
    if filename == "gb1.csv":
        return spec, read_split_csv(path)
    return spec, read_structures(path, kind, states)


def read_structures(path: str, kind: str, states: int) -> dict[str, list[Example]]:
    """Chains of a structures bundle as secondary-structure or contact examples, by split."""
    if not os.path.exists(path):
        raise TaskDataError(f"{path}: file not found; rebuild it with data/build_downstream.py")
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in ("names", "seqs", "dssp8", "offsets", "cb", "split")}
    splits: dict[str, list[Example]] = {name: [] for name in SPLITS}
    offsets = arrays["offsets"]
    for i, name in enumerate(arrays["names"]):
        seq = str(arrays["seqs"][i])
        if kind == "contact":
            label = arrays["cb"][offsets[i]:offsets[i + 1]].astype(np.float32)
        else:
            label = encode_labels(str(arrays["dssp8"][i]), states, f"{path}: chain {name}")
        if len(label) != len(seq):
            raise TaskDataError(f"{path}: chain {name} has {len(label)} labels for {len(seq)} residues")
        splits[str(arrays["split"][i])].append(Example(str(name), seq, label))
    return splits


def load_user_task(name, path, format, states, target, use_cb513_mask):
    if path is None:
        raise TaskDataError(f"task {name!r}: format={format!r} needs path= (a file, or split -> file)")
    if format in ("flip", "csv"):
        if not isinstance(path, (str, os.PathLike)):
            raise TaskDataError(f"task {name!r}: format={format!r} reads one file holding the splits")
        read = read_flip_csv if format == "flip" else read_split_csv
        return task_spec(name, "regression"), read(os.fspath(path))
    if format == "netsurfp":
        spec, read = task_spec(name, "residue_classification", states), \
            (lambda p: read_netsurfp_csv(p, states, use_cb513_mask))
    elif format == "fasta":
        spec, read = task_spec(name, "residue_classification", states), (lambda p: read_labeled_fasta(p, states))
    elif format == "tape":
        spec, read = task_spec(name, "regression"), (lambda p: read_tape(p, target))
    else:
        raise TaskDataError(f"task {name!r}: unknown format {format!r}; use one of {', '.join(FORMATS)}")
    files = split_files(path, name)
    return spec, {split: read(file) for split, file in files.items()}


def split_files(path, name: str) -> dict[str, str]:
    """Split -> file from a mapping, or from a folder's `*_train.*`, `*_valid.*`, `*_test.*` entries."""
    if is_mapping(path):
        files = {}
        for key, file in path.items():
            split = {"validation": "valid", "val": "valid"}.get(key, key)
            if split not in SPLITS:
                raise TaskDataError(f"task {name!r}: path key {key!r} is not a split; use train, valid, test")
            files[split] = os.fspath(file)
        return files
    folder = os.fspath(path)
    if not os.path.isdir(folder):
        raise TaskDataError(f"task {name!r}: {folder} is neither a folder nor a mapping split -> file")
    files = {}
    for split in SPLITS:
        found = sorted(glob.glob(os.path.join(folder, f"*_{split}.*")))
        if len(found) > 1:
            raise TaskDataError(f"{folder}: several files for split {split}: {', '.join(found)}; pass a mapping")
        if found:
            files[split] = found[0]
    return files


def carve_validation(splits, fraction: float, seed: int, where: str):
    """Move a seeded `fraction` of train to valid when the source has no validation split."""
    if splits.get("valid") or not splits.get("train"):
        return splits
    train = splits["train"]
    n_valid = max(1, int(round(fraction * len(train))))
    if not 0 < fraction < 1 or n_valid >= len(train):
        raise TaskDataError(f"{where}: no validation split and valid_fraction={fraction} cannot carve one "
                            f"from {len(train)} training examples")
    order = np.random.default_rng(seed).permutation(len(train))
    valid_idx = set(order[:n_valid].tolist())
    return splits | {"train": [ex for i, ex in enumerate(train) if i not in valid_idx],
                     "valid": [ex for i, ex in enumerate(train) if i in valid_idx]}


def check_splits(splits, name: str, where: str) -> None:
    for split in SPLITS:
        if not splits.get(split):
            raise TaskDataError(f"task {name!r} ({where}): split {split!r} is empty; "
                                "give it records (or a file for it)")


def is_mapping(path) -> bool:
    # ml_collections' ConfigDict has items() but is not a collections.abc.Mapping.
    return isinstance(path, Mapping) or hasattr(path, "items")


def describe(path) -> str:
    if is_mapping(path):
        return ", ".join(f"{k}={os.fspath(v)}" for k, v in path.items())
    return os.fspath(path) if path is not None else "?"
