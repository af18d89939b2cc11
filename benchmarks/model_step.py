"""Training-step throughput of our T5 against HF transformers' T5 (PyTorch) and against GEMM ceilings.

    python benchmarks/model_step.py                      # CPU reference shape: ceilings, HF f32 + autocast, ours
    python benchmarks/model_step.py --also_bf16 --also_unroll=4   # also ours in bf16 and with layers unrolled
    python benchmarks/model_step.py --torch_compile      # also HF with torch.compile
    python benchmarks/model_step.py --shape=ankh3_large --dtype=bfloat16 --no_hf   # GPU: MFU

One step = forward, backward and an AdamW update on a fixed random batch. Times are medians of
`--steps` steps after `--warmup`; ours is one jitted function with the state donated. Every runner
takes its turn step by step, so all see the same load on a shared machine. The process starts with
glibc's huge-page tunable, as launch/run.py does (`--no_hugepages`: without), so torch's runners run
with it too.

The ceilings are runners too: one "GEMM step" runs every matrix product of a training step
(forward, and both products of each in the backward, at the model's shapes, attention's batched
products included) as plain matmuls and nothing else, in JAX float32, JAX bfloat16 and torch
bfloat16. Their FLOPs are exactly the step's model FLOPs below, so "fraction of the JAX float32
ceiling" = GEMM-step time / our step time: what our step would reach if everything but its
matmuls were free and each matmul ran as fast as XLA runs it alone.

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
import collections
import dataclasses
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from anywhere
if __name__ == "__main__" and "--no_hugepages" not in sys.argv:  # as launch/run.py starts: glibc reads it at start
    from ankh3.host_malloc import reexec_with_hugepages

    reexec_with_hugepages()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from ankh3.model import T5, ModelConfig, attention_impl, get_shape  # noqa: E402

H100_BF16_PEAK = 989e12


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="bench_cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--attention", default="auto", help="auto: cpu_kernels on CPU, cudnn/xla on accelerators")
    p.add_argument("--remat", default="none")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--enc_len", type=int, default=512)
    p.add_argument("--dec_len", type=int, default=128)
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no_hf", action="store_true", help="skip the PyTorch/HF comparison and the torch ceiling")
    p.add_argument("--no_ceilings", action="store_true", help="skip the GEMM-step ceilings")
    p.add_argument("--scan_unroll", type=int, default=1, help="ModelConfig.scan_unroll of ours")
    p.add_argument("--also_unroll", type=int, default=0,
                   help="also time ours (and its bf16 with --also_bf16) with this scan_unroll (0: no)")
    p.add_argument("--also_bf16", action="store_true", help="also time ours with dtype bfloat16")
    p.add_argument("--force_torch_bf16", action="store_true",
                   help="time torch's bf16 runners even where its bf16 matmul has no fast kernel (minutes per step)")
    p.add_argument("--torch_compile", action="store_true", help="also time HF under torch.compile")
    p.add_argument("--compile_depths", default="4,48", help="encoder depths for the compile-time figure ('' skips)")
    p.add_argument("--profile_dir", default="", help="also trace 2 of our steps there (jax.profiler) and print "
                   "where their time goes, by kind of XLA op")
    p.add_argument("--no_hugepages", action="store_true", help="run without glibc's malloc.hugetlb=1, which "
                   "launch/run.py (and so this benchmark, by default) starts with: ankh3/host_malloc.py")
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


def step_gemms(cfg: ModelConfig, batch: int, le: int, ld: int) -> list[tuple[int, int, int, int]]:
    """Every matrix product of one training step as (batch, m, k, n): [batch] x [m, k] @ [k, n].

    The forward's products, then for each its two backward products (dA = dC B^T, dB = A^T dC);
    projections act on all B*L tokens at once, attention's products are batched over B*heads.
    """
    d, i, f, v, kv = cfg.d_model, cfg.inner_dim, cfg.d_ff, cfg.vocab_size, cfg.d_kv
    me, md, bn = batch * le, batch * ld, batch * cfg.num_heads
    dense = ([(me, d, i)] * 3 + [(me, i, d)] + [(me, d, f)] * 2 + [(me, f, d)]) * cfg.num_encoder_layers
    dense += ([(md, d, i)] * 4 + [(md, i, d)] * 2 + [(me, d, i)] * 2 + [(md, d, f)] * 2 + [(md, f, d)]) \
        * cfg.num_decoder_layers + [(md, d, v)]
    batched = [(le, kv, le), (le, le, kv)] * cfg.num_encoder_layers
    batched += [(ld, kv, ld), (ld, ld, kv), (ld, kv, le), (ld, le, kv)] * cfg.num_decoder_layers
    forward = [(1, m, k, n) for m, k, n in dense] + [(bn, m, k, n) for m, k, n in batched]
    backward = [g for b, m, k, n in forward for g in ((b, m, n, k), (b, k, m, n))]
    return forward + backward


def gemm_flops(gemms) -> float:
    return float(sum(2 * b * m * k * n for b, m, k, n in gemms))


def jax_gemm_runner(gemms, dtype, accumulate=None):
    """Run every product of `gemms` once, each as its own jitted matmul (nothing else in the program).

    accumulate=jnp.float32 asks for a float32 result of bfloat16 operands, the product XLA:CPU runs
    on AMX/avx512_bf16 (a bf16 result it computes by a slower path), and the one our bf16 step uses.
    """
    matmul = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=accumulate))
    counts = collections.Counter(gemms)
    rng = np.random.default_rng(0)
    operands = {shape: (jnp.asarray(rng.normal(size=(shape[0], shape[1], shape[2])), dtype),
                        jnp.asarray(rng.normal(size=(shape[0], shape[2], shape[3])), dtype)) for shape in counts}

    def run():
        for shape, count in counts.items():
            a, b = operands[shape]
            for _ in range(count):
                matmul(a, b).block_until_ready()

    return run


def torch_gemm_runner(gemms, dtype_name: str):
    import torch

    dtype = getattr(torch, dtype_name)
    counts = collections.Counter(gemms)
    operands = {shape: (torch.randn(shape[0], shape[1], shape[2], dtype=dtype),
                        torch.randn(shape[0], shape[2], shape[3], dtype=dtype)) for shape in counts}

    def run():
        with torch.no_grad():
            for shape, count in counts.items():
                a, b = operands[shape]
                for _ in range(count):
                    torch.matmul(a, b)

    return run


def torch_matmul_rates(n: int = 512) -> dict[str, float]:
    """GFLOP/s of one n x n torch matmul in float32 and bfloat16. On CPUs without avx512_bf16/AMX,
    torch falls back to a scalar bf16 kernel (~1 GFLOP/s against ~100 for float32): then the bf16
    torch runners would take minutes per step and compare nothing but that fallback."""
    import torch

    rates = {}
    for name in ("float32", "bfloat16"):
        a, b = torch.randn(n, n, dtype=getattr(torch, name)), torch.randn(n, n, dtype=getattr(torch, name))
        torch.matmul(a, b)
        start = time.perf_counter()
        torch.matmul(a, b)
        rates[name] = 2 * n ** 3 / (time.perf_counter() - start) / 1e9
    return rates


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


def profile_ours(run, trace_dir: str, steps: int = 2) -> dict[str, float]:
    """Seconds per step spent in each kind of XLA:CPU op (name without its .N suffix), summed over threads.

    ynn_fusion/dot are the matmuls; wrapped_broadcast and copy are mostly scan's zero-filled buffers.
    """
    import glob
    import gzip
    import json
    import re

    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        for _ in range(steps):
            run()
    path = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True))[-1]
    with gzip.open(path) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    totals = collections.Counter()
    for event in events:
        name = event.get("name", "")
        if event.get("ph") == "X" and not name.startswith(("ThunkExecutor", "$", "SlinkyThreadPool", "while", "Pjit")):
            totals[re.sub(r"\.\d+$", "", name)] += event.get("dur", 0) * 1e-6 / steps
    return dict(totals.most_common())


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


def hf_runner(cfg: ModelConfig, batch, compile_model: bool, autocast: bool = False):
    """Run one HF training step (forward, backward, AdamW), eager or under torch.compile.

    autocast: the forward under `torch.autocast("cpu", torch.bfloat16)` (float32 parameters, bf16
    matmuls), the one-line change a torch user makes for speed on a CPU with bf16 instructions.
    """
    import contextlib

    import torch

    model = hf_model(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = {k: torch.from_numpy(v) for k, v in batch.items()}
    mask = inputs["encoder_tokens"] != 0
    forward = torch.compile(model) if compile_model else model

    def run():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16) if autocast else contextlib.nullcontext():
            out = forward(input_ids=inputs["encoder_tokens"], attention_mask=mask,
                          decoder_input_ids=inputs["decoder_inputs"], labels=inputs["decoder_targets"].long())
        out.loss.backward()
        optimizer.step()

    return run


OURS = "ours (jax, jit+donate)"
JAX_F32_CEILING = "ceiling: JAX f32 GEMM step"
JAX_BF16_F32_CEILING = "ceiling: JAX bf16->f32 GEMM step"
BF16 = "ours, bfloat16 compute"
AUTOCAST = "HF T5 eager, bf16 autocast"


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cfg = get_shape(args.shape, dtype=args.dtype, attention=args.attention, remat=args.remat,
                    scan_unroll=args.scan_unroll)
    batch = make_batch(cfg, args.batch, args.enc_len, args.dec_len)
    flops = step_flops(cfg, args.batch, args.enc_len, args.dec_len)
    gemms = step_gemms(cfg, args.batch, args.enc_len, args.dec_len)
    assert abs(gemm_flops(gemms) / flops - 1) < 1e-9, "the GEMM step must do the step's model FLOPs"
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}  shape={args.shape} dtype={args.dtype} "
          f"attention={attention_impl(cfg)} remat={args.remat} batch={args.batch} Le={args.enc_len} "
          f"Ld={args.dec_len}  GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}  load average {os.getloadavg()[0]:.1f}  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    run_ours, compile_s = jax_runner(cfg, batch)
    runners = {OURS: run_ours}
    variants = {OURS: cfg}
    if args.also_bf16:
        variants[BF16] = dataclasses.replace(cfg, dtype="bfloat16")
    if args.also_unroll:  # each of the above with its layer scans unrolled
        variants |= {f"{name}, scan_unroll={args.also_unroll}": dataclasses.replace(c, scan_unroll=args.also_unroll)
                     for name, c in variants.items()}
    for name, variant in variants.items():
        if name != OURS:
            runners[name] = jax_runner(variant, batch)[0]
    torch_bf16 = False
    if not args.no_hf:
        rates = torch_matmul_rates()
        torch_bf16 = args.force_torch_bf16 or rates["bfloat16"] >= 0.5 * rates["float32"]
        print(f"torch 512x512 matmul: float32 {rates['float32']:.0f} GFLOP/s, bfloat16 {rates['bfloat16']:.0f} GFLOP/s"
              + ("" if torch_bf16 else " -> no fast bf16 kernel on this CPU: torch bf16 runners skipped "
                 "(--force_torch_bf16 times them anyway)"))
    if not args.no_ceilings:
        runners[JAX_F32_CEILING] = jax_gemm_runner(gemms, jnp.float32)
        runners["ceiling: JAX bf16 GEMM step"] = jax_gemm_runner(gemms, jnp.bfloat16)
        runners[JAX_BF16_F32_CEILING] = jax_gemm_runner(gemms, jnp.bfloat16, jnp.float32)
        if torch_bf16:
            runners["ceiling: torch bf16 GEMM step"] = torch_gemm_runner(gemms, "bfloat16")
    if not args.no_hf:
        runners["HF T5 torch eager f32"] = hf_runner(cfg, batch, compile_model=False)
        if torch_bf16:
            runners[AUTOCAST] = hf_runner(cfg, batch, compile_model=False, autocast=True)
        if args.torch_compile:
            runners["HF T5 torch.compile"] = hf_runner(cfg, batch, compile_model=True)
    times = time_interleaved(runners, args.steps, args.warmup)
    ours = times[OURS]
    print(f"{flops / 1e9:.1f} GFLOP per step (model FLOPs); compile of ours {compile_s:.1f} s; "
          f"load average after {os.getloadavg()[0]:.1f}")
    for name, seconds in times.items():
        line = f"{name + ':':32s} {seconds * 1e3:8.1f} ms/step  {flops / seconds / 1e9:7.1f} GFLOP/s"
        if name != OURS:
            line += f"   time / ours = {seconds / ours:.2f}x"
        print(line)
    if jax.default_backend() == "gpu":
        print(f"MFU {flops / ours / args.peak_flops:.1%} of {args.peak_flops / 1e12:.0f} TFLOP/s")
    if JAX_F32_CEILING in times:
        print(f"ours reaches {times[JAX_F32_CEILING] / ours:.0%} of the JAX float32 GEMM ceiling "
              f"({flops / times[JAX_F32_CEILING] / 1e9:.0f} GFLOP/s measured in this run)")
    if BF16 in times and JAX_BF16_F32_CEILING in times:
        print(f"ours in bfloat16 reaches {times[JAX_BF16_F32_CEILING] / times[BF16]:.0%} of the JAX bf16->f32 GEMM "
              f"ceiling ({flops / times[JAX_BF16_F32_CEILING] / 1e9:.0f} GFLOP/s measured in this run)")
    if AUTOCAST in times:
        best = min((name for name in times if name.startswith(OURS.split(" (")[0])), key=times.get)
        print(f"fastest of ours ({best}): {times[best] * 1e3:.0f} ms/step = {times[best] / times[AUTOCAST]:.2f}x "
              f"the time of HF eager with bf16 autocast ({times[AUTOCAST] * 1e3:.0f} ms/step)")
    if args.profile_dir:
        kinds = profile_ours(run_ours, args.profile_dir)
        total = sum(kinds.values())
        print(f"where our step's op time goes ({total * 1e3:.0f} ms of op time per step, all threads):")
        for kind, seconds in list(kinds.items())[:12]:
            print(f"  {kind:36s} {seconds * 1e3:8.1f} ms  {seconds / total:6.1%}")
    for depth in [int(d) for d in args.compile_depths.split(",") if d]:
        deep = dataclasses.replace(cfg, num_encoder_layers=depth, num_decoder_layers=max(1, depth // 2))
        print(f"compile time, {depth} encoder / {max(1, depth // 2)} decoder layers: "
              f"{compile_seconds(deep, batch):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
