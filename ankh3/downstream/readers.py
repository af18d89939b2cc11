"""Readers for the file formats downstream benchmarks are published in.

Each reader returns `Example`s (or a dict split -> examples for formats that carry the split) and
raises `TaskDataError` naming the file and line of the first bad record. Per-residue labels come back
as int8 class indices with -1 for residues that must not be scored.

Formats:
- NetSurfP-2.0 / ProtTrans CSV: columns `input,dssp3,dssp8,disorder,cb513_mask`, each a space-separated
  per-residue list; residues with disorder 0 are ignored (-1), as in ProtTrans.
- TAPE regression (e.g. fluorescence): JSON list of records (`primary`, `log_fluorescence`), or an LMDB
  folder as TAPE ships it (needs the optional `lmdb` package).
- FLIP CSV: `sequence,target,set,validation`; `set` is train/test, `validation=True` moves a train row
  to the validation split.
- Labeled FASTA: three lines per record, `>name`, the sequence, then its label string (one letter per
  residue) — one line each, no wrapping.
- Split CSV: `sequence,target,split` with split train/valid/test (the bundled GB1 file uses it).
Files ending in `.gz` are read through gzip.
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import math
import os
import pickle
from typing import Iterator

import numpy as np

from ankh3.errors import UserError

SSP3 = "HEC"
SSP8 = "HGIEBTSC"
# The literature's 3-state reduction of DSSP's 8 states: H,G,I -> H; E,B -> E; the rest -> C.
REDUCE_8_TO_3 = {"H": "H", "G": "H", "I": "H", "E": "E", "B": "E", "T": "C", "S": "C", "C": "C"}
SPLITS = ("train", "valid", "test")
SPLIT_ALIASES = {"train": "train", "training": "train", "valid": "valid", "validation": "valid",
                 "val": "valid", "dev": "valid", "test": "test", "testing": "test"}


class TaskDataError(UserError, ValueError):
    """A downstream data file is missing, malformed or inconsistent (message names file and line)."""


@dataclasses.dataclass(frozen=True)
class Example:
    """One protein: `label` is int8 [L] (classes, -1 ignored), float32 [L, 3] CB coordinates with NaN
    rows for unresolved residues (contacts), or a float (regression)."""

    name: str
    sequence: str
    label: object


# ---- shared helpers -------------------------------------------------------------------------------
def open_text(path: str):
    if not os.path.exists(path):
        raise TaskDataError(f"{path}: file not found")
    if path.endswith(".gz"):
        return gzip.open(path, "rt", newline="")
    return open(path, newline="")


def check_sequence(seq: str, where: str) -> str:
    if not seq:
        raise TaskDataError(f"{where}: empty sequence")
    if not (seq.isascii() and seq.isalpha() and seq.isupper()):
        bad = next(c for c in seq if not (c.isascii() and c.isalpha() and c.isupper()))
        raise TaskDataError(f"{where}: sequence holds {bad!r}; use one upper-case letter per residue")
    return seq


def encode_labels(letters: str, states: int, where: str) -> np.ndarray:
    """Class indices of a DSSP label string; for 3 states, 8-state letters are reduced on the way."""
    alphabet = SSP3 if states == 3 else SSP8
    lookup = {c: i for i, c in enumerate(alphabet)}
    if states == 3:
        lookup |= {c: lookup[h] for c, h in REDUCE_8_TO_3.items()}
    try:
        return np.array([lookup[c] for c in letters], np.int8)
    except KeyError:
        bad = next(c for c in letters if c not in lookup)
        allowed = "".join(sorted(lookup))
        raise TaskDataError(f"{where}: unknown label letter {bad!r}; {states}-state labels use {allowed}") from None


def check_states(states: int) -> None:
    if states not in (3, 8):
        raise TaskDataError(f"states must be 3 or 8, got {states!r}")


def parse_target(text, where: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise TaskDataError(f"{where}: target {text!r} is not a number") from None
    if not math.isfinite(value):
        raise TaskDataError(f"{where}: target {text!r} is not finite")
    return value


def split_name(text: str, where: str) -> str:
    name = SPLIT_ALIASES.get(str(text).strip().lower())
    if name is None:
        raise TaskDataError(f"{where}: unknown split {text!r}; use train, valid or test")
    return name


def csv_rows(path: str, required: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    """(line number, row) pairs; header names are stripped (ProtTrans files have ' dssp3')."""
    with open_text(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise TaskDataError(f"{path}: empty file; expected a header with {','.join(required)}")
        header = [h.strip().lstrip("\ufeff") for h in header]
        missing = [c for c in required if c not in header]
        if missing:
            raise TaskDataError(f"{path}:1: missing column(s) {', '.join(missing)}; found {', '.join(header)}")
        for row in reader:
            if not row or not "".join(row).strip():
                continue
            where = f"{path}:{reader.line_num}"
            if len(row) != len(header):
                raise TaskDataError(f"{where}: {len(row)} fields, header has {len(header)}")
            yield reader.line_num, dict(zip(header, row))


def require_examples(examples: list, path: str) -> list:
    if not examples:
        raise TaskDataError(f"{path}: no records")
    return examples


# ---- NetSurfP-2.0 / ProtTrans CSV -----------------------------------------------------------------
def read_netsurfp_csv(path: str, states: int = 3, use_cb513_mask: bool = False) -> list[Example]:
    """Per-residue secondary structure; `use_cb513_mask` also ignores residues CB513's mask drops."""
    check_states(states)
    column = f"dssp{states}"
    examples = []
    for line, row in csv_rows(path, ("input", column, "disorder")):
        where = f"{path}:{line}"
        seq = check_sequence("".join(row["input"].split()), where)
        labels = encode_labels("".join(row[column].split()), states, where)
        if len(labels) != len(seq):
            raise TaskDataError(f"{where}: {column} has {len(labels)} labels for {len(seq)} residues")
        labels[read_mask(row["disorder"], len(seq), "disorder", where) == 0] = -1
        if use_cb513_mask and "cb513_mask" in row:
            labels[read_mask(row["cb513_mask"], len(seq), "cb513_mask", where) == 0] = -1
        examples.append(Example(f"{os.path.basename(path)}:{line}", seq, labels))
    return require_examples(examples, path)


