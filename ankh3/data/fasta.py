"""Streaming FASTA reader for plain, gzip and xz files, from a few records to tens of GB.

Constant memory: one record is held at a time. Every residue must be an amino-acid letter (any
case; the IUPAC codes cover A-Z); a '*' is accepted only as the final stop and is stripped.
Anything else (digits, '#', gaps '-') is a FastaError naming the file, line, record and position.
Whether a letter is in the model's vocabulary is the tokenizer's check, not this one.
"""
from __future__ import annotations

import collections
import gzip
import io
import lzma
import os
import re
from typing import Iterator, NamedTuple, TextIO

from ankh3.errors import UserError

_GZIP_MAGIC = b"\x1f\x8b"
_XZ_MAGIC = b"\xfd7zXZ\x00"
STANDARD = "ACDEFGHIKLMNPQRSTVWY"
NONSTANDARD = "XBZUOJ"  # X any, B D/N, Z E/Q, U selenocysteine, O pyrrolysine, J L/I
_NOT_A_LETTER = re.compile(r"[^A-Za-z]")


class FastaError(UserError, ValueError):
    """A FASTA file is missing, unreadable or malformed."""


class Record(NamedTuple):
    """One FASTA entry. `name` is the header up to the first whitespace; `description` the rest."""

    name: str
    sequence: str
    description: str = ""


def open_text(path: str | os.PathLike) -> TextIO:
    """Opens a plain, gzip or xz file for reading text; compression is told by the magic bytes."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(len(_XZ_MAGIC))
    except OSError as e:
        raise FastaError(f"cannot open FASTA file {path}: {e.strerror}; check the path") from None
    if magic.startswith(_GZIP_MAGIC):
        return gzip.open(path, "rt", encoding="utf-8")
    if magic.startswith(_XZ_MAGIC):
        return lzma.open(path, "rt", encoding="utf-8")
    return open(path, "rt", encoding="utf-8")


def parse_header(header: str) -> tuple[str, str]:
    """Splits header text (without '>') into (name, description)."""
    parts = header.split(maxsplit=1)
    return parts[0], (parts[1] if len(parts) > 1 else "")


def read_fasta(path: str | os.PathLike, nonstandard: collections.Counter | None = None) -> Iterator[Record]:
    """Yields the records of a FASTA file one by one; raises FastaError at the first defect.

    `nonstandard`, when given, counts the residues outside the 20 standard amino acids by letter
    (upper case), as the records are read.
    """
    path = os.fspath(path)
    with open_text(path) as f:
        try:
            for record in _parse(f, path):
                if nonstandard is not None:
                    count_nonstandard(record.sequence, nonstandard)
                yield record
        except (OSError, EOFError, lzma.LZMAError, UnicodeDecodeError) as e:
            # A truncated or corrupt archive surfaces only while reading, not at open.
            raise FastaError(f"cannot read FASTA file {path}: {e}; the file is corrupt or truncated") from None


def count_nonstandard(sequence: str, counts: collections.Counter) -> None:
    """Adds the sequence's non-standard residues (X, B, Z, U, O, J; any case) to `counts`."""
    upper = sequence.upper()
    for letter in NONSTANDARD:
        n = upper.count(letter)
        if n:
            counts[letter] += n


def _parse(lines: io.TextIOBase, path: str) -> Iterator[Record]:
    name = description = None
    header_line = stop_line = 0
    chunks: list[str] = []
    length = 0  # residues of the current record so far
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith(">"):
            if name is not None:
                yield _finish(path, header_line, name, description, chunks)
            header_line, stop_line, length = lineno, 0, 0
            if not line[1:].strip():
                raise FastaError(f"{path}:{lineno}: empty FASTA header '>'; give every record a name after '>'")
            name, description = parse_header(line[1:])
            chunks = []
        elif name is None:
            raise FastaError(
                f"{path}:{lineno}: sequence line before the first header; every record must start with a '>NAME' line"
            )
        else:
            if stop_line:
                raise FastaError(f"{path}:{stop_line}: record '{name}' has '*' at residue {length + 1}, before its "
                                 "end; '*' is accepted only as the final stop: remove it or split the record")
            if " " in line or "\t" in line:
                line = "".join(line.split())  # residues grouped by spaces, as in some exports
            if line.endswith("*"):
                line, stop_line = line[:-1], lineno
            _check_residues(path, lineno, name, line, length)
            chunks.append(line)
            length += len(line)
    if name is not None:
        yield _finish(path, header_line, name, description, chunks)


def _check_residues(path: str, lineno: int, name: str, line: str, before: int) -> None:
    bad = _NOT_A_LETTER.search(line)
    if bad is not None:
        raise FastaError(
            f"{path}:{lineno}: record '{name}' has {bad.group()!r} at residue {before + bad.start() + 1}, which is "
            "not an amino-acid letter; fix the sequence (X stands for an unknown residue, '*' only ends one)")


def _finish(path: str, header_line: int, name: str, description: str, chunks: list[str]) -> Record:
    sequence = "".join(chunks)
    if not sequence:
        raise FastaError(
            f"{path}:{header_line}: record '{name}' has no residues; remove the header or add its sequence"
        )
    return Record(name, sequence, description)
