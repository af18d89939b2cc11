"""Streaming FASTA reader for plain, gzip and xz files, from a few records to tens of GB.

Constant memory: one record is held at a time. Residues are not checked here; the tokenizer
does that and names the record and position.
"""
from __future__ import annotations

import gzip
import io
import lzma
import os
from typing import Iterator, NamedTuple, TextIO

from ankh3.errors import UserError

_GZIP_MAGIC = b"\x1f\x8b"
_XZ_MAGIC = b"\xfd7zXZ\x00"


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


def read_fasta(path: str | os.PathLike) -> Iterator[Record]:
    """Yields the records of a FASTA file one by one; raises FastaError at the first defect."""
    path = os.fspath(path)
    with open_text(path) as f:
        try:
            yield from _parse(f, path)
        except (OSError, EOFError, lzma.LZMAError, UnicodeDecodeError) as e:
            # A truncated or corrupt archive surfaces only while reading, not at open.
            raise FastaError(f"cannot read FASTA file {path}: {e}; the file is corrupt or truncated") from None


def _parse(lines: io.TextIOBase, path: str) -> Iterator[Record]:
    name = description = None
    header_line = 0
    chunks: list[str] = []
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith(">"):
            if name is not None:
                yield _finish(path, header_line, name, description, chunks)
            header_line = lineno
            if not line[1:].strip():
                raise FastaError(f"{path}:{lineno}: empty FASTA header '>'; give every record a name after '>'")
            name, description = parse_header(line[1:])
            chunks = []
        elif name is None:
            raise FastaError(
                f"{path}:{lineno}: sequence line before the first header; every record must start with a '>NAME' line"
            )
        else:
            chunks.append(line)
    if name is not None:
        yield _finish(path, header_line, name, description, chunks)


def _finish(path: str, header_line: int, name: str, description: str, chunks: list[str]) -> Record:
    sequence = "".join(chunks)
    if not sequence:
        raise FastaError(
            f"{path}:{header_line}: record '{name}' has no residues; remove the header or add its sequence"
        )
    return Record(name, sequence, description)
