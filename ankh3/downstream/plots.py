"""PNG artifacts of a probe's test predictions: confusion matrix, contact maps, fitness scatter.

matplotlib's Agg backend is chosen per figure (no pyplot state), so plotting works headless and
does not change the backend of a caller's session.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ankh3.figures import new_figure, save_figure


def confusion_matrix(true: Sequence[np.ndarray], pred: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """Counts [true class, predicted class] over residues with a label (>= 0)."""
    t = np.concatenate([np.asarray(x).ravel() for x in true]).astype(np.int64)
    p = np.concatenate([np.asarray(x).ravel() for x in pred]).astype(np.int64)
    keep = t >= 0
    return np.bincount(t[keep] * num_classes + p[keep], minlength=num_classes ** 2).reshape(num_classes, num_classes)


def plot_confusion(true, pred, class_names: Sequence[str], path: str, title: str = "") -> str:
    """Row-normalised confusion matrix (recall on the diagonal), counts written in each cell."""
    counts = confusion_matrix(true, pred, len(class_names))
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 1.2 + 0.55 * len(class_names)
    fig = new_figure(size + 1.0, size)
    ax = fig.add_subplot()
    image = ax.imshow(rates, vmin=0, vmax=1, cmap="Blues")
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, labels=class_names)
    ax.set_yticks(ticks, labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in ticks:
        for j in ticks:
            ax.text(j, i, f"{counts[i, j]}", ha="center", va="center", fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of true class")
    ax.set_title(title or "confusion matrix")
    return save_figure(fig, path)


def plot_contact_maps(true_maps: Sequence[np.ndarray], pred_maps: Sequence[np.ndarray], names: Sequence[str],
                      path: str, max_chains: int = 3) -> str:
    """Per chain: predicted contact probability above the diagonal, true contacts below it, one colour bar."""
    return save_figure(contact_maps_figure(true_maps, pred_maps, names, max_chains), path)


def contact_maps_figure(true_maps, pred_maps, names, max_chains: int = 3):
    """The figure of `plot_contact_maps`, not yet laid out.

    It is taller than the square maps so that tight_layout keeps the two-line titles: with a fixed
    aspect it sizes the axes by their width and would otherwise push the titles off the top.
    """
    n = max(1, min(max_chains, len(true_maps)))
    fig = new_figure(3.6 * n + 0.9, 4.5)
    axes = [fig.add_subplot(1, n, k + 1) for k in range(n)]
    image = None
    for k, ax in enumerate(axes[:len(true_maps)]):
        true = np.asarray(true_maps[k], np.float32)
        pred = np.asarray(pred_maps[k], np.float32)
        upper = np.triu(np.ones_like(pred, bool), 1)
        canvas = np.where(upper, pred, np.where(true < 0, np.nan, true))
        image = ax.imshow(canvas, vmin=0, vmax=1, cmap="Greys", interpolation="nearest")
        ax.set_title(f"{_short(names[k])} (L={len(true)})\nupper: predicted, lower: true", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if image is not None:
        # Inset to the right of the last map: tight_layout counts it, and the maps keep one size.
        cax = axes[-1].inset_axes([1.05, 0.0, 0.06, 1.0])
        fig.colorbar(image, cax=cax, label="contact probability (true: 0 or 1)")
    return fig


def _short(name: str, width: int = 24) -> str:
    return name if len(name) <= width else name[:width - 1] + "\u2026"


def plot_scatter(true: Sequence[float], pred: Sequence[float], path: str, title: str = "") -> str:
    """Predicted vs true values with the y = x line."""
    t, p = np.asarray(true, np.float64), np.asarray(pred, np.float64)
    fig = new_figure(4.5, 4.5)
    ax = fig.add_subplot()
    ax.scatter(t, p, s=6, alpha=0.5)
    if t.size:
        lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(title or "predicted vs true")
    return save_figure(fig, path)
