"""Embedding throughput (residues/s) of our frozen-encoder extraction against HF `T5EncoderModel`.

    python benchmarks/embed.py                                    # CPU: ours vs HF eager, `small` shape
    python benchmarks/embed.py --shape=ankh3_large --dtype=bfloat16 --no_hf --num_seqs=2048   # GPU

Both sides embed the same real protein sequences (the first --num_seqs of the bundled validation corpus
whose length is in [--min_len, --max_len])
with the same weights (ours exported to HF names), the same `[NLU] residues </s>` inputs and the same
length-sorted, bucketed, token-budget batches; both return per-residue numpy arrays. HF runs eager
float32 under `torch.inference_mode`. Times are the best of `--repeats` full passes after a warm-up
pass (our warm-up is where jit compiles one program per bucket shape; its time is printed too).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from anywhere


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="small", help="model shape from ankh3.model.SHAPES")
    p.add_argument("--dtype", default="float32", help="our compute dtype (HF always float32)")
    p.add_argument("--num_seqs", type=int, default=96)
    p.add_argument("--min_len", type=int, default=50)
    p.add_argument("--max_len", type=int, default=400)
    p.add_argument("--token_budget", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no_hf", action="store_true", help="ours only (large shapes, GPU)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def bundled_sequences(n: int, lo: int, hi: int) -> list[str]:
    """The first n Swiss-Prot sequences of the bundled validation split with lo <= length <= hi."""
    from ankh3.data.fasta import read_fasta

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data/pretrain/valid.fasta.xz")
    seqs = (r.sequence for r in read_fasta(path) if lo <= len(r.sequence) <= hi)
    return [s for s, _ in zip(seqs, range(n))]


def time_passes(run, repeats: int) -> tuple[float, float]:
    """(warm-up seconds, best timed pass seconds)."""
    start = time.perf_counter()
    run()
    warmup = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return warmup, best


def make_hf_encode_fn(cfg, model, tokenizer):
    """HF T5EncoderModel (eager, float32) holding our weights; same encode_fn contract as ours."""
    import torch
    from transformers import T5Config, T5EncoderModel

    from ankh3.hf_checkpoint import flat_to_hf, hf_config_from_model
    from ankh3.model import flat_params

    hf = T5EncoderModel(T5Config(**hf_config_from_model(cfg, tokenizer))).eval()
    state = {k: torch.from_numpy(np.array(v)) for k, v in flat_to_hf(cfg, flat_params(model)).items()}
    missing, _ = hf.load_state_dict(state, strict=False)
    if [m for m in missing if not m.endswith("embed_tokens.weight")]:
        raise RuntimeError(f"HF encoder did not receive weights for {missing}")

    def encode(tokens, mask):
        with torch.inference_mode():
            out = hf(input_ids=torch.from_numpy(tokens.astype(np.int64)),
                     attention_mask=torch.from_numpy(mask.astype(np.int64))).last_hidden_state
        return out.numpy()

    return encode


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax
    from flax import nnx

    from ankh3.downstream.embed import extract_embeddings, make_model_encode_fn
    from ankh3.model import T5, get_shape
    from ankh3.tokenizer import Tokenizer

    cfg = get_shape(args.shape, dtype=args.dtype)
    tokenizer = Tokenizer.default(cfg.vocab_size)
    model = T5(cfg, rngs=nnx.Rngs(args.seed))
    seqs = bundled_sequences(args.num_seqs, args.min_len, args.max_len)
    residues = sum(map(len, seqs))
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; shape {args.shape} "
          f"(d_model {cfg.d_model}, {cfg.num_encoder_layers} encoder layers), dtype {args.dtype}; "
          f"{len(seqs)} sequences, {residues} residues, token budget {args.token_budget}")

    sides = {"ours (JAX, jit per bucket)": make_model_encode_fn(model)}
    if not args.no_hf:
        import torch

        sides["HF T5EncoderModel (torch eager f32)"] = make_hf_encode_fn(cfg, model, tokenizer)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        check = [extract_embeddings(fn, tokenizer, seqs[:4], progress=False) for fn in sides.values()]
        diff = max(float(np.abs(a - b).max()) for a, b in zip(*check))
        print(f"max |ours - HF| on 4 sequences: {diff:.2e}")

    rates = {}
    for name, fn in sides.items():
        def run():
            extract_embeddings(fn, tokenizer, seqs, token_budget=args.token_budget, progress=False)
        warmup, best = time_passes(run, args.repeats)
        rates[name] = residues / best
        print(f"{name:38s} {rates[name]:12,.0f} residues/s   ({len(seqs) / best:8.1f} seq/s; "
              f"best pass {best:.2f} s, warm-up pass {warmup:.2f} s)")
    if len(rates) == 2:
        ours, hf = rates.values()
        print(f"speed-up ours / HF eager: {ours / hf:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
