"""Random-access protein sequence sources for Grain: a small FASTA in memory, or ArrayRecord shards.

Both give `len(source)` and `source[i] -> Record(name, sequence, description)`, which is what
`grain.MapDataset.source(...)` needs.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

from ankh3.errors import UserError
from ankh3.data.fasta import FastaError, Record, read_fasta

SHARD_SUFFIX = ".array_record"
METADATA_FILE = "metadata.json"


class SourceError(UserError, ValueError):
    """A data path is missing, unreadable, or not a FASTA file or a directory of converted shards."""


def encode_record(record: Record) -> bytes:
    """Serialises a record as utf-8 `name<TAB>SEQUENCE[<TAB>description]` (names and residues hold no tabs)."""
    fields = (record.name, record.sequence, record.description) if record.description else record[:2]
    return "\t".join(fields).encode("utf-8")


def decode_record(data: bytes) -> Record:
    return Record(*data.decode("utf-8").split("\t", 2))


class FastaSource:
    """All records of one FASTA file, held in memory: meant for bundles of up to ~1M sequences."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._records = list(read_fasta(self.path))
        if not self._records:
            raise SourceError(f"FASTA file {self.path} holds no records; point the data path at a non-empty FASTA file")

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> Record:
        return self._records[index]

    def __repr__(self) -> str:
        return f"FastaSource({self.path!r}, {len(self)} records)"


class ArrayRecordSource:
    """Records from ArrayRecord shards written by `ankh3.data.arrayrecord`, read on demand."""

    def __init__(self, dir_or_paths: str | os.PathLike | Sequence[str | os.PathLike]):
        # Imported here: grain and array_record are heavy and not needed for FASTA-only use.
        import grain

        self.paths = find_shards(dir_or_paths)
        try:
            self._source = grain.sources.ArrayRecordDataSource(self.paths)
        except (OSError, ValueError, RuntimeError) as e:
            where = os.path.dirname(os.path.abspath(self.paths[0]))
            raise SourceError(f"cannot read the ArrayRecord shards in {where}: {e}; re-run the converter") from None

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> Record:
        return decode_record(self._source[index])

    def __repr__(self) -> str:
        return f"ArrayRecordSource({len(self.paths)} shards, {len(self)} records)"


def find_shards(dir_or_paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Shard paths: explicit ones as given, or those listed by a converted directory's metadata."""
    if not isinstance(dir_or_paths, (str, os.PathLike)):
        paths = [os.fspath(p) for p in dir_or_paths]
        missing = [p for p in paths if not os.path.isfile(p)]
        if not paths or missing:
            raise SourceError(f"ArrayRecord shard(s) not found: {missing or 'empty list'}; check the paths")
        return paths
    directory = os.fspath(dir_or_paths)
    meta_path = os.path.join(directory, METADATA_FILE)
    if not os.path.isfile(meta_path):
        # The converter writes metadata last, so its absence means the conversion did not finish.
        raise SourceError(
            f"{directory} has no {METADATA_FILE}; it is not a finished conversion: "
            f"run python -m ankh3.data.arrayrecord --fasta=FILE --out={directory}"
        )
    try:
        with open(meta_path) as f:
            shards = json.load(f)["shards"]
    except (OSError, ValueError, KeyError) as e:
        raise SourceError(f"unreadable {meta_path} ({e}); re-run the converter into an empty directory") from None
    return find_shards([os.path.join(directory, s) for s in shards])


def open_source(path: str | os.PathLike) -> FastaSource | ArrayRecordSource:
    """A source for a data path: a FASTA file (plain, .gz, .xz) or a directory of converted shards."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return ArrayRecordSource(path)
    if os.path.isfile(path):
        return FastaSource(path)
    raise SourceError(
        f"data path {path} does not exist; give a FASTA file or a directory made by python -m ankh3.data.arrayrecord"
    )


__all__ = ["ArrayRecordSource", "FastaError", "FastaSource", "Record", "SourceError", "open_source"]
