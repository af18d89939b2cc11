"""Training-step throughput of our T5 against HF transformers' T5 (PyTorch), on the same machine.

    python benchmarks/model_step.py                      # CPU reference shape, HF eager in the same run
    python benchmarks/model_step.py --torch_compile      # also HF with torch.compile
    python benchmarks/model_step.py --shape=ankh3_large --dtype=bfloat16 --no_hf   # GPU: MFU

One step = forward, backward and an AdamW update on a fixed random batch. Times are medians of
`--steps` steps after `--warmup`; ours is one jitted function with the state donated.

Model FLOPs per step (what MFU counts; remat recomputation is not counted), with B batch,
Le/Ld encoder/decoder length, D model width, I = heads * d_kv, F feed-forward width, V vocab,
Ne/Nd layers:
    forward = 2 * B * [ Le * Ne * (4*D*I + 3*D*F)                      # encoder projections + MLP
                       + Ld * Nd * (4*D*I + 2*D*I + 3*D*F)             # self-attn, cross q/o, MLP
                       + Le * Nd * (2*D*I)                             # cross-attn k/v of the encoder output
                       + Ld * D * V ]                                  # lm_head
            + 4 * B * I * ( Ne*Le*Le + Nd*Ld*Ld + Nd*Ld*Le )           # q.k^T and probs.v (full squares)
    step    = 3 * forward                                              # backward = 2 x forward
MFU = step FLOPs / step time / peak; peak = 989 TFLOP/s (H100 SXM dense bf16).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from anywhere
from ankh3.model import T5, ModelConfig, get_shape  # noqa: E402

H100_BF16_PEAK = 989e12


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="bench_cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--attention", default=None, help="default: cudnn on GPU, einsum elsewhere")
    p.add_argument("--remat", default="none")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--enc_len", type=int, default=512)
    p.add_argument("--dec_len", type=int, default=128)
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no_hf", action="store_true", help="skip the PyTorch/HF comparison")
    p.add_argument("--torch_compile", action="store_true", help="also time HF under torch.compile")
    p.add_argument("--compile_depths", default="4,48", help="encoder depths for the compile-time figure ('' skips)")
    p.add_argument("--peak_flops", type=float, default=H100_BF16_PEAK)
    return p.parse_args(argv)


def step_flops(cfg: ModelConfig, batch: int, le: int, ld: int) -> float:
    """Analytic model FLOPs of one training step (formula in the module docstring)."""
    d, i, f, v = cfg.d_model, cfg.inner_dim, cfg.d_ff, cfg.vocab_size
    ne, nd = cfg.num_encoder_layers, cfg.num_decoder_layers
    matmul = (le * ne * (4 * d * i + 3 * d * f) + ld * nd * (6 * d * i + 3 * d * f)
              + le * nd * 2 * d * i + ld * d * v)
    attention = 4 * batch * i * (ne * le * le + nd * ld * ld + nd * ld * le)
    return 3.0 * (2.0 * batch * matmul + attention)


def make_batch(cfg: ModelConfig, batch: int, le: int, ld: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random tokens with some padding at the end of the encoder inputs, like real batches."""
    rng = np.random.default_rng(seed)
    enc = rng.integers(2, cfg.vocab_size, (batch, le)).astype(np.int32)
    lengths = rng.integers(le // 2, le + 1, batch)
    enc[np.arange(le)[None, :] >= lengths[:, None]] = 0
    targets = rng.integers(2, cfg.vocab_size, (batch, ld)).astype(np.int32)
    dec_in = np.concatenate([np.zeros((batch, 1), np.int32), targets[:, :-1]], axis=1)
    return dict(encoder_tokens=enc, decoder_inputs=dec_in, decoder_targets=targets,
                decoder_weights=np.ones((batch, ld), np.float32))


def loss_fn(model: T5, batch) -> jax.Array:
    logits = model(batch["encoder_tokens"], batch["decoder_inputs"])
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["decoder_targets"])
    return jnp.sum(losses * batch["decoder_weights"]) / jnp.maximum(jnp.sum(batch["decoder_weights"]), 1.0)


def make_model_and_optimizer(cfg: ModelConfig):
    model = T5(cfg, rngs=nnx.Rngs(0))
    return model, nnx.Optimizer(model, optax.adamw(1e-4), wrt=nnx.Param)