def read_mask(text: str, length: int, column: str, where: str) -> np.ndarray:
    try:
        values = np.array([float(v) for v in text.split()], np.float32)
    except ValueError:
        raise TaskDataError(f"{where}: {column} must be space-separated numbers") from None
    if len(values) != length:
        raise TaskDataError(f"{where}: {column} has {len(values)} values for {length} residues")
    return values


# ---- TAPE (JSON / LMDB) ---------------------------------------------------------------------------
def read_tape(path: str, target: str = "log_fluorescence") -> list[Example]:
    """TAPE regression records from a `.json` file or an `.lmdb` folder."""
    if path.rstrip("/").endswith(".lmdb") or os.path.isdir(path):
        records = read_lmdb_records(path)
    else:
        records = read_json_records(path)
    examples = []
    for i, record in records:
        where = f"{path}:{i}"
        if not isinstance(record, dict) or "primary" not in record or target not in record:
            raise TaskDataError(f"{where}: record needs keys 'primary' and {target!r}")
        seq = check_sequence(str(record["primary"]), where)
        value = record[target]
        value = value[0] if isinstance(value, (list, tuple, np.ndarray)) and len(value) == 1 else value
        name = str(record.get("id", f"{os.path.basename(path)}:{i}"))
        examples.append(Example(name, seq, parse_target(value, where)))
    return require_examples(examples, path)


def read_json_records(path: str) -> list[tuple[int, dict]]:
    """(line, record) pairs, the line being where the record starts in the file."""
    with open_text(path) as f:
        text = f.read()
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise TaskDataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(records, list):
        raise TaskDataError(f"{path}:1: expected a JSON list of records")
    starts = record_lines(text, len(records))
    return list(zip(starts, records))


def record_lines(text: str, count: int) -> list[int]:
    """Line on which each top-level record of a JSON list begins (for error messages)."""
    decoder = json.JSONDecoder()
    lines, pos = [], text.index("[") + 1
    line, counted = 1, 0  # newlines are counted incrementally: TAPE's JSON files hold ~10^4 records
    for _ in range(count):
        while text[pos] in " \t\r\n,":
            pos += 1
        line += text.count("\n", counted, pos)
        counted = pos
        lines.append(line)
        _, pos = decoder.raw_decode(text, pos)
    return lines


