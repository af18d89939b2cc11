"""Converts a FASTA file (plain, .gz, .xz) into ArrayRecord shards that `ArrayRecordSource` reads.

    python -m ankh3.data.arrayrecord --fasta=uniref50.fasta.gz --out=data/uniref50 --shards=256

Two streaming passes in bounded memory: the first validates and counts the records (and the
non-standard residues X, B, Z, U, O, J, reported in metadata.json and on the terminal), the second
fills the shards one after another with equal shares. (An ArrayRecord writer keeps an index entry
per record until it closes, so writing all shards at once would grow with the whole corpus; one
open shard at a time bounds memory by the shard size.) Shards get temporary names until all are
written, and `metadata.json` comes last: a directory without it is an unfinished conversion.
"""
from __future__ import annotations

import collections
import itertools
import json
import os
import sys
import time
from typing import Callable

from ankh3.data.fasta import FastaError, read_fasta
from ankh3.data.sources import METADATA_FILE, SHARD_SUFFIX, SourceError, encode_record

# group_size:1 lets Grain read any record without decoding its neighbours.
WRITER_OPTIONS = "group_size:1"
_PARTIAL = ".partial"

Progress = Callable[[str], None]


def shard_name(index: int, num_shards: int) -> str:
    return f"sequences-{index:05d}-of-{num_shards:05d}{SHARD_SUFFIX}"


def convert_fasta(
    fasta_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    num_shards: int,
    progress: Progress | None = None,
    progress_every: int = 100_000,
) -> dict:
    """Writes `num_shards` shards and metadata.json into `out_dir`; returns the metadata.

    Raises FastaError for bad input (before anything is written) and SourceError for an unusable
    output directory. `progress(message)` is called every `progress_every` records of each pass.
    """
    fasta_path, out_dir = os.fspath(fasta_path), os.fspath(out_dir)
    if num_shards < 1:
        raise SourceError(f"--shards must be at least 1, got {num_shards}")
    count, residues, nonstandard = count_records(fasta_path, progress, progress_every)
    if count == 0:
        raise FastaError(f"{fasta_path} holds no FASTA records; nothing to convert")
    _prepare_out_dir(out_dir)
    names = [shard_name(i, num_shards) for i in range(num_shards)]
    partial = [os.path.join(out_dir, n + _PARTIAL) for n in names]
    try:
        write_shards(fasta_path, partial, count, progress, progress_every)
    except BaseException:
        _remove(partial)  # leave nothing behind that a later run would mistake for output
        raise
    for p, n in zip(partial, names):
        os.replace(p, os.path.join(out_dir, n))
    metadata = {"count": count, "residues": residues, "nonstandard_residues": nonstandard,
                "source": os.path.abspath(fasta_path), "shards": names}
    _write_json_atomically(os.path.join(out_dir, METADATA_FILE), metadata)
    return metadata


def count_records(fasta_path: str, progress: Progress | None = None,
                  every: int = 100_000) -> tuple[int, int, dict[str, int]]:
    """(records, residues, non-standard residues by letter) of a FASTA file; reading it all also validates it."""
    count = residues = 0
    nonstandard: collections.Counter = collections.Counter()
    for record in read_fasta(fasta_path, nonstandard):
        count += 1
        residues += len(record.sequence)
        if progress and count % every == 0:
            progress(f"checked {count:,} records ({residues:,} residues)")
    return count, residues, dict(sorted(nonstandard.items()))


def write_shards(fasta_path: str, paths: list[str], count: int, progress: Progress | None = None, every: int = 100_000):
    """Writes the `count` records in file order into `paths`, equal shares (within one), one shard at a time."""
    from array_record.python.array_record_module import ArrayRecordWriter

    records = read_fasta(fasta_path)
    bounds = [i * count // len(paths) for i in range(len(paths) + 1)]
    written = 0
    for i, path in enumerate(paths):
        writer = ArrayRecordWriter(path, WRITER_OPTIONS)
        try:
            for record in itertools.islice(records, bounds[i + 1] - bounds[i]):
                writer.write(encode_record(record))
                written += 1
                if progress and written % every == 0:
                    progress(f"wrote {written:,} of {count:,} records")
        finally:
            writer.close()
    if written != count or next(records, None) is not None:
        raise FastaError(f"{fasta_path} changed during conversion; convert a file that is not being written to")


def _prepare_out_dir(out_dir: str) -> None:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise SourceError(f"--out={out_dir} is a file; give a directory")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise SourceError(f"--out={out_dir} cannot be created ({e.strerror}); give a writable directory") from None
    stale = [n for n in os.listdir(out_dir) if n == METADATA_FILE or SHARD_SUFFIX in n]
    if stale:
        raise SourceError(f"--out={out_dir} already holds shards ({stale[0]}); give an empty directory or delete it")


def _remove(paths: list[str]) -> None:
    for p in paths:
        if os.path.exists(p):
            os.remove(p)


def _write_json_atomically(path: str, obj: dict) -> None:
    tmp = path + _PARTIAL
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


EXAMPLES = (
    "python -m ankh3.data.arrayrecord --fasta=uniref50.fasta.gz --out=/data/uniref50 --shards=256",
    "python launch/run.py --config=experiments/base.py --config.data.train=/data/uniref50   # train on the shards",
)


def main(argv: list[str] | None = None) -> int:
    from ankh3.command_line import command_parser, main_guard

    parser = command_parser("python -m ankh3.data.arrayrecord", __doc__, EXAMPLES)
    parser.add_argument("--fasta", required=True, help="input FASTA (plain, .gz or .xz)")
    parser.add_argument("--out", required=True, help="output directory (created; must not hold shards)")
    parser.add_argument("--shards", type=int, default=16, help="number of ArrayRecord shards (default 16)")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    def report(message: str) -> None:
        print(f"{message} [{time.perf_counter() - start:.0f} s]", flush=True)

    with main_guard():
        meta = convert_fasta(args.fasta, args.out, args.shards, progress=report)
    odd = ", ".join(f"{letter} {n:,}" for letter, n in meta["nonstandard_residues"].items()) or "none"
    print(f"wrote {meta['count']:,} records ({meta['residues']:,} residues; non-standard: {odd}) into "
          f"{len(meta['shards'])} shards in {args.out} in {time.perf_counter() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
