"""Training of one ConvBERT probe on frozen embeddings: AdamW, best epoch on validation,
test evaluated once with the best parameters.

Batches are padded to a few bucket shapes (full batch size, lengths rounded up) so that jit
compiles a handful of programs rather than one per batch.
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

from ankh3.errors import UserError
from ankh3.downstream.embed import bucket_length
from ankh3.downstream.heads import ContactPredictor, HeadConfig, ResidueClassifier, SequenceRegressor

KINDS = ("residue_classification", "regression", "contact")  # as TaskSpec.kind
MIN_CONTACT_SEPARATION = 6  # pairs closer along the chain are trivially in contact


class ProbeError(UserError, ValueError):
    """Probe inputs are inconsistent (kinds, shapes, empty splits)."""


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    epochs: int = 5
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 16
    length_multiple: int = 64  # bucket granularity of padded lengths
    # Training chains longer than this are randomly cropped (per-residue and contact tasks only;
    # 0 = never). Bounds the contact head's B*L*L*p memory on long chains; evaluation never crops.
    max_train_length: int = 0
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


# ---- batching -------------------------------------------------------------------------
def make_batch(split: ProbeSplit, rows: Sequence[int], kind: str, batch_size: int, multiple: int) -> dict:
    """Pads `rows` of a split to (batch_size, bucketed length); dummy rows carry no loss."""
    dim = split.embeddings[rows[0]].shape[-1]
    length = bucket_length(max(len(split.embeddings[i]) for i in rows), multiple)
    x = np.zeros((batch_size, length, dim), np.float32)
    mask = np.zeros((batch_size, length), bool)
    if kind == "regression":
        y, weight = np.zeros((batch_size,), np.float32), np.zeros((batch_size,), np.float32)
    elif kind == "residue_classification":
        y = np.full((batch_size, length), -1, np.int32)
    else:
        y = np.full((batch_size, length, length), -1, np.int8)
    for r, i in enumerate(rows):
        n = len(split.embeddings[i])
        x[r, :n], mask[r, :n] = split.embeddings[i], True
        if kind == "regression":
            y[r], weight[r] = split.targets[i], 1.0
        elif kind == "residue_classification":
            y[r, :n] = split.targets[i]
        else:
            y[r, :n, :n] = split.targets[i]
    batch = {"x": x, "mask": mask, "y": y}
    if kind == "regression":
        batch["weight"] = weight
    return batch


def iterate_batches(split: ProbeSplit, kind: str, cfg: ProbeConfig, rng: np.random.Generator | None):
    """Shuffled (and, with max_train_length, cropped) batches when `rng` is given (training),
    else every example whole and in order (evaluation)."""
    order = rng.permutation(len(split)) if rng is not None else np.arange(len(split))
    for start in range(0, len(split), cfg.batch_size):
        rows = order[start:start + cfg.batch_size].tolist()
        if rng is not None and cfg.max_train_length and kind != "regression":
            cropped = crop_examples(split, rows, kind, cfg.max_train_length, rng)
            yield rows, make_batch(cropped, list(range(len(rows))), kind, cfg.batch_size, cfg.length_multiple)
        else:
            yield rows, make_batch(split, rows, kind, cfg.batch_size, cfg.length_multiple)


def crop_examples(split: ProbeSplit, rows: Sequence[int], kind: str, max_length: int,
                  rng: np.random.Generator) -> ProbeSplit:
    """A random window of at most `max_length` residues of each row, targets cropped alike."""
    embeddings, targets = [], []
    for i in rows:
        emb, target = split.embeddings[i], split.targets[i]
        if len(emb) > max_length:
            s = int(rng.integers(0, len(emb) - max_length + 1))
            emb = emb[s:s + max_length]
            target = target[s:s + max_length] if kind == "residue_classification" else \
                target[s:s + max_length, s:s + max_length]
        embeddings.append(emb)
        targets.append(target)
    return ProbeSplit(embeddings, targets)


# ---- losses ---------------------------------------------------------------------------
def residue_loss(logits, batch):
    labels = batch["y"]
    valid = labels >= 0
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
    return jnp.where(valid, ce, 0.0).sum() / jnp.maximum(valid.sum(), 1)


def regression_loss(values, batch):
    err = jnp.where(batch["weight"] > 0, values - batch["y"], 0.0)
    return (err ** 2).sum() / jnp.maximum(batch["weight"].sum(), 1)


def contact_pair_mask(labels, mask):
    """Pairs that count: both residues real, label known, |i - j| >= 6."""
    length = labels.shape[-1]
    idx = jnp.arange(length)
    far = jnp.abs(idx[:, None] - idx[None, :]) >= MIN_CONTACT_SEPARATION
    return (labels >= 0) & far & mask[:, :, None] & mask[:, None, :]


def contact_loss(logits, batch):
    """Plain BCE over counted pairs (no class re-weighting: precision@L/5 ranks logits, so a
    calibrated-looking imbalance does not hurt the metric)."""
    labels = batch["y"]
    valid = contact_pair_mask(labels, batch["mask"])
    bce = optax.sigmoid_binary_cross_entropy(logits, jnp.where(valid, labels, 0).astype(logits.dtype))
    return jnp.where(valid, bce, 0.0).sum() / jnp.maximum(valid.sum(), 1)


LOSSES = {"residue_classification": residue_loss, "regression": regression_loss, "contact": contact_loss}


# ---- model ----------------------------------------------------------------------------
def build_head(kind: str, dim: int, cfg: HeadConfig, seed: int, *, num_classes: int = 0, label_mean: float = 0.0):
    rngs = nnx.Rngs(seed)
    if kind == "residue_classification":
        if num_classes < 2:
            raise ProbeError(f"residue probe needs num_classes >= 2, got {num_classes}")
        return ResidueClassifier(dim, num_classes, cfg, rngs=rngs)
    if kind == "regression":
        return SequenceRegressor(dim, cfg, label_mean, rngs=rngs)
    if kind == "contact":
        return ContactPredictor(dim, cfg, rngs=rngs)
    raise ProbeError(f"probe kind must be one of {KINDS}, got {kind!r}")


# Module-level jits with the head's graphdef as a static argument: heads of one shape share
# compiled programs across seeds, sources and tasks instead of recompiling per probe.
@functools.partial(jax.jit, static_argnames=("graphdef", "kind", "lr", "weight_decay"))
def _train_step(params, other, opt_state, batch, key, *, graphdef, kind, lr, weight_decay):
    def loss_fn(p):
        out = nnx.merge(graphdef, p, other)(batch["x"], batch["mask"], key)
        return LOSSES[kind](out, batch)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = _optimizer(lr, weight_decay).update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


@functools.partial(jax.jit, static_argnames=("graphdef", "kind"))
def _predict(params, other, x, mask, *, graphdef, kind):
    out = nnx.merge(graphdef, params, other)(x, mask)
    if kind == "contact":
        return jax.nn.sigmoid(out)
    return jnp.argmax(out, -1) if kind == "residue_classification" else out


def _optimizer(lr: float, weight_decay: float) -> optax.GradientTransformation:
    return optax.adamw(lr, weight_decay=weight_decay)


def predict_split(head: tuple, params, split: ProbeSplit, kind: str, cfg: ProbeConfig) -> list:
    """Per-example predictions with padding stripped: classes [L], a float, or probs [L, L]."""
    graphdef, other = head
    preds: list = []
    for rows, batch in iterate_batches(split, kind, cfg, rng=None):
        out = np.asarray(_predict(params, other, batch["x"], batch["mask"], graphdef=graphdef, kind=kind))
        for r, i in enumerate(rows):
            n = len(split.embeddings[i])
            preds.append(float(out[r]) if kind == "regression" else out[r, :n] if kind == "residue_classification"
                         else out[r, :n, :n])
    return preds


# ---- training -------------------------------------------------------------------------
def train_probe(kind: str, splits: dict[str, ProbeSplit], score: Callable[[str, list], dict[str, float]],
                select: str, cfg: ProbeConfig = ProbeConfig(), *, seed: int = 0, num_classes: int = 0,
                higher_is_better: bool = True, eval_splits: Sequence[str] = ("valid", "test")) -> ProbeResult:
    """Trains for `cfg.epochs`, keeps the parameters of the epoch with the best validation
    `select` metric, then evaluates each of `eval_splits` present once with them.

    `score(split_name, predictions)` returns that split's metrics; `splits` needs 'train' and
    'valid'. Seeds fix the head's initialisation, dropout and batch order."""
    if cfg.epochs < 1:
        raise ProbeError(f"probe: epochs must be >= 1, got {cfg.epochs}")
    for name in ("train", "valid"):
        if not len(splits.get(name, ())):
            raise ProbeError(f"probe: split {name!r} is missing or empty")
    train = splits["train"]
    dim = train.embeddings[0].shape[-1]
    label_mean = float(np.mean(train.targets)) if kind == "regression" else 0.0
    model = build_head(kind, dim, cfg.head, seed, num_classes=num_classes, label_mean=label_mean)
    graphdef, params, other = nnx.split(model, nnx.Param, ...)
    opt_state = _optimizer(cfg.lr, cfg.weight_decay).init(params)
    head = (graphdef, other)

    # 'rbg' keys: dropout masks from XLA's RngBitGenerator compile ~2x faster than threefry's.
    rng, key = np.random.default_rng(seed), jax.random.key(seed, impl="rbg")
    best = (-np.inf, 0, params)
    history = []
    for epoch in range(1, cfg.epochs + 1):
        losses = []
        for _, batch in iterate_batches(train, kind, cfg, rng):
            key, sub = jax.random.split(key)
            params, opt_state, loss = _train_step(params, other, opt_state, batch, sub, graphdef=graphdef, kind=kind,
                                                  lr=cfg.lr, weight_decay=cfg.weight_decay)
            losses.append(loss)  # kept on device: a float() per step would stall the accelerator
        value = float(score("valid", predict_split(head, params, splits["valid"], kind, cfg))[select])
        train_loss = float(np.mean(jax.device_get(losses)))
        history.append({"epoch": epoch, "train_loss": train_loss, f"valid_{select}": value})
        # A NaN score (e.g. constant predictions) never wins; lower-is-better metrics are negated.
        ranked = (value if higher_is_better else -value) if np.isfinite(value) else -np.inf
        if epoch == 1 or ranked > best[0]:
            best = (ranked, epoch, params)

    _, best_epoch, params = best
    names = [name for name in eval_splits if name in splits]
    predictions = {name: predict_split(head, params, splits[name], kind, cfg) for name in names}
    metrics = {name: score(name, predictions[name]) for name in names}
    return ProbeResult(metrics, predictions, best_epoch, history)
