"""Training of ConvBERT probes on frozen embeddings: AdamW, best epoch on validation, test evaluated
once with the best parameters.

With `seeds_together`, the heads of several seeds train together: their parameters are stacked and one
jitted, vmapped step updates them all (one dispatch per step); by default seeds train one after another.
Batches hold chains of one length bucket (multiples of `length_multiple`, as the embeddings are
bucketed), so jit compiles a handful of programs per head shape, and padding stays small; seeds differ in head
initialisation, dropout and which chains share a batch.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ankh3.downstream.embed import bucket_length
from ankh3.downstream.heads import HeadConfig
from ankh3.downstream.kinds import KINDS, KindError, contact_pair_mask, get_kind  # noqa: F401 (re-exported)
from ankh3.downstream.kinds import MIN_CONTACT_SEPARATION  # noqa: F401 (re-exported)
from ankh3.errors import UserError


class ProbeError(UserError, ValueError):
    """Probe inputs are inconsistent (kinds, shapes, empty splits)."""


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    epochs: int = 5
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 16
    length_multiple: int = 64  # padded lengths are its multiples (powers of two beyond 8x it)
    # Training chains longer than this are randomly cropped (per-residue and contact tasks only;
    # 0 = never). Bounds the contact head's B*L*L*p memory on long chains; evaluation never crops.
    max_train_length: int = 0
    # Train the seeds' heads in one vmapped program (one dispatch per step for all seeds) rather than
    # one after another. Off by default: measured slower on a 2-core CPU at small sizes, where compiling
    # dominates (benchmarks/RESULTS.md, 2026-12-02).
    seeds_together: bool = False
    head: HeadConfig = HeadConfig()

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["head"] = self.head.to_dict()
        return d


@dataclasses.dataclass
class ProbeSplit:
    """Embeddings [L_i, D] per example with their targets: per-residue int labels [L_i]
    (-1 ignored), a float per example, or an int contact map [L_i, L_i] (-1 ignored)."""

    embeddings: Sequence[np.ndarray]
    targets: Sequence

    def __len__(self) -> int:
        return len(self.embeddings)


@dataclasses.dataclass
class ProbeResult:
    metrics: dict[str, dict[str, float]]  # split -> metric -> value, at the best epoch
    predictions: dict[str, list]  # split -> per-example predictions (classes, values, contact probs)
    best_epoch: int
    history: list[dict[str, float]]  # per epoch: train loss and the validation selection metric


# ---- batching -------------------------------------------------------------------------------------
def padded_length(length: int, multiple: int) -> int:
    """The bucket of a chain, as embed.bucket_length. Multiples rather than powers of two: the contact
    head's work grows with the padded length squared, and doubling buckets padded the bundled train
    chains to 2.2x their pair count (multiples of 64: 1.3x)."""
    return bucket_length(length, multiple)


def make_batch(split: ProbeSplit, rows: Sequence[int], kind: str, batch_size: int, multiple: int) -> dict:
    """Pads `rows` of a split to (batch_size, bucketed length); dummy rows carry no loss."""
    dim = split.embeddings[rows[0]].shape[-1]
    length = padded_length(max(len(split.embeddings[i]) for i in rows), multiple)
    x = np.zeros((batch_size, length, dim), np.float32)
    mask = np.zeros((batch_size, length), bool)
    for r, i in enumerate(rows):
        n = len(split.embeddings[i])
        x[r, :n], mask[r, :n] = split.embeddings[i], True
    return {"x": x, "mask": mask, **get_kind(kind).pad_targets([split.targets[i] for i in rows], batch_size, length)}


def crop_examples(split: ProbeSplit, rows: Sequence[int], kind: str, max_length: int,
                  rng: np.random.Generator) -> ProbeSplit:
    """A random window of at most `max_length` residues of each row, targets cropped alike."""
    crop = get_kind(kind).crop
    embeddings, targets = [], []
    for i in rows:
        emb, target = split.embeddings[i], split.targets[i]
        if len(emb) > max_length:
            s = int(rng.integers(0, len(emb) - max_length + 1))
            emb, target = emb[s:s + max_length], crop(target, s, max_length)
        embeddings.append(emb)
        targets.append(target)
    return ProbeSplit(embeddings, targets)


def train_length(split: ProbeSplit, i: int, kind: str, cfg: ProbeConfig) -> int:
    n = len(split.embeddings[i])
    return min(n, cfg.max_train_length) if cfg.max_train_length and get_kind(kind).crop else n


def epoch_plan(split: ProbeSplit, kind: str, cfg: ProbeConfig, rngs: Sequence[np.random.Generator],
               order_rng: np.random.Generator) -> list[list[list[int]]]:
    """One epoch's batches: per step, per seed, the rows of a batch; every seed's batch at a step comes
    from the same length bucket (so the seeds' batches stack), bucket order drawn by `order_rng`."""
    buckets: dict[int, list[int]] = {}
    for i in range(len(split)):
        buckets.setdefault(padded_length(train_length(split, i, kind, cfg), cfg.length_multiple), []).append(i)
    chunks = {}  # bucket -> per seed, its batches
    for b, members in buckets.items():
        per_seed = []
        for rng in rngs:
            rows = [members[j] for j in rng.permutation(len(members))]
            per_seed.append([rows[k:k + cfg.batch_size] for k in range(0, len(rows), cfg.batch_size)])
        chunks[b] = per_seed
    schedule = [b for b in sorted(chunks) for _ in chunks[b][0]]
    schedule = [schedule[j] for j in order_rng.permutation(len(schedule))]
    taken = {b: 0 for b in chunks}
    steps = []
    for b in schedule:
        steps.append([per_seed[taken[b]] for per_seed in chunks[b]])
        taken[b] += 1
    return steps


def iterate_batches(split: ProbeSplit, kind: str, cfg: ProbeConfig, rng: np.random.Generator | None):
    """One seed's batches: shuffled, bucketed (and, with max_train_length, cropped) when `rng` is
    given (training), else every example whole, grouped by length bucket (evaluation)."""
    if rng is None:
        for rows in eval_plan(split, cfg):
            yield rows, make_batch(split, rows, kind, cfg.batch_size, cfg.length_multiple)
        return
    for (rows,) in epoch_plan(split, kind, cfg, [rng], rng):
        yield rows, train_batch(split, rows, kind, cfg, rng)


def train_batch(split: ProbeSplit, rows: list[int], kind: str, cfg: ProbeConfig, rng: np.random.Generator) -> dict:
    if cfg.max_train_length and get_kind(kind).crop:
        split, rows = crop_examples(split, rows, kind, cfg.max_train_length, rng), list(range(len(rows)))
    return make_batch(split, rows, kind, cfg.batch_size, cfg.length_multiple)


def eval_plan(split: ProbeSplit, cfg: ProbeConfig) -> list[list[int]]:
    """Rows sorted by length, in batches that each fall in one bucket."""
    order = np.argsort([len(e) for e in split.embeddings], kind="stable").tolist()
    batches: list[list[int]] = []
    for i in order:
        b = padded_length(len(split.embeddings[i]), cfg.length_multiple)
        if batches and len(batches[-1]) < cfg.batch_size and \
                padded_length(len(split.embeddings[batches[-1][0]]), cfg.length_multiple) == b:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def stack(batches: list[dict]) -> dict:
    return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


# ---- compiled steps: one program per (head shape, batch shape), every seed at once ----------------
@functools.partial(jax.jit, static_argnames=("graphdef", "kind", "lr", "weight_decay"))
def _train_step(params, other, opt_state, batch, keys, *, graphdef, kind, lr, weight_decay):
    loss_of = get_kind(kind).loss

    def one(p, o, state, b, key):
        key, sub = jax.random.split(key)

        def loss_fn(p):
            return loss_of(nnx.merge(graphdef, p, o)(b["x"], b["mask"], sub), b)

        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, state = _optimizer(lr, weight_decay).update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss, key

    return over_seeds(one, params, other, opt_state, batch, keys)


@functools.partial(jax.jit, static_argnames=("graphdef", "kind"))
def _predict(params, other, x, mask, *, graphdef, kind):
    output = get_kind(kind).output
    return over_seeds(lambda p, o: output(nnx.merge(graphdef, p, o)(x, mask)), params, other)


def over_seeds(fn, *stacked):
    """`fn` over the leading (seed) axis of every argument: vmapped, or a plain call for one seed
    (XLA:CPU compiles batched matmuls more slowly; one seed keeps the unbatched program)."""
    if jax.tree.leaves(stacked[0])[0].shape[0] > 1:
        return jax.vmap(fn)(*stacked)
    out = fn(*jax.tree.map(lambda a: a[0], stacked))
    return jax.tree.map(lambda a: a[None], out)


def _optimizer(lr: float, weight_decay: float) -> optax.GradientTransformation:
    return optax.adamw(lr, weight_decay=weight_decay)


@functools.partial(jax.jit, static_argnames=("lr", "weight_decay"))
def _init_optimizer(params, *, lr, weight_decay):
    return jax.vmap(_optimizer(lr, weight_decay).init)(params)


@jax.jit
def _seed_keys(seeds):
    # 'rbg' keys: dropout masks from XLA's RngBitGenerator compile ~2x faster than threefry's.
    return jax.vmap(lambda s: jax.random.key(s, impl="rbg"))(seeds)


@jax.jit
def _keep_best(improved, params, best):
    """Each seed's parameters where its validation score improved, its best so far elsewhere."""
    return jax.tree.map(lambda p, b: jnp.where(improved.reshape((-1,) + (1,) * (p.ndim - 1)), p, b), params, best)


def predict_split(head: tuple, params, split: ProbeSplit, kind: str, cfg: ProbeConfig) -> list[list]:
    """Per seed, per-example predictions with padding stripped: classes [L], a float, or probs [L, L]."""
    graphdef, other = head
    strip = get_kind(kind).strip
    n_seeds = jax.tree.leaves(params)[0].shape[0]
    preds: list[list] = [[None] * len(split) for _ in range(n_seeds)]
    for rows in eval_plan(split, cfg):
        batch = make_batch(split, rows, kind, cfg.batch_size, cfg.length_multiple)
        out = np.asarray(_predict(params, other, batch["x"], batch["mask"], graphdef=graphdef, kind=kind))
        for s in range(n_seeds):
            for r, i in enumerate(rows):
                preds[s][i] = strip(out[s, r], len(split.embeddings[i]))
    return preds


def build_head(kind: str, dim: int, cfg: HeadConfig, seed: int | jax.Array, *, num_classes: int = 0,
               label_mean: float = 0.0):
    try:
        return get_kind(kind).make_head(dim, cfg, nnx.Rngs(seed), num_classes, label_mean)
    except KindError as e:
        raise ProbeError(f"probe: {e}") from None


def init_heads(kind: str, dim: int, cfg: HeadConfig, seeds: Sequence[int], *, num_classes: int = 0,
               label_mean: float = 0.0) -> tuple:
    """(graphdef, params, other) of one head per seed, stacked on a leading seed axis, with the values
    `build_head` gives each seed. Initialised in one compiled call: built eagerly, every parameter
    shape compiled its own tiny random program (10 s of a contact probe's 4 minutes on 2 cores)."""
    graphdef = head_graphdef(kind, dim, cfg, num_classes)
    params, other = _init_states(np.asarray(seeds, np.int32), np.float32(label_mean), kind=kind, dim=dim, cfg=cfg,
                                 num_classes=num_classes)
    return graphdef, params, other


@functools.lru_cache(maxsize=64)
def head_graphdef(kind: str, dim: int, cfg: HeadConfig, num_classes: int):
    """The structure of a head, traced abstractly once per head shape (0.2 s each on 2 cores; a run of
    3 tasks, 3 sources and 3 seeds asked for it 27 times)."""
    return nnx.split(nnx.eval_shape(lambda: build_head(kind, dim, cfg, 0, num_classes=num_classes)), nnx.Param, ...)[0]


@functools.partial(jax.jit, static_argnames=("kind", "dim", "cfg", "num_classes"))
def _init_states(seeds, label_mean, *, kind, dim, cfg, num_classes):
    def one(seed):
        # A key, as nnx.Rngs makes from an int seed: Rngs takes no traced int.
        head = build_head(kind, dim, cfg, jax.random.key(seed), num_classes=num_classes, label_mean=label_mean)
        return nnx.split(head, nnx.Param, ...)[1:]

    return jax.vmap(one)(seeds)


# ---- training -------------------------------------------------------------------------------------
def train_probe(kind: str, splits: dict[str, ProbeSplit], score: Callable[[str, list], dict[str, float]],
                select: str, cfg: ProbeConfig = ProbeConfig(), *, seed: int = 0, num_classes: int = 0,
                higher_is_better: bool = True, eval_splits: Sequence[str] = ("valid", "test")) -> ProbeResult:
    """One seed's probe (see `train_probes`)."""
    return train_probes(kind, splits, score, select, cfg, seeds=(seed,), num_classes=num_classes,
                        higher_is_better=higher_is_better, eval_splits=eval_splits)[0]


def train_probes(kind: str, splits: dict[str, ProbeSplit], score: Callable[[str, list], dict[str, float]],
                 select: str, cfg: ProbeConfig = ProbeConfig(), *, seeds: Sequence[int] = (0,), num_classes: int = 0,
                 higher_is_better: bool = True, eval_splits: Sequence[str] = ("valid", "test"),
                 on_step: Callable[[int, int], None] | None = None) -> list[ProbeResult]:
    """Trains one head per seed for `cfg.epochs`, keeps each head's parameters of the epoch with the best
    validation `select` metric, then evaluates each of `eval_splits` present once with them.

    `score(split_name, predictions)` returns that split's metrics; `splits` needs 'train' and
    'valid'. `on_step(done, total)` follows the optimizer steps (progress)."""
    if cfg.epochs < 1:
        raise ProbeError(f"probe: epochs must be >= 1, got {cfg.epochs}")
    for name in ("train", "valid"):
        if not len(splits.get(name, ())):
            raise ProbeError(f"probe: split {name!r} is missing or empty")
    seeds = [int(s) for s in seeds]
    if len(seeds) > 1 and not cfg.seeds_together:
        results = []
        for k, seed in enumerate(seeds):
            def seed_step(done, total, k=k):
                if on_step is not None:
                    on_step(k * total + done, total * len(seeds))
            results += train_probes(kind, splits, score, select, cfg, seeds=(seed,), num_classes=num_classes,
                                    higher_is_better=higher_is_better, eval_splits=eval_splits, on_step=seed_step)
        return results
    train = splits["train"]
    dim = train.embeddings[0].shape[-1]
    label_mean = float(np.mean(train.targets)) if kind == "regression" else 0.0
    graphdef, params, other = init_heads(kind, dim, cfg.head, seeds, num_classes=num_classes, label_mean=label_mean)
    opt_state = _init_optimizer(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    head = (graphdef, other)

    keys = _seed_keys(np.asarray(seeds, np.uint32))
    rngs = [np.random.default_rng(s) for s in seeds]
    order_rng = np.random.default_rng(seeds)
    steps_per_epoch = len(epoch_plan(train, kind, cfg, [np.random.default_rng(0)], np.random.default_rng(0)))
    total, done = steps_per_epoch * cfg.epochs, 0
    best_value = np.full(len(seeds), -np.inf)
    best_epoch = np.zeros(len(seeds), int)
    best = params
    history: list[list[dict]] = [[] for _ in seeds]
    for epoch in range(1, cfg.epochs + 1):
        losses = []
        for rows_per_seed in epoch_plan(train, kind, cfg, rngs, order_rng):
            batch = stack([train_batch(train, rows, kind, cfg, rng) for rows, rng in zip(rows_per_seed, rngs)])
            params, opt_state, loss, keys = _train_step(params, other, opt_state, batch, keys, graphdef=graphdef,
                                                        kind=kind, lr=cfg.lr, weight_decay=cfg.weight_decay)
            losses.append(loss)  # kept on device: a float() per step would stall the accelerator
            done += 1
            if on_step is not None:
                on_step(done, total)
        valid = predict_split(head, params, splits["valid"], kind, cfg)
        train_loss = np.mean(np.stack(jax.device_get(losses)), axis=0)
        improved = np.zeros(len(seeds), bool)
        for s, predictions in enumerate(valid):
            value = float(score("valid", predictions)[select])
            history[s].append({"epoch": epoch, "train_loss": float(train_loss[s]), f"valid_{select}": value})
            # A NaN score (e.g. constant predictions) never wins; lower-is-better metrics are negated.
            ranked = (value if higher_is_better else -value) if np.isfinite(value) else -np.inf
            improved[s] = epoch == 1 or ranked > best_value[s]
            if improved[s]:
                best_value[s], best_epoch[s] = ranked, epoch
        best = _keep_best(improved, params, best)

    names = [name for name in eval_splits if name in splits]
    predictions = {name: predict_split(head, best, splits[name], kind, cfg) for name in names}
    return [ProbeResult({name: score(name, predictions[name][s]) for name in names},
                        {name: predictions[name][s] for name in names}, int(best_epoch[s]), history[s])
            for s in range(len(seeds))]