def read_lmdb_records(path: str) -> list[tuple[int, dict]]:
    """Records of a TAPE LMDB folder (pickled dicts under keys '0'..'n-1'); 'line' is the record index."""
    try:
        import lmdb
    except ImportError:
        raise TaskDataError(f"{path}: reading TAPE .lmdb needs the lmdb package (pip install lmdb), "
                            "or convert the split to TAPE's .json format") from None
    if not os.path.exists(path):
        raise TaskDataError(f"{path}: file not found")
    try:
        env = lmdb.open(path, max_readers=1, readonly=True, lock=False, readahead=False, meminit=False)
    except lmdb.Error as e:
        raise TaskDataError(f"{path}: cannot open as LMDB ({e})") from None
    try:
        with env.begin(write=False) as txn:
            raw = txn.get(b"num_examples")
            if raw is None:
                raise TaskDataError(f"{path}: no 'num_examples' key; not a TAPE LMDB folder")
            # TAPE's own files store pickles; only open LMDB folders from a source you trust.
            records = []
            for i in range(pickle.loads(raw)):
                value = txn.get(str(i).encode())
                if value is None:
                    raise TaskDataError(f"{path}:{i}: record {i} missing though num_examples says more")
                records.append((i, pickle.loads(value)))
            return records
    finally:
        env.close()


# ---- FLIP CSV -------------------------------------------------------------------------------------
def read_flip_csv(path: str) -> dict[str, list[Example]]:
    """FLIP split file: train rows with validation=True form the validation split."""
    splits: dict[str, list[Example]] = {name: [] for name in SPLITS}
    for line, row in csv_rows(path, ("sequence", "target", "set")):
        where = f"{path}:{line}"
        seq = check_sequence(row["sequence"].strip(), where)
        name = split_name(row["set"], where)
        if name == "train" and row.get("validation", "").strip().lower() in ("true", "1"):
            name = "valid"
        splits[name].append(Example(f"{os.path.basename(path)}:{line}", seq, parse_target(row["target"], where)))
    return splits


# ---- plain formats --------------------------------------------------------------------------------
def read_split_csv(path: str) -> dict[str, list[Example]]:
    """`sequence,target,split` rows (optional `name` column)."""
    splits: dict[str, list[Example]] = {name: [] for name in SPLITS}
    for line, row in csv_rows(path, ("sequence", "target", "split")):
        where = f"{path}:{line}"
        seq = check_sequence(row["sequence"].strip(), where)
        name = row.get("name") or f"{os.path.basename(path)}:{line}"
        splits[split_name(row["split"], where)].append(Example(name, seq, parse_target(row["target"], where)))
    return splits


def read_labeled_fasta(path: str, states: int = 3) -> list[Example]:
    """Records of three lines: `>name`, sequence, label string (same length)."""
    check_states(states)
    with open_text(path) as f:
        lines = [(i, text.strip()) for i, text in enumerate(f, start=1) if text.strip()]
    if len(lines) % 3:
        raise TaskDataError(f"{path}:{lines[-1][0] if lines else 1}: incomplete record; "
                            "each record is '>name', a sequence line and a label line")
    examples = []
    for k in range(0, len(lines), 3):
        (hline, header), (sline, seq), (lline, letters) = lines[k:k + 3]
        if not header.startswith(">"):
            raise TaskDataError(f"{path}:{hline}: expected a '>name' header, got {header[:20]!r}")
        check_sequence(seq, f"{path}:{sline}")
        if len(letters) != len(seq):
            raise TaskDataError(f"{path}:{lline}: label string has {len(letters)} letters for "
                                f"{len(seq)} residues (record {header[1:].split()[0] if header[1:] else '?'})")
        labels = encode_labels(letters, states, f"{path}:{lline}")
        examples.append(Example(header[1:].split()[0] if header[1:].strip() else f"record{k // 3}", seq, labels))
    return require_examples(examples, path)

