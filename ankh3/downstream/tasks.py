"""Downstream tasks: what each one predicts and is scored by, how it is declared, and loading.

    data = load_task("ssp3")                                   # bundled, data/downstream/
    data = load_task("ssp3", max_per_split=50)                 # first 50 of each split
    data = load_task("cb513", format="netsurfp", states=8,
                     path={"train": "Train_HHblits.csv", "test": "CB513_HHblits.csv"})
    data = load_task("fluorescence", path="fluorescence/")     # *_train.json ...: TAPE, sniffed
    data = load(TaskDecl("fluor", "regression", "tape", "fluorescence/"))   # as the config declares it

A task is declared by its name, kind (`kinds.KINDS`), reader format (`FORMATS`; '' = sniffed from the
file), path (a file, a folder of `*_train.*`, `*_valid.*`, `*_test.*`, or a mapping split -> file) and
the options its reader uses (states, TAPE target key, CB513 mask). The bundled tasks are declarations
too (`BUNDLED_TASKS`).

Labels (`Example.label`): residue classification -> int8 [L] class indices, -1 = not scored;
contact -> float32 [L, 3] CB coordinates, NaN rows for unresolved residues (`contact_map` turns them
into the int8 [L, L] target); regression -> float.
"""
from __future__ import annotations

import csv
import dataclasses
import glob
import os
import zipfile
import zlib
from collections.abc import Mapping

import numpy as np

from ankh3.downstream.kinds import KINDS, KindError, get_kind
from ankh3.downstream.metrics import CONTACT_THRESHOLD, contact_map
from ankh3.downstream.readers import (SPLITS, SSP3, SSP8, Example, TaskDataError, encode_labels,
                                      read_flip_csv, read_labeled_fasta, read_netsurfp_csv,
                                      read_split_csv, read_tape)

__all__ = ["KINDS", "TaskSpec", "TaskData", "TaskDecl", "Example", "TaskDataError", "load_task", "load",
           "task_spec", "sniff_format", "contact_map", "BUNDLED_TASKS", "BUNDLE_DIR", "CONTACT_THRESHOLD", "FORMATS"]

BUNDLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "data", "downstream")
STRUCTURE_KEYS = ("names", "seqs", "dssp8", "offsets", "cb", "split")


@dataclasses.dataclass(frozen=True)
class TaskDecl:
    """A task as a config declares it; `format` '' is sniffed from `path`, `path` '' is the bundled file."""

    name: str
    kind: str
    format: str = ""
    path: object = ""  # a file or folder, or a mapping split -> file
    states: int = 3  # residue_classification: 3 or 8 DSSP states
    target: str = "log_fluorescence"  # tape: the record key that holds the value
    cb513_mask: bool = False  # netsurfp: also ignore residues CB513's mask drops


# Reader format -> (kinds it can feed, whether one file carries every split).
FORMATS = {
    "structures": (("residue_classification", "contact"), True),  # data/build_downstream.py's .npz
    "netsurfp": (("residue_classification",), False),
    "fasta": (("residue_classification",), False),
    "tape": (("regression",), False),
    "flip": (("regression",), True),
    "csv": (("regression",), True),
}
BUNDLED_TASKS = {
    "ssp3": TaskDecl("ssp3", "residue_classification", "structures", os.path.join(BUNDLE_DIR, "structures.npz"), 3),
    "ssp8": TaskDecl("ssp8", "residue_classification", "structures", os.path.join(BUNDLE_DIR, "structures.npz"), 8),
    "contact": TaskDecl("contact", "contact", "structures", os.path.join(BUNDLE_DIR, "structures.npz"), 0),
    "gb1": TaskDecl("gb1", "regression", "csv", os.path.join(BUNDLE_DIR, "gb1.csv"), 0),
}


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
    try:
        record = get_kind(kind)
        names = record.metrics(states)
    except KindError as e:
        raise TaskDataError(f"task {name!r}: {e}") from None
    classes = {3: SSP3, 8: SSP8}.get(states, "") if kind == "residue_classification" else ""
    return TaskSpec(name, kind, names, names[0], record.higher_is_better, len(classes), classes)


