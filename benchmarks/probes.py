"""Downstream probes end to end (embedding, head training, evaluation; model and both controls):
today's path against the path before it, in one run.

    python benchmarks/probes.py                                   # 64 chains per split, 3 seeds, 2 epochs
    python benchmarks/probes.py --per_split=0 --seeds=3           # the full bundled splits
    python benchmarks/probes.py --per_split=0 --tasks=ssp3        # one task's full splits

Each path runs in a fresh subprocess (no compiled program or embedding is shared between them), the
paths alternate `--repeats` times, and the best wall time of each is reported with the ratio. Both
embed with the same tiny T5 (random weights: speed does not depend on them), probe ssp3, contact and
gb1 with the model, one-hot and random-encoder embeddings, and print their test metrics so that the
two paths can be seen to learn alike.

`now+cache` is today's path as a user's second run meets it: JAX's persistent compilation cache
(launch/run.py's `--compile_cache`, ankh3/compile_cache.py) filled by one untimed run of the same path,
then timed; on a 2-core CPU the probes of small splits are compile-bound, so this is the path that
matters for every run after the first.

Today's paths run with glibc's huge-page tunable, as `launch/run.py` starts itself (ankh3/host_malloc.py);
`before` runs without it.

`now+1thread` runs XLA:CPU single-threaded (`XLA_FLAGS=--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1`): the probe heads' ops are small, and waking a thread pool for each of
them costs kernel time. Suffixes combine (`now+cache+1thread`).

`before` is the probe path as it was up to commit a9de306, reimplemented faithfully here: one head per
seed trained alone, batches in random order padded to 64-multiples (then powers of two), a compiled
train step and predict step per padded length; embeddings are the library's, and so are the heads, except
that their ConvBERT layer computes as it did up to commit 16a5a6a (`before_convbert_call`: convolution
windows stacked into [B, L, kernel, C], dropout masks from jax.random's 'rbg' keys), and the contact head's
pair term is the einsum over [B, L, L, p] it was before ankh3/downstream/pair_distance.py
(`before_pair_term`). Its contact head no longer symmetrises its logits (a transpose of [B, L, L] up to
commit 1500ea1, dropped since as every term is symmetric), so `before` is a little faster than it was.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run as a script from anywhere

from ankh3.compile_cache import cache_env  # noqa: E402
from ankh3.host_malloc import environment_with_hugepages  # noqa: E402

TASKS = ("ssp3", "contact", "gb1")
ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per_split", type=int, default=64, help="chains per split (0 = all of the bundle)")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {', '.join(TASKS)}")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1, help="alternating runs of each path; best wall time kept")
    p.add_argument("--paths", default="before,now,now+cache,now+1thread")
    p.add_argument("--one", default="", help=argparse.SUPPRESS)  # internal: run one path, print JSON
    args = p.parse_args(argv)
    unknown = sorted(set(args.tasks.split(",")) - set(TASKS))
    if unknown:
        p.error(f"--tasks: unknown {', '.join(unknown)}; use some of {', '.join(TASKS)}")
    return args


# ---- the path before: one head per seed, 64-multiple buckets, batches in random order ----------------
def before_train_probe(kind, splits, score, select, cfg, *, seed, num_classes, higher_is_better, eval_splits):
    import jax
    import numpy as np
    from flax import nnx

    from ankh3.downstream import probe
    from ankh3.downstream.embed import bucket_length

    def batch_of(split, rows, rng):
        if rng is not None and cfg.max_train_length and kind != "regression":
            split, rows = probe.crop_examples(split, rows, kind, cfg.max_train_length, rng), list(range(len(rows)))
        length = bucket_length(max(len(split.embeddings[i]) for i in rows), cfg.length_multiple)
        dim = split.embeddings[rows[0]].shape[-1]
        x, mask = np.zeros((cfg.batch_size, length, dim), np.float32), np.zeros((cfg.batch_size, length), bool)
        for r, i in enumerate(rows):
            n = len(split.embeddings[i])
            x[r, :n], mask[r, :n] = split.embeddings[i], True
        from ankh3.downstream.kinds import get_kind
        return {"x": x, "mask": mask, **get_kind(kind).pad_targets([split.targets[i] for i in rows], cfg.batch_size,
                                                                     length)}

    def batches(split, rng):
        order = rng.permutation(len(split)) if rng is not None else np.arange(len(split))
        for start in range(0, len(split), cfg.batch_size):
            rows = order[start:start + cfg.batch_size].tolist()
            yield rows, batch_of(split, rows, rng)

    def predict(params, split):
        out_all = []
        for rows, b in batches(split, None):
            out = np.asarray(_before_predict(params, other, b["x"], b["mask"], graphdef=graphdef, kind=kind))
            for r, i in enumerate(rows):
                n = len(split.embeddings[i])
                out_all.append(float(out[r]) if kind == "regression" else out[r, :n] if kind != "contact"
                               else out[r, :n, :n])
        return out_all

    train = splits["train"]
    label_mean = float(np.mean(train.targets)) if kind == "regression" else 0.0
    model = probe.build_head(kind, train.embeddings[0].shape[-1], cfg.head, seed, num_classes=num_classes,
                             label_mean=label_mean)
    graphdef, params, other = nnx.split(model, nnx.Param, ...)
    opt_state = probe._optimizer(cfg.lr, cfg.weight_decay).init(params)
    rng, key = np.random.default_rng(seed), jax.random.key(seed, impl="rbg")
    best = (-np.inf, 0, params)
    for epoch in range(1, cfg.epochs + 1):
        for _, b in batches(train, rng):
            key, sub = jax.random.split(key)
            params, opt_state, _ = _before_step(params, other, opt_state, b, sub, graphdef=graphdef, kind=kind,
                                                lr=cfg.lr, weight_decay=cfg.weight_decay)
        value = float(score("valid", predict(params, splits["valid"]))[select])
        ranked = (value if higher_is_better else -value) if np.isfinite(value) else -np.inf
        if epoch == 1 or ranked > best[0]:
            best = (ranked, epoch, params)
    params = best[2]
    predictions = {name: predict(params, splits[name]) for name in eval_splits if name in splits}
    return probe.ProbeResult({n: score(n, p) for n, p in predictions.items()}, predictions, best[1], [])


def before_convbert_call(self, x, mask, key=None):
    """ConvBertLayer.__call__ up to commit 16a5a6a: the same function, computed with stacked windows."""
    import math

    import jax
    import jax.numpy as jnp

    def unfold(t, kernel):
        half = kernel // 2
        padded = jnp.pad(t, ((0, 0), (half, kernel - 1 - half), (0, 0)))
        return jnp.stack([padded[:, j:j + t.shape[1]] for j in range(kernel)], axis=2)

    def drop(t, k):
        if k is None:
            return t
        keep = jax.random.bernoulli(k, 1.0 - self.dropout_rate, t.shape)
        return jax.lax.select(keep, t / (1.0 - self.dropout_rate), jnp.zeros_like(t))

    keys = list(jax.random.split(key, 3)) if key is not None else [None] * 3
    b, length, dim = x.shape
    h, hd = self.heads, self.head_dim
    real = mask[..., None].astype(x.dtype)
    x = x * real
    q, k, v = self.query(x), self.key(x), self.value(x)
    conv_key = jnp.einsum("blkc,kc->blc", unfold(x, self.kernel), self.key_depthwise[...])
    conv_key = conv_key @ self.key_pointwise[...] + self.key_bias[...]
    span = jax.nn.softmax(self.span_kernel(conv_key * q).reshape(b, length, h, self.kernel), axis=-1)
    windows = unfold(self.conv_value(x) * real, self.kernel).reshape(b, length, self.kernel, h, hd)
    conv_out = jnp.einsum("blkhd,blhk->blhd", windows, span)
    qh, kh, vh = (t.reshape(b, length, h, hd) for t in (q, k, v))
    scores = jnp.einsum("bqhd,bkhd->bhqk", qh, kh) / math.sqrt(hd)
    scores = jnp.where(mask[:, None, None, :], scores, -1e9)
    context = jnp.einsum("bhqk,bkhd->bqhd", drop(jax.nn.softmax(scores, axis=-1), keys[0]), vh)
    mixed = jnp.concatenate([context, conv_out], axis=2).reshape(b, length, dim)
    hidden = self.attn_norm(drop(self.attn_out(mixed), keys[1]) + x)
    ff = self.mlp_out(jax.nn.gelu(self.mlp_in(hidden), approximate=False))
    return self.mlp_norm(drop(ff, keys[2]) + hidden)


def before_pair_term(z, v):
    """The contact head's |difference| term up to this change: an einsum over [B, L, L, p]."""
    import jax.numpy as jnp

    return jnp.einsum("bijp,p->bij", jnp.abs(z[:, :, None] - z[:, None]), v)


