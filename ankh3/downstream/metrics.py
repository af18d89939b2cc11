"""Downstream metrics: Q3/Q8 accuracy, contact precision at L, L/2, L/5 by range, Spearman/Pearson/MSE.

`score_split(spec, targets, predictions)` computes every metric a `TaskSpec` names for one split;
`flatten_metrics` turns {split: {metric: value}} into the flat `test/q3` names that are logged.
"""
from __future__ import annotations

import numpy as np
import scipy.stats

CONTACT_THRESHOLD = 8.0  # Å between CB atoms

# Sequence-separation ranges of the contact literature (CASP / TAPE): [min_sep, max_sep], None = open.
CONTACT_RANGES = {"short": (6, 11), "medium": (12, 23), "long": (24, None)}
CONTACT_FRACTIONS = {"l": 1, "l2": 2, "l5": 5}


def contact_map(coords: np.ndarray, threshold: float = CONTACT_THRESHOLD) -> np.ndarray:
    """int8 [L, L]: 1 where CB atoms are closer than `threshold` Å, 0 if not, -1 if either is unresolved."""
    coords = np.asarray(coords, np.float32)
    dist = np.sqrt(((coords[:, None, :] - coords[None, :, :]) ** 2).sum(-1))
    out = (dist < threshold).astype(np.int8)
    resolved = ~np.isnan(coords).any(-1)
    out[~(resolved[:, None] & resolved[None, :])] = -1
    return out


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

    Pairs involving an unresolved residue (`valid` False; per residue [L] or per pair [L, L]) are
    neither ranked nor counted. When fewer candidate pairs exist than L/top_fraction, all are taken;
    NaN when there are none.
    """
    k = len(scores) // top_fraction
    pairs = candidate_pairs(scores, contacts, valid, min_sep)
    return precision_at(ranked_hits(*pairs, min_sep, max_sep, max(k, 1)), k)


def candidate_pairs(scores, contacts, valid, min_sep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ranking key: the negated score, is a contact, j - i) of the pairs i < j with j - i >= min_sep whose
    residues are resolved, in row-major position order."""
    scores = np.asarray(scores, np.float32)
    i, j = np.triu_indices(scores.shape[0], k=max(min_sep, 1))
    if valid is not None:
        valid = np.asarray(valid, bool)
        keep = valid[i, j] if valid.ndim == 2 else (valid[i] & valid[j])
        i, j = i[keep], j[keep]
    return -scores[i, j], np.asarray(contacts, bool)[i, j], j - i


def ranked_hits(keys, hits, separation, min_sep: int, max_sep: int | None, top: int) -> np.ndarray:
    """Whether each of the `top` best-scored candidate pairs with min_sep <= j - i <= max_sep is a contact,
    best first (`candidate_pairs` gives the first three arguments)."""
    in_range = separation >= min_sep
    if max_sep is not None:
        in_range &= separation <= max_sep
    return hits[in_range][top_order(keys[in_range], top)]


def top_order(keys: np.ndarray, top: int) -> np.ndarray:
    """The first `top` indices of a stable ascending argsort of `keys` (ties in position order, so results
    are reproducible), without sorting them all: a partition finds the top-th smallest key, and only the
    keys up to it, ties included, are sorted."""
    if top >= len(keys):
        return np.argsort(keys, kind="stable")
    kth = np.partition(keys, top - 1)[top - 1]
    if np.isnan(kth):  # NaN scores (a diverged head) sort last, as in a full sort
        return np.argsort(keys, kind="stable")[:top]
    candidates = np.flatnonzero(keys <= kth)  # in position order
    return candidates[np.argsort(keys[candidates], kind="stable")][:top]


def precision_at(hits: np.ndarray, k: int) -> float:
    if len(hits) == 0:
        return float("nan")
    return float(hits[:min(max(k, 1), len(hits))].mean())


def contact_precisions(scores, contacts, valid=None) -> dict[str, float]:
    """P@L, P@L/2, P@L/5 for short, medium and long range, named `p_l5_long` etc.: each range's pairs
    ranked by score, of which only the top L (the most any fraction counts) are put in order."""
    length = len(scores)
    pairs = candidate_pairs(scores, contacts, valid, min(lo for lo, _ in CONTACT_RANGES.values()))
    out = {}
    for range_name, (lo, hi) in CONTACT_RANGES.items():
        ranked = ranked_hits(*pairs, lo, hi, max(length, 1))
        for frac_name, fraction in CONTACT_FRACTIONS.items():
            out[f"p_{frac_name}_{range_name}"] = precision_at(ranked, length // fraction)
    return out


def mean_contact_precisions(score_maps, contact_maps) -> dict[str, float]:
    """Per-protein contact precisions against int8 maps (`contact_map`: 1, 0, -1 unresolved), averaged
    over proteins (NaNs skipped)."""
    per_protein = [contact_precisions(scores, target == 1, target >= 0)
                   for scores, target in zip(score_maps, contact_maps, strict=True)]
    if not per_protein:
        return {}
    return {key: nanmean([p[key] for p in per_protein]) for key in per_protein[0]}


def nanmean(values) -> float:
    values = np.asarray(values, np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else float("nan")


def spearman(pred, true) -> float:
    pred, true = as_pair(pred, true)
    if is_constant(pred) or is_constant(true):
        return float("nan")  # undefined; scipy would warn once per call during early probe epochs
    return float(scipy.stats.spearmanr(pred, true).statistic)


def pearson(pred, true) -> float:
    pred, true = as_pair(pred, true)
    if is_constant(pred) or is_constant(true):
        return float("nan")
    return float(scipy.stats.pearsonr(pred, true).statistic)


def as_pair(pred, true) -> tuple[np.ndarray, np.ndarray]:
    pred, true = np.asarray(pred, np.float64).ravel(), np.asarray(true, np.float64).ravel()
    if pred.shape != true.shape:
        raise ValueError(f"{len(pred)} predictions for {len(true)} targets")
    return pred, true


def is_constant(values: np.ndarray) -> bool:
    return len(values) < 2 or bool(np.all(values == values[0]))


def mse(pred, true) -> float:
    pred, true = as_pair(pred, true)
    return float(np.mean((pred - true) ** 2))


def score_split(spec, targets, predictions) -> dict[str, float]:
    """All metrics of `spec` on one split.

    `targets` are the examples' probe targets in order (`Kind.target` of each label: class arrays,
    `contact_map`s, floats); `predictions` are, by kind: per-protein int class arrays [L]
    (residue_classification), per-protein score maps [L, L] (contact), floats (regression).
    """
    from ankh3.downstream.kinds import get_kind  # kinds builds on these metrics

    return get_kind(spec.kind).score(spec, targets, predictions)


def flatten_metrics(by_split: dict[str, dict[str, float]]) -> dict[str, float]:
    """{'test': {'q3': 0.7}} -> {'test/q3': 0.7}, values as plain floats."""
    return {f"{split}/{name}": float(value) for split, metrics in by_split.items() for name, value in metrics.items()}