# ---- declaring ------------------------------------------------------------------------------------
def declare(name: str, path=None, format: str | None = None, kind: str | None = None, *, states: int | None = None,
            target: str = "log_fluorescence", cb513_mask: bool = False) -> TaskDecl:
    """The declaration of task `name`: the bundled one with what is given replaced, or a new task.

    A new task needs a path; its format is sniffed when not given and its kind follows the format
    (structure bundles default to secondary structure)."""
    bundled = BUNDLED_TASKS.get(name)
    if bundled is None and not path:
        raise TaskDataError(f"unknown task {name!r}: bundled tasks are {', '.join(BUNDLED_TASKS)}; "
                            f"for your own files give a path (format one of {', '.join(FORMATS)}, or sniffed)")
    path = path or bundled.path
    format = format or (bundled.format if bundled and path == bundled.path else sniff_format(path, name))
    if format not in FORMATS:
        raise TaskDataError(f"task {name!r}: unknown format {format!r}; use one of {', '.join(FORMATS)}")
    kind = kind or (bundled.kind if bundled else FORMATS[format][0][0])
    if kind not in FORMATS[format][0]:
        raise TaskDataError(f"task {name!r}: a {format} file holds {' or '.join(FORMATS[format][0])} labels, "
                            f"not {kind}; give another path or set the task's kind/format")
    if states is None:
        states = bundled.states if bundled else 3
    return TaskDecl(name, kind, format, path, states if kind == "residue_classification" else 0, target, cb513_mask)


def sniff_format(path, name: str = "?") -> str:
    """The reader format of a file (by suffix, CSV by header), a folder (its split files) or a mapping."""
    if is_mapping(path):
        path = next(iter(path.values()), "")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise TaskDataError(f"task {name!r}: {path}: no such file or folder; check config.downstream.paths.{name}")
    if os.path.isdir(path):
        if path.rstrip("/").endswith(".lmdb"):
            return "tape"
        found = [f for split in SPLITS for f in sorted(glob.glob(os.path.join(path, f"*_{split}.*")))]
        if not found:
            raise TaskDataError(f"task {name!r}: folder {path} has no *_train.*, *_valid.*, *_test.* files; "
                                "name the split files so, or give a file")
        return sniff_format(found[0], name)
    stem = path[:-3] if path.endswith(".gz") else path
    suffix = os.path.splitext(stem)[1].lower()
    by_suffix = {".npz": "structures", ".json": "tape", ".lmdb": "tape", ".fasta": "fasta", ".fa": "fasta",
                 ".faa": "fasta"}
    if suffix in by_suffix:
        return by_suffix[suffix]
    if suffix == ".csv":
        return sniff_csv(path, name)
    raise TaskDataError(f"task {name!r}: cannot tell the format of {path} from its suffix; "
                        f"set config.downstream.formats.{name} to one of {', '.join(FORMATS)}")


def sniff_csv(path: str, name: str) -> str:
    from ankh3.downstream.readers import open_text

    with open_text(path) as f:
        header = {h.strip().lstrip("\ufeff") for h in next(csv.reader(f), [])}
    if "input" in header and ({"dssp3", "dssp8"} & header):
        return "netsurfp"
    if {"sequence", "target", "set"} <= header:
        return "flip"
    if {"sequence", "target", "split"} <= header:
        return "csv"
    raise TaskDataError(f"task {name!r}: {path}: header {','.join(sorted(header))} is none of NetSurfP "
                        "(input,dssp3,dssp8,disorder), FLIP (sequence,target,set) or split CSV "
                        f"(sequence,target,split); set config.downstream.formats.{name}")


# ---- loading --------------------------------------------------------------------------------------
def load_task(name: str, path=None, format: str | None = None, *, kind: str | None = None,
              states: int | None = None, target: str = "log_fluorescence", use_cb513_mask: bool = False,
              max_per_split: int | None = None, valid_fraction: float = 0.1, seed: int = 0) -> TaskData:
    """Load a bundled task by name, or any task from user files (`format` sniffed when not given).

    `path`: for bundled tasks an alternative file of any format; for `netsurfp`, `fasta` and `tape`
    a mapping split -> file or a folder holding `*_train.*`, `*_valid.*`, `*_test.*`; for
    `structures`, `flip` and `csv` one file carrying the split. `states` picks 3- or 8-state labels,
    `target` the TAPE record key. A missing validation split is carved from train: a seeded
    `valid_fraction` of it. `max_per_split` keeps the first examples of each split.
    """
    decl = declare(name, path, format, kind, states=states, target=target, cb513_mask=use_cb513_mask)
    return load(decl, max_per_split=max_per_split, valid_fraction=valid_fraction, seed=seed)