BEFORE_LAYERS = (before_convbert_call, before_pair_term)


def swap_head_layers(convbert_call, pair_term) -> tuple:
    """Puts a ConvBERT `__call__` and a contact pair term into ankh3.downstream.heads (they take effect
    when a head is next traced); returns the two it replaced, to put back."""
    from ankh3.downstream import heads

    replaced = (heads.ConvBertLayer.__call__, heads.weighted_l1_distance)
    heads.ConvBertLayer.__call__, heads.weighted_l1_distance = convbert_call, pair_term
    return replaced


def _jits():
    import jax
    import optax
    from flax import nnx

    from ankh3.downstream.kinds import get_kind
    from ankh3.downstream.probe import _optimizer

    @functools.partial(jax.jit, static_argnames=("graphdef", "kind", "lr", "weight_decay"))
    def step(params, other, opt_state, batch, key, *, graphdef, kind, lr, weight_decay):
        def loss_fn(p):
            return get_kind(kind).loss(nnx.merge(graphdef, p, other)(batch["x"], batch["mask"], key), batch)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = _optimizer(lr, weight_decay).update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @functools.partial(jax.jit, static_argnames=("graphdef", "kind"))
    def predict(params, other, x, mask, *, graphdef, kind):
        return get_kind(kind).output(nnx.merge(graphdef, params, other)(x, mask))

    return step, predict


