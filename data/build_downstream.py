"""Rebuild the bundled downstream tasks in data/downstream/ from the shared real data.

    python data/build_downstream.py                      # from ../shared/data, the committed counts
    python data/build_downstream.py --shared /path/to/data --out /tmp/big --train 8000 --max_length 1000

Writes `structures.npz` (secondary structure + contacts, split by 40%-identity cluster) and `gb1.csv`
(GB1 fitness, the shipped split subsampled). Only this script reads the shared folder; the library reads
the bundle. Takes a few seconds on a CPU.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import os

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITS = ("train", "valid", "test")
GB1_SHIPPED = {"training": "train", "validation": "valid", "test": "test"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default=os.path.join(REPO, "..", "shared", "data"), help="shared data folder")
    p.add_argument("--out", default=os.path.join(REPO, "data", "downstream"), help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=1500, help="structure chains in train")
    p.add_argument("--valid", type=int, default=200)
    p.add_argument("--test", type=int, default=300)
    p.add_argument("--max_length", type=int, default=400, help="longest chain kept (keeps the CPU run quick)")
    p.add_argument("--gb1_train", type=int, default=2000)
    p.add_argument("--gb1_valid", type=int, default=500)
    p.add_argument("--gb1_test", type=int, default=1000)
    return p.parse_args(argv)


def assign_clusters(clusters: np.ndarray, eligible: np.ndarray, counts: dict, seed: int) -> np.ndarray:
    """Split label per chain ('' = unused), whole clusters at a time so no cluster is in two splits.

    Clusters are visited in a seeded random order; test fills first, then valid, then train, so the
    small evaluation splits get exactly their counts when clusters hold one chain each.
    """
    split = np.full(len(clusters), "", dtype="<U5")
    members: dict[str, list[int]] = {}
    for i in np.flatnonzero(eligible):
        members.setdefault(str(clusters[i]), []).append(int(i))
    order = sorted(members)
    np.random.default_rng(seed).shuffle(order)
    targets = [(name, counts[name]) for name in ("test", "valid", "train")]
    filled = {name: 0 for name in SPLITS}
    for cluster in order:
        open_splits = [name for name, want in targets if filled[name] < want]
        if not open_splits:
            break
        name = open_splits[0]
        split[members[cluster]] = name
        filled[name] += len(members[cluster])
    short = [f"{n} {filled[n]}/{counts[n]}" for n in SPLITS if filled[n] < counts[n]]
    if short:
        raise SystemExit(f"not enough eligible chains: {', '.join(short)}; lower the counts or raise --max_length")
    return split


def build_structures(shared: str, out: str, args: argparse.Namespace) -> dict:
    with np.load(os.path.join(shared, "structures", "pdb_chains_nr40.npz")) as npz:
        # Read each array once: indexing an NpzFile re-reads (and decompresses) the whole member.
        src = {key: npz[key] for key in ("names", "seqs", "dssp8", "offsets", "cb", "cluster40")}
    offsets = src["offsets"]
    lengths = np.diff(offsets)
    counts = {"train": args.train, "valid": args.valid, "test": args.test}
    split = assign_clusters(src["cluster40"], lengths <= args.max_length, counts, args.seed)
    # Keep chains in split order (train, valid, test), shuffled within a split by the cluster draw.
    chosen = np.concatenate([np.flatnonzero(split == name) for name in SPLITS])
    rng = np.random.default_rng(args.seed + 1)
    chosen = np.concatenate([rng.permutation(chosen[split[chosen] == name]) for name in SPLITS])
    cb = np.concatenate([src["cb"][offsets[i]:offsets[i + 1]] for i in chosen]).astype(np.float16)
    new_offsets = np.concatenate([[0], np.cumsum(lengths[chosen])]).astype(np.int64)
    arrays = dict(
        names=src["names"][chosen], seqs=src["seqs"][chosen], dssp8=src["dssp8"][chosen],
        cluster40=src["cluster40"][chosen], split=split[chosen], offsets=new_offsets, cb=cb,
    )
    np.savez_compressed(os.path.join(out, "structures.npz"), **arrays)
    return {name: int((split == name).sum()) for name in SPLITS} | {"residues": int(new_offsets[-1])}


def read_gb1(shared: str) -> dict[str, list[tuple[str, float]]]:
    rows: dict[str, list[tuple[str, float]]] = {name: [] for name in SPLITS}
    with gzip.open(os.path.join(shared, "fitness", "gb1_data.csv.gz"), "rt", newline="") as f:
        for row in csv.DictReader(f):
            rows[GB1_SHIPPED[row["set"]]].append((row["x"], float(row["y"])))
    return rows


def build_gb1(shared: str, out: str, args: argparse.Namespace) -> dict:
    rows = read_gb1(shared)
    counts = {"train": args.gb1_train, "valid": args.gb1_valid, "test": args.gb1_test}
    rng = np.random.default_rng(args.seed)
    with open(os.path.join(out, "gb1.csv"), "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["sequence", "target", "split"])
        for name in SPLITS:
            picks = rng.choice(len(rows[name]), size=counts[name], replace=False)
            for i in picks:
                seq, y = rows[name][i]
                writer.writerow([seq, f"{y:.6g}", name])
    return counts


def main(argv=None) -> None:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    print("structures:", build_structures(args.shared, args.out, args))
    print("gb1:", build_gb1(args.shared, args.out, args))


if __name__ == "__main__":
    main()
