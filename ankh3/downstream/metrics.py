"""Downstream metrics: Q3/Q8 accuracy, contact precision at L, L/2, L/5 by range, Spearman/Pearson/MSE.

`score_split(spec, labels, predictions)` computes every metric a `TaskSpec` names for one split;
`flatten_metrics` turns {split: {metric: value}} into the flat `test/q3` names that are logged.
"""
from __future__ import annotations

import numpy as np
import scipy.stats

from ankh3.downstream.tasks import contact_map

# Sequence-separation ranges of the contact literature (CASP / TAPE): [min_sep, max_sep], None = open.
CONTACT_RANGES = {"short": (6, 11), "medium": (12, 23), "long": (24, None)}
CONTACT_FRACTIONS = {"l": 1, "l2": 2, "l5": 5}


def accuracy(pred, true, ignore: int = -1) -> float:
    """Fraction of positions where pred == true, over positions whose true label is not `ignore`.

    Arrays of any matching shape, or lists of per-protein arrays (pooled over residues, as Q3/Q8 are).
    """
    pred, true = pool(pred), pool(true)
    if pred.shape != true.shape:
        raise ValueError(f"accuracy: predictions have shape {pred.shape}, labels {true.shape}")
    scored = true != ignore
    if not scored.any():
        return float("nan")
    return float((pred[scored] == true[scored]).mean())


def pool(arrays) -> np.ndarray:
    if isinstance(arrays, np.ndarray):
        return arrays.ravel()
    return np.concatenate([np.asarray(a).ravel() for a in arrays]) if len(arrays) else np.zeros(0)


def contact_precision(scores, contacts, valid=None, min_sep: int = 24, max_sep: int | None = None,
                      top_fraction: int = 5) -> float:
    """Precision of the top L/`top_fraction` scored pairs (i < j, min_sep <= j - i <= max_sep).

    Pairs involving an unresolved residue (`valid` False) are neither ranked nor counted. When fewer
    candidate pairs exist than L/top_fraction, all are taken; NaN when there are none.
    """
    scores = np.asarray(scores, np.float32)
    contacts = np.asarray(contacts, bool)
    length = scores.shape[0]
    i, j = np.triu_indices(length, k=max(min_sep, 1))
    keep = np.ones(len(i), bool) if max_sep is None else (j - i) <= max_sep
    if valid is not None:
        valid = np.asarray(valid, bool)
        keep &= valid[i, j] if valid.ndim == 2 else (valid[i] & valid[j])
    i, j = i[keep], j[keep]
    if len(i) == 0:
        return float("nan")
    k = min(max(length // top_fraction, 1), len(i))
    # Stable sort on the negated score: ties resolve by position, so results are reproducible.
    top = np.argsort(-scores[i, j], kind="stable")[:k]
    return float(contacts[i[top], j[top]].mean())


def contact_precisions(scores, contacts, valid=None) -> dict[str, float]:
    """P@L, P@L/2, P@L/5 for short, medium and long range, named `p_l5_long` etc."""
    out = {}
    for range_name, (lo, hi) in CONTACT_RANGES.items():
        for frac_name, fraction in CONTACT_FRACTIONS.items():
            out[f"p_{frac_name}_{range_name}"] = contact_precision(scores, contacts, valid, lo, hi, fraction)
    return out


def mean_contact_precisions(score_maps, coords_list) -> dict[str, float]:
    """Per-protein contact precisions from CB coordinates, averaged over proteins (NaNs skipped)."""
    per_protein = []
    for scores, coords in zip(score_maps, coords_list, strict=True):
        target = contact_map(coords)
        per_protein.append(contact_precisions(scores, target == 1, target >= 0))
    if not per_protein:
        return {}
    return {key: nanmean([p[key] for p in per_protein]) for key in per_protein[0]}


def nanmean(values) -> float:
    values = np.asarray(values, np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else float("nan")


def spearman(pred, true) -> float:
    return float(scipy.stats.spearmanr(np.asarray(pred, np.float64), np.asarray(true, np.float64)).statistic)


def pearson(pred, true) -> float:
    return float(scipy.stats.pearsonr(np.asarray(pred, np.float64), np.asarray(true, np.float64)).statistic)


def mse(pred, true) -> float:
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    return float(np.mean((pred - true) ** 2))


def score_split(spec, labels, predictions) -> dict[str, float]:
    """All metrics of `spec` on one split.

    `labels` are the examples' labels in order; `predictions` are, by kind: per-protein int class
    arrays [L] (residue_classification), per-protein score maps [L, L] (contact), floats (regression).
    """
    if spec.kind == "residue_classification":
        return {spec.metrics[0]: accuracy(predictions, labels)}
    if spec.kind == "contact":
        return mean_contact_precisions(predictions, labels)
    if spec.kind == "regression":
        return {"spearman": spearman(predictions, labels), "pearson": pearson(predictions, labels),
                "mse": mse(predictions, labels)}
    raise ValueError(f"unknown task kind {spec.kind!r}")


def flatten_metrics(by_split: dict[str, dict[str, float]]) -> dict[str, float]:
    """{'test': {'q3': 0.7}} -> {'test/q3': 0.7}, values as plain floats."""
    return {f"{split}/{name}": float(value) for split, metrics in by_split.items() for name, value in metrics.items()}