def run_one(path: str, args) -> dict:
    """One path end to end in this process: {'wall_s', 'metrics': {task/source: primary test mean}}."""
    global _before_step, _before_predict
    from flax import nnx

    from ankh3.downstream import embed, evaluate, probe
    from ankh3.downstream.tasks import load_task
    from ankh3.model import T5, get_shape
    from ankh3.tokenizer import Tokenizer

    if path == "before":
        swap_head_layers(*BEFORE_LAYERS)
        _before_step, _before_predict = _jits()

        def train_probes(kind, splits, score, select, cfg, *, seeds, on_step=None, **kw):
            return [before_train_probe(kind, splits, score, select, cfg, seed=s, **kw) for s in seeds]

        evaluate.train_probes = train_probes
    cfg = get_shape("tiny")
    start = time.perf_counter()
    data = [load_task(name, max_per_split=args.per_split or None) for name in args.tasks.split(",")]
    results = evaluate.run_tasks(embed.make_model_encode_fn(T5(cfg, rngs=nnx.Rngs(0))), Tokenizer.default(), data,
                                 "[NLU]", seeds=args.seeds, epochs=args.epochs,
                                 random_encode_fn=embed.make_random_encode_fn(cfg, seed=1), progress=False,
                                 probe_config=probe.ProbeConfig())
    wall = time.perf_counter() - start
    metrics = {f"{r.name}/{r.source}": round(r.metrics[f"test/{r.params['primary_metric']}_mean"], 4) for r in results}
    times = os.times()
    return {"wall_s": wall, "user_s": times.user, "sys_s": times.system, "metrics": metrics}


def main(argv=None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args)), flush=True)
        return
    paths = args.paths.split(",")
    best: dict[str, dict] = {}
    cache = tempfile.mkdtemp(prefix="probes-jax-cache-")

    def one(path: str) -> dict:
        cmd = [sys.executable, os.path.abspath(__file__), f"--one={path.split('+')[0]}",
               f"--per_split={args.per_split}", f"--tasks={args.tasks}", f"--seeds={args.seeds}", f"--epochs={args.epochs}"]
        env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
        if not path.startswith("before"):  # as launch/run.py starts today's path
            env = environment_with_hugepages(env) or env
        if "+cache" in path:
            env.update(cache_env(cache))
        if "+1thread" in path:  # XLA:CPU runs each op on the calling thread: no pool to wake per small op
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + ONE_THREAD).strip()
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
        line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"error: path {path} failed:\n{done.stderr[-2000:]}")
        return json.loads(line[len("RESULT "):])

    for warm in sorted({p for p in paths if "+cache" in p}):
        filled = one(warm)
        print(f"[fill] the compile cache for {warm}: {filled['wall_s']:.1f} s wall (not counted)", flush=True)
    for repeat in range(args.repeats):
        for path in paths:
            result = one(path)
            print(f"[{repeat + 1}/{args.repeats}] {path}: {result['wall_s']:.1f} s wall, {result['user_s']:.1f} s user, "
                  f"{result['sys_s']:.1f} s sys",
                  flush=True)
            if path not in best or result["wall_s"] < best[path]["wall_s"]:
                best[path] = result
    print(f"\nprobes end to end: per_split={args.per_split or 'all'}, seeds={args.seeds}, epochs={args.epochs}, "
          f"tasks {args.tasks}; sources model, onehot, random; {os.cpu_count()} CPUs")
    for path in paths:
        print(f"  {path:<20} {best[path]['wall_s']:8.1f} s wall  {best[path]['user_s']:8.1f} s user  "
              f"{best[path]['sys_s']:8.1f} s sys")
    if "before" in best:
        for path in [p for p in paths if p != "before"]:
            print(f"  speed-up of {path} over before (wall): {best['before']['wall_s'] / best[path]['wall_s']:.2f}x")
        print(f"  test primary metric (mean over seeds), before -> {' / '.join(p for p in paths if p != 'before')}:")
        for key, value in best["before"]["metrics"].items():
            others = " / ".join(f"{best[p]['metrics'].get(key, float('nan')):.3f}" for p in paths if p != "before")
            print(f"    {key:<16} {value:.3f} -> {others}")
    shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
