"""Converts a FASTA file (plain, .gz, .xz) into ArrayRecord shards that `ArrayRecordSource` reads.

    python -m ankh3.data.convert --fasta=uniref50.fasta.gz --out=data/uniref50 --shards=64

Streams in constant memory. Records go round-robin to the shards so they stay balanced. Shards are
written under temporary names and renamed at the end; `metadata.json` is written last, so a
directory without it is an unfinished conversion.
"""
from __future__ import annotations

import argparse
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


def shard_name(index: int, num_shards: int) -> str:
    return f"sequences-{index:05d}-of-{num_shards:05d}{SHARD_SUFFIX}"


def convert_fasta(
    fasta_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    num_shards: int,
    progress: Callable[[int, int], None] | None = None,
    progress_every: int = 100_000,
) -> dict:
    """Writes `num_shards` shards and metadata.json into `out_dir`; returns the metadata.

    Raises FastaError for bad input and SourceError for an unusable output directory.
    `progress(records, residues)` is called every `progress_every` records.
    """
    from array_record.python.array_record_module import ArrayRecordWriter

    fasta_path, out_dir = os.fspath(fasta_path), os.fspath(out_dir)
    if num_shards < 1:
        raise SourceError(f"--shards must be at least 1, got {num_shards}")
    _prepare_out_dir(out_dir)
    names = [shard_name(i, num_shards) for i in range(num_shards)]
    partial = [os.path.join(out_dir, n + _PARTIAL) for n in names]
    writers = [ArrayRecordWriter(p, WRITER_OPTIONS) for p in partial]
    count = residues = 0
    finished = False
    try:
        for record in read_fasta(fasta_path):
            writers[count % num_shards].write(encode_record(record))
            count += 1
            residues += len(record.sequence)
            if progress and count % progress_every == 0:
                progress(count, residues)
        finished = True
    finally:
        for w in writers:
            w.close()
        if not finished or count == 0:
            _remove(partial)  # leave nothing behind that a later run would mistake for output
    if count == 0:
        raise FastaError(f"{fasta_path} holds no FASTA records; nothing to convert")
    for p, n in zip(partial, names):
        os.replace(p, os.path.join(out_dir, n))
    metadata = {"count": count, "residues": residues, "source": os.path.abspath(fasta_path), "shards": names}
    _write_json_atomically(os.path.join(out_dir, METADATA_FILE), metadata)
    return metadata


def _prepare_out_dir(out_dir: str) -> None:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise SourceError(f"--out={out_dir} is a file; give a directory")
    os.makedirs(out_dir, exist_ok=True)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fasta", required=True, help="input FASTA (plain, .gz or .xz)")
    parser.add_argument("--out", required=True, help="output directory (created; must not hold shards)")
    parser.add_argument("--shards", type=int, default=16, help="number of ArrayRecord shards")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    def report(records: int, residues: int) -> None:
        rate = records / (time.perf_counter() - start)
        print(f"{records:,} records, {residues:,} residues ({rate:,.0f} records/s)", flush=True)

    try:
        meta = convert_fasta(args.fasta, args.out, args.shards, progress=report)
    except (FastaError, SourceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    print(
        f"wrote {meta['count']:,} records ({meta['residues']:,} residues) into {len(meta['shards'])} shards "
        f"in {args.out} in {seconds:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