def load(decl: TaskDecl, *, max_per_split: int | None = None, valid_fraction: float = 0.1, seed: int = 0) -> TaskData:
    """The examples of a declared task, by split."""
    spec = task_spec(decl.name, decl.kind, decl.states)
    kinds, one_file = FORMATS[decl.format]
    if one_file:
        if is_mapping(decl.path) or os.path.isdir(os.fspath(decl.path)):
            raise TaskDataError(f"task {decl.name!r}: format {decl.format!r} reads one file holding the splits; "
                                f"{describe(decl.path)} is not one file")
        splits = read_one_file(decl)
    else:
        splits = {split: read_split_file(decl, file) for split, file in split_files(decl.path, decl.name).items()}
    splits = carve_validation(splits, valid_fraction, seed, where=describe(decl.path))
    check_splits(splits, decl.name, describe(decl.path))
    if max_per_split is not None:
        splits = {k: v[:max_per_split] for k, v in splits.items()}
    return TaskData(spec, splits)


def read_one_file(decl: TaskDecl) -> dict[str, list[Example]]:
    path = os.fspath(decl.path)
    if decl.format == "structures":
        return read_structures(path, decl.kind, decl.states)
    return (read_flip_csv if decl.format == "flip" else read_split_csv)(path)


def read_split_file(decl: TaskDecl, file: str) -> list[Example]:
    if decl.format == "netsurfp":
        return read_netsurfp_csv(file, decl.states, decl.cb513_mask)
    if decl.format == "fasta":
        return read_labeled_fasta(file, decl.states)
    return read_tape(file, decl.target)


def read_structures(path: str, kind: str, states: int) -> dict[str, list[Example]]:
    """Chains of a structures bundle as secondary-structure or contact examples, by split."""
    if not os.path.exists(path):
        raise TaskDataError(f"{path}: file not found; rebuild it with python data/build_downstream.py")
    fix = "rebuild it with python data/build_downstream.py or point config.downstream.paths at another file"
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in STRUCTURE_KEYS if k not in npz.files]
            if missing:
                raise TaskDataError(f"{path}: structures bundle lacks array(s) {', '.join(missing)}; {fix}")
            arrays = {k: npz[k] for k in STRUCTURE_KEYS}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        if isinstance(e, TaskDataError):
            raise
        raise TaskDataError(f"{path}: unreadable structures .npz (truncated or not an .npz: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}); {fix}") from None
    offsets, names = arrays["offsets"], arrays["names"]
    if len(offsets) != len(names) + 1 or len(arrays["seqs"]) != len(names) or len(arrays["split"]) != len(names):
        raise TaskDataError(f"{path}: arrays disagree ({len(names)} names, {len(arrays['seqs'])} seqs, "
                            f"{len(arrays['split'])} splits, {len(offsets)} offsets); {fix}")
    unknown = sorted(set(map(str, arrays["split"])) - set(SPLITS))
    if unknown:
        raise TaskDataError(f"{path}: unknown split(s) {', '.join(unknown)} in array 'split'; "
                            f"use {', '.join(SPLITS)} ({fix})")
    splits: dict[str, list[Example]] = {name: [] for name in SPLITS}
    for i, name in enumerate(names):
        seq = str(arrays["seqs"][i])
        if kind == "contact":
            label = arrays["cb"][offsets[i]:offsets[i + 1]].astype(np.float32)
        else:
            label = encode_labels(str(arrays["dssp8"][i]), states, f"{path}: chain {name}")
        if len(label) != len(seq):
            raise TaskDataError(f"{path}: chain {name} has {len(label)} labels for {len(seq)} residues")
        splits[str(arrays["split"][i])].append(Example(str(name), seq, label))
    return splits


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
    folder, before, after = os.fspath(path), "*", ".*"  # glob: BEFORE_{split}AFTER
    if os.path.isfile(folder):  # one split file: its siblings that differ only in the split name
        base = os.path.basename(folder)
        split = next((s for s in SPLITS if f"_{s}." in base), None)
        if split is None:
            raise TaskDataError(f"task {name!r}: {folder} is one file but this format keeps a split per file; "
                                "give the folder of its *_train.*, *_valid.*, *_test.* files")
        head, tail = base.split(f"_{split}.", 1)
        folder, before, after = os.path.dirname(folder) or ".", glob.escape(head), glob.escape("." + tail)
    if not os.path.isdir(folder):
        raise TaskDataError(f"task {name!r}: {folder} is neither a file, a folder nor a mapping split -> file")
    files = {}
    for split in SPLITS:
        found = sorted(glob.glob(os.path.join(glob.escape(folder), f"{before}_{split}{after}")))
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
