"""What each kind of downstream task is: its head, probe target, loss, prediction, metrics and plot.

One record per kind; every other module looks the kind up here instead of branching on its name.
A new kind is one more `Kind` in `KINDS` (and a reader that yields its labels).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ankh3.downstream import metrics
from ankh3.errors import UserError

MIN_CONTACT_SEPARATION = 6  # pairs closer along the chain are trivially in contact
CONTACT_METRICS = tuple(f"p_{k}_{r}" for r in ("long", "medium", "short") for k in ("l", "l2", "l5"))


class KindError(UserError, ValueError):
    """A task names a kind that does not exist, or options its kind cannot use."""


# ---- losses (masked means over what is scored) -----------------------------------------------------
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


# ---- targets padded into a batch -------------------------------------------------------------------
def pad_residue_targets(targets, batch_size: int, length: int) -> dict:
    y = np.full((batch_size, length), -1, np.int32)
    for r, t in enumerate(targets):
        y[r, :len(t)] = t
    return {"y": y}


def pad_contact_targets(targets, batch_size: int, length: int) -> dict:
    y = np.full((batch_size, length, length), -1, np.int8)
    for r, t in enumerate(targets):
        y[r, :len(t), :len(t)] = t
    return {"y": y}


def pad_regression_targets(targets, batch_size: int, length: int) -> dict:
    y, weight = np.zeros((batch_size,), np.float32), np.zeros((batch_size,), np.float32)
    y[:len(targets)], weight[:len(targets)] = targets, 1.0
    return {"y": y, "weight": weight}


# ---- the record ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Kind:
    """Everything that differs between kinds of task.

    `target(label)` turns an Example's label into what the probe trains on; `crop(target, s, n)` cuts
    a training window (None: never cropped); `output(out)` turns head outputs into predictions inside
    jit; `strip(pred, n)` drops padding from one row's prediction on the host.
    """

    name: str
    higher_is_better: bool
    metrics: Callable[[int], tuple[str, ...]]  # states -> metric names, primary first
    make_head: Callable  # (dim, HeadConfig, rngs, num_classes, label_mean) -> an nnx.Module
    loss: Callable
    target: Callable
    pad_targets: Callable[[list, int, int], dict]
    output: Callable
    strip: Callable
    crop: Callable | None
    score: Callable[[object, list, list], dict]  # (spec, targets, predictions) -> {metric: value}
    plot: Callable                                # (spec, examples, predictions, stem, title) -> png path

    def primary_metric(self, states: int = 0) -> str:
        return self.metrics(states)[0]


def _residue_metrics(states: int) -> tuple[str, ...]:
    if states not in (3, 8):
        raise KindError(f"residue_classification: states must be 3 or 8, got {states!r}")
    return (f"q{states}",)


# Heads (flax) and plots (matplotlib) load on first use: configs read this module without them.
def _residue_head(dim, cfg, rngs, num_classes: int, label_mean: float):
    from ankh3.downstream.heads import ResidueClassifier

    if num_classes < 2:
        raise KindError(f"residue probe needs num_classes >= 2, got {num_classes}")
    return ResidueClassifier(dim, num_classes, cfg, rngs=rngs)


def _contact_head(dim, cfg, rngs, num_classes: int, label_mean: float):
    from ankh3.downstream.heads import ContactPredictor

    return ContactPredictor(dim, cfg, rngs=rngs)


def _regression_head(dim, cfg, rngs, num_classes: int, label_mean: float):
    from ankh3.downstream.heads import SequenceRegressor

    return SequenceRegressor(dim, cfg, label_mean, rngs=rngs)


def _plot_confusion(spec, examples, preds, stem: str, title: str) -> str:
    from ankh3.downstream import plots

    return plots.plot_confusion([ex.label for ex in examples], preds, list(spec.classes), f"{stem}/confusion.png",
                                title)


def _plot_contacts(spec, examples, preds, stem: str, title: str) -> str:
    from ankh3.downstream import plots

    return plots.plot_contact_maps([metrics.contact_map(ex.label) for ex in examples], preds,
                                   [ex.name for ex in examples], f"{stem}/contact_maps.png")


def _plot_scatter(spec, examples, preds, stem: str, title: str) -> str:
    from ankh3.downstream import plots

    return plots.plot_scatter([ex.label for ex in examples], preds, f"{stem}/scatter.png", title)


RESIDUE = Kind(
    "residue_classification", True, _residue_metrics, _residue_head, residue_loss,
    target=lambda label: np.asarray(label, np.int32), pad_targets=pad_residue_targets,
    output=lambda out: jnp.argmax(out, -1), strip=lambda pred, n: pred[:n],
    crop=lambda t, s, n: t[s:s + n],
    score=lambda spec, classes, preds: {spec.primary_metric: metrics.accuracy(preds, classes)},
    plot=_plot_confusion)

CONTACT = Kind(
    "contact", True, lambda states: ("p_l5_long",) + tuple(m for m in CONTACT_METRICS if m != "p_l5_long"),
    _contact_head, contact_loss,
    target=lambda label: metrics.contact_map(label), pad_targets=pad_contact_targets,
    output=jax.nn.sigmoid, strip=lambda pred, n: pred[:n, :n],
    crop=lambda t, s, n: t[s:s + n, s:s + n],
    score=lambda spec, maps, preds: metrics.mean_contact_precisions(preds, maps),
    plot=_plot_contacts)

REGRESSION = Kind(
    "regression", True, lambda states: ("spearman", "pearson", "mse"),
    _regression_head, regression_loss, target=float, pad_targets=pad_regression_targets,
    output=lambda out: out, strip=lambda pred, n: float(pred), crop=None,
    score=lambda spec, values, preds: {"spearman": metrics.spearman(preds, values),
                                       "pearson": metrics.pearson(preds, values), "mse": metrics.mse(preds, values)},
    plot=_plot_scatter)

KINDS: dict[str, Kind] = {k.name: k for k in (RESIDUE, CONTACT, REGRESSION)}


def get_kind(name: str) -> Kind:
    if name not in KINDS:
        raise KindError(f"unknown task kind {name!r}; use one of {', '.join(KINDS)}")
    return KINDS[name]
