"""Rebuilds data/pretrain/ (the small pretraining corpus of the default run) from Swiss-Prot 2014.

    python data/build_pretrain.py [--shared=../shared/data]

Reads sequences/swissprot_2014_unique.fasta.xz under --shared (streamed), keeps sequences of
30-1000 residues whose accession hash falls in a fixed ~7.35% slice, and splits them 95/5 into
train and validation by another part of the same hash. Same input, same output, on any machine.
"""
from __future__ import annotations

import argparse
import hashlib
import lzma
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # run as a script from anywhere

from ankh3.data.fasta import read_fasta  # noqa: E402

SOURCE = "sequences/swissprot_2014_unique.fasta.xz"
MIN_LENGTH, MAX_LENGTH = 30, 1000
KEEP_PER_10000 = 735  # of accession hashes; gives ~30,000 sequences
VALID_PER_100 = 5
LINE_WIDTH = 60


def accession_hash(accession: str) -> tuple[int, int]:
    """Two independent numbers from one hash: (selection bucket 0-9999, split bucket 0-99)."""
    digest = hashlib.sha256(accession.encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") % 10_000, int.from_bytes(digest[8:16], "big") % 100


def assign_split(name: str, sequence: str) -> str | None:
    """'train', 'valid', or None when the record is not part of the bundle."""
    if not MIN_LENGTH <= len(sequence) <= MAX_LENGTH:
        return None
    select, split = accession_hash(name)
    if select >= KEEP_PER_10000:
        return None
    return "valid" if split < VALID_PER_100 else "train"


def write_record(f, name: str, sequence: str) -> None:
    f.write(f">{name}\n")
    for i in range(0, len(sequence), LINE_WIDTH):
        f.write(sequence[i : i + LINE_WIDTH] + "\n")


def build(shared: str, out_dir: str) -> dict[str, tuple[int, int]]:
    """Writes train.fasta.xz and valid.fasta.xz; returns {split: (sequences, residues)}."""
    os.makedirs(out_dir, exist_ok=True)
    counts = {"train": [0, 0], "valid": [0, 0]}
    seen = 0
    files = {s: lzma.open(os.path.join(out_dir, f"{s}.fasta.xz"), "wt", preset=9) for s in counts}
    try:
        for name, sequence, _ in read_fasta(os.path.join(shared, SOURCE)):
            seen += 1
            split = assign_split(name, sequence)
            if split:
                write_record(files[split], name, sequence)
                counts[split][0] += 1
                counts[split][1] += len(sequence)
    finally:
        for f in files.values():
            f.close()
    print(f"read {seen:,} sequences from {SOURCE}")
    return {s: tuple(c) for s, c in counts.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=os.path.join(REPO, "..", "shared", "data"), help="shared data folder")
    parser.add_argument("--out", default=os.path.join(REPO, "data", "pretrain"), help="output folder")
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.shared, SOURCE)):
        print(f"error: {os.path.join(args.shared, SOURCE)} not found; pass --shared=DIR holding {SOURCE}", file=sys.stderr)
        return 1
    for split, (n, residues) in build(args.shared, args.out).items():
        size = os.path.getsize(os.path.join(args.out, f"{split}.fasta.xz"))
        print(f"{split}: {n:,} sequences, {residues:,} residues, {size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
