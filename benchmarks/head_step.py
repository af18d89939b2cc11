"""One probe head's training step, today's layer against the one before (benchmarks/probes.py's `before`).

    python benchmarks/head_step.py                          # residue and contact heads, batch 16, length 256
    python benchmarks/head_step.py --length=512 --steps=5

A step is forward, backward and an AdamW update of the head on fixed random embeddings (speed does not
depend on their values), jitted, as ankh3/downstream/probe.py trains it. `before` computes the ConvBERT
layer with stacked windows and jax.random dropout masks, and the contact head's pair term as an einsum
over [B, L, L, p] (probes.py's `before_convbert_call` and `before_pair_term`). Runners take turns step
by step so that all see the same load; the median is reported. The process starts with glibc's
huge-page tunable, as launch/run.py does.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
if __name__ == "__main__":  # glibc reads its tunables only at process start
    from ankh3.host_malloc import reexec_with_hugepages

    reexec_with_hugepages()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from ankh3.downstream import heads  # noqa: E402
from ankh3.downstream.kinds import get_kind  # noqa: E402
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from probes import BEFORE_LAYERS, swap_head_layers  # noqa: E402

HEADS = {"residue": ("residue_classification", lambda dim: heads.ResidueClassifier(dim, 3, rngs=nnx.Rngs(0))),
         "contact": ("contact", lambda dim: heads.ContactPredictor(dim, rngs=nnx.Rngs(0)))}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--width", type=int, default=128, help="embedding width (the tiny model's d_model)")
    p.add_argument("--steps", type=int, default=9)
    p.add_argument("--heads", default="residue,contact")
    return p.parse_args(argv)


def make_batch(kind: str, batch: int, length: int, width: int) -> dict:
    keys = jax.random.split(jax.random.key(0), 2)
    out = {"x": jax.random.normal(keys[0], (batch, length, width)), "mask": jnp.ones((batch, length), bool)}
    if kind == "contact":
        out |= {"y": (jax.random.uniform(keys[1], (batch, length, length)) < 0.05).astype(jnp.int8)}
    else:
        out |= {"y": jax.random.randint(keys[1], (batch, length), 0, 3)}
    return out


def make_runner(head: str, path: str, args):
    """A zero-argument function that runs one training step; the layer is chosen at trace time."""
    kind, build = HEADS[head]
    replaced = swap_head_layers(*BEFORE_LAYERS) if path == "before" else None
    graphdef, params = nnx.split(build(args.width), nnx.Param)
    tx = optax.adamw(1e-3)
    batch = make_batch(kind, args.batch, args.length, args.width)

    @jax.jit  # one per runner: probes.py's shared step would reuse one program for both paths (same graphdef)
    def step(params, opt_state, key):
        def loss_fn(p):
            return get_kind(kind).loss(nnx.merge(graphdef, p)(batch["x"], batch["mask"], key), batch)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    state = [params, tx.init(params)]

    def run():
        state[0], state[1], loss = step(state[0], state[1], jax.random.key(1))
        jax.block_until_ready(loss)

    run()  # compile while this path's layer is in place
    if replaced:
        swap_head_layers(*replaced)
    return run


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    print(f"batch {args.batch}, length {args.length}, width {args.width}; "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    runners = {(h, p): make_runner(h, p, args) for h in args.heads.split(",") for p in ("before", "now")}
    times = {name: [] for name in runners}
    for _ in range(args.steps):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    for head in args.heads.split(","):
        before, now = (statistics.median(times[(head, p)]) for p in ("before", "now"))
        print(f"{head:8s} head step: before {before * 1e3:7.1f} ms, now {now * 1e3:7.1f} ms, {before / now:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