def make_jax_step(model_and_optimizer):
    """A pure jitted step on (state, batch) with the state donated; returns (step, state)."""
    graphdef, state = nnx.split(model_and_optimizer)

    def step(state, batch):
        model, optimizer = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    return jax.jit(step, donate_argnums=0), state


def time_interleaved(runners: dict, steps: int, warmup: int) -> dict[str, float]:
    """Median seconds per step of each runner, taking turns step by step so that all of them
    see the same load on a shared machine."""
    times = {name: [] for name in runners}
    for i in range(warmup + steps):
        for name, run_step in runners.items():
            start = time.perf_counter()
            run_step()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def jax_runner(cfg: ModelConfig, batch):
    """(run one step, compile seconds) for our jitted, donating train step."""
    step, state = make_jax_step(make_model_and_optimizer(cfg))
    batch = jax.device_put(batch)
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    holder = {"state": state}

    def run():
        holder["state"], loss = compiled(holder["state"], batch)
        loss.block_until_ready()

    return run, compile_s


def compile_seconds(cfg: ModelConfig, batch) -> float:
    """Lower + compile the full training step from abstract state (nothing allocated)."""
    step, state = make_jax_step(nnx.eval_shape(lambda: make_model_and_optimizer(cfg)))
    start = time.perf_counter()
    step.lower(state, batch).compile()
    return time.perf_counter() - start


def hf_model(cfg: ModelConfig):
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(**cfg.to_hf_config()))
    if not cfg.tie_embeddings:  # transformers 5 ties in memory; Ankh's head is its own matrix
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    return model.train()


def hf_runner(cfg: ModelConfig, batch, compile_model: bool):
    """Run one HF training step (forward, backward, AdamW), eager or under torch.compile."""
    import torch

    model = hf_model(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = {k: torch.from_numpy(v) for k, v in batch.items()}
    mask = inputs["encoder_tokens"] != 0
    forward = torch.compile(model) if compile_model else model

    def run():
        optimizer.zero_grad(set_to_none=True)
        out = forward(input_ids=inputs["encoder_tokens"], attention_mask=mask,
                      decoder_input_ids=inputs["decoder_inputs"], labels=inputs["decoder_targets"].long())
        out.loss.backward()
        optimizer.step()

    return run


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    attention = args.attention or ("cudnn" if jax.default_backend() == "gpu" else "einsum")
    cfg = get_shape(args.shape, dtype=args.dtype, attention=attention, remat=args.remat)
    batch = make_batch(cfg, args.batch, args.enc_len, args.dec_len)
    flops = step_flops(cfg, args.batch, args.enc_len, args.dec_len)
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}  shape={args.shape} dtype={args.dtype} "
          f"attention={attention} remat={args.remat} batch={args.batch} Le={args.enc_len} Ld={args.dec_len}")
    run_ours, compile_s = jax_runner(cfg, batch)
    runners = {"ours (jax, jit+donate)": run_ours}
    if not args.no_hf:
        runners["HF T5 torch eager"] = hf_runner(cfg, batch, compile_model=False)
        if args.torch_compile:
            runners["HF T5 torch.compile"] = hf_runner(cfg, batch, compile_model=True)
    times = time_interleaved(runners, args.steps, args.warmup)
    ours = times.pop("ours (jax, jit+donate)")
    rate = f"{flops / 1e9:.1f} GFLOP/step, {flops / ours / 1e9:.1f} GFLOP/s"
    if jax.default_backend() == "gpu":
        rate += f", MFU {flops / ours / args.peak_flops:.1%} of {args.peak_flops / 1e12:.0f} TFLOP/s"
    print(f"ours (jax, jit+donate):  {ours * 1e3:8.1f} ms/step   (compile {compile_s:.1f} s)   {rate}")
    for name, seconds in times.items():
        print(f"{name + ':':24s} {seconds * 1e3:8.1f} ms/step   ratio HF/ours = {seconds / ours:.2f}x")
    for depth in [int(d) for d in args.compile_depths.split(",") if d]:
        deep = dataclasses.replace(cfg, num_encoder_layers=depth, num_decoder_layers=max(1, depth // 2))
        print(f"compile time, {depth} encoder / {max(1, depth // 2)} decoder layers: "
              f"{compile_seconds(deep, batch):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
