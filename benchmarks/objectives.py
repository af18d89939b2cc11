"""Span-corruption throughput on one core: ours (whole batch at once) against the HF Flax T5 collator.

    python benchmarks/objectives.py            # L=512, r=0.15, mu=3, batch 64; prints examples/s

The peer is HuggingFace's `FlaxDataCollatorForT5MLM` from transformers' examples/flax/language-modeling/
run_t5_mlm_flax.py. That script is not importable from the transformers package, so `PeerT5MLMCollator`
below re-implements its algorithm step for step (one `random_spans_noise_mask` per example, sentinel ids
by cumsum, filtering by a >= 0 test) and is measured in the same run.
"""
from __future__ import annotations

import os

# One core for both sides: pin BLAS/OpenMP pools before numpy loads.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ankh3.objectives import SpanCorruption  # noqa: E402
from ankh3.tokenizer import Tokenizer  # noqa: E402


class PeerT5MLMCollator:
    """The peer: HF FlaxDataCollatorForT5MLM's algorithm (per-example noise masks), re-implemented."""

    def __init__(self, vocab_size: int, eos_id: int, noise_density: float, mean_noise_span_length: float,
                 rng: np.random.Generator):
        self.vocab_size, self.eos_id = vocab_size, eos_id
        self.noise_density, self.mean_noise_span_length = noise_density, mean_noise_span_length
        self.rng = rng

    def __call__(self, input_ids: np.ndarray) -> dict:
        batch_size, length = input_ids.shape
        mask = np.asarray([self.random_spans_noise_mask(length) for _ in range(batch_size)])
        input_sentinels = self.create_sentinel_ids(mask.astype(np.int8))
        label_sentinels = self.create_sentinel_ids((~mask).astype(np.int8))
        return {"input_ids": self.filter_input_ids(input_ids, input_sentinels),
                "labels": self.filter_input_ids(input_ids, label_sentinels)}

    def create_sentinel_ids(self, mask: np.ndarray) -> np.ndarray:
        # the first position of each masked run gets a sentinel id counting down from the vocab top;
        # later positions of the run get -1 so that the filter below drops them
        starts = mask - np.roll(mask, 1, axis=-1) * mask
        starts[:, 0] = mask[:, 0]
        ids = np.where(starts != 0, np.cumsum(starts, axis=-1), starts)
        ids = np.where(ids != 0, self.vocab_size - ids, 0)
        ids -= mask - starts
        return ids

    def filter_input_ids(self, input_ids: np.ndarray, sentinel_ids: np.ndarray) -> np.ndarray:
        full = np.where(sentinel_ids != 0, sentinel_ids, input_ids)
        kept = full[full >= 0].reshape((input_ids.shape[0], -1))
        return np.concatenate([kept, np.full((input_ids.shape[0], 1), self.eos_id, np.int32)], axis=-1)

    def random_spans_noise_mask(self, length: int) -> np.ndarray:
        num_noise = int(np.round(length * self.noise_density))
        num_clean = length - num_noise
        num_noise = min(max(num_noise, 1), length - 1)
        num_spans = max(int(np.round(min(num_noise, num_clean) / self.mean_noise_span_length)), 1)

        def random_segmentation(num_items, num_segments):
            cut = np.arange(num_items - 1) < (num_segments - 1)
            self.rng.shuffle(cut)
            segment_id = np.cumsum(np.pad(cut, [[1, 0]]))
            return np.unique(segment_id, return_counts=True)[1]

        noise_lengths = random_segmentation(num_noise, num_spans)
        clean_lengths = random_segmentation(num_clean, num_spans)
        interleaved = np.reshape(np.stack([clean_lengths, noise_lengths], axis=1), [num_spans * 2])
        span_starts = np.cumsum(interleaved)[:-1]
        indicator = np.zeros((length,), np.int8)
        indicator[span_starts] = True
        return np.equal(np.cumsum(indicator) % 2, 1)


def best_rates(steps: dict, batch_size: int, rounds: int, min_seconds: float) -> dict:
    """Examples/s of each step: best of `rounds` timed rounds, the sides taking turns so that both
    see the same background load (this machine is shared)."""
    for step in steps.values():
        step()  # warm caches
    best = dict.fromkeys(steps, 0.0)
    for _ in range(rounds):
        for name, step in steps.items():
            calls, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < min_seconds:
                step()
                calls += 1
            best[name] = max(best[name], calls * batch_size / elapsed)
    return best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--noise_density", type=float, default=0.15)
    parser.add_argument("--mean_span_length", type=float, default=3.0)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=0.5, help="per timed round and side")
    args = parser.parse_args(argv)

    tokenizer = Tokenizer.default()
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 28, (args.batch_size, args.length)).astype(np.int32)  # residue ids
    lengths = np.full(args.batch_size, args.length)
    ours = SpanCorruption(args.noise_density, args.mean_span_length)
    enc, dec = (int(x) for x in ours.lengths(args.length, tokenizer.num_sentinels))
    peer = PeerT5MLMCollator(len(tokenizer), tokenizer.eos_id, args.noise_density, args.mean_span_length, rng)

    rates = best_rates({"ours": lambda: ours.apply(tokens, lengths, rng, tokenizer, enc, dec),
                        "peer": lambda: peer(tokens)}, args.batch_size, args.rounds, args.seconds)
    ours_rate, peer_rate = rates["ours"], rates["peer"]
    print(f"span corruption, L={args.length} r={args.noise_density} mu={args.mean_span_length} "
          f"batch={args.batch_size}, one thread, numpy {np.__version__}")
    print(f"  peer  HF FlaxDataCollatorForT5MLM (re-implemented): {peer_rate:12,.0f} examples/s")
    print(f"  ours  ankh3.objectives.SpanCorruption.apply:        {ours_rate:12,.0f} examples/s")
    print(f"  ratio ours/peer: {ours_rate / peer_rate:.1f}x")


if __name__ == "__main__":
    main()
