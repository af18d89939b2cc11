"""PNG plots of an analysis: learning curves over seeds, downstream metrics with CIs, Optuna's own plots.

Every function writes files into `out_dir` and returns their paths; nothing is shown (Agg backend).
"""
from __future__ import annotations

import math
import os
import re

import numpy as np

from ankh3.figures import new_figure, save_figure

DPI = 100


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # analysis runs on machines without a display
    import matplotlib.pyplot as plt

    return plt


def file_name(text: str) -> str:
    return re.sub(r"[^\w.\-]+", "_", text).strip("_")


def median_band(runs: dict[int, list[tuple[int, float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, median, low, high) over seeds at the steps every seed logged (min..max band)."""
    common = None
    for points in runs.values():
        steps = {s for s, _ in points}
        common = steps if common is None else common & steps
    steps = np.array(sorted(common or ()))
    if steps.size == 0:
        return steps, steps, steps, steps
    table = np.array([[dict(points)[s] for s in steps] for points in runs.values()], np.float64)
    return steps, np.median(table, axis=0), table.min(axis=0), table.max(axis=0)


def objective_of(metric: str) -> tuple[str, str]:
    """'eval/nlu/loss' -> ('nlu', 'eval'); 'train/mix_nlu_s2s/loss' -> ('mix_nlu_s2s', 'train'); a bare
    'train/loss' (runs from before losses carried their objective) -> ('all', 'train')."""
    parts = metric.split("/")
    return (parts[1] if len(parts) == 3 else "all"), parts[0]


def plot_learning_curves(curves: dict[str, dict[str, dict[int, list]]], out_dir: str) -> list[str]:
    """One PNG per objective: per variant the median held-out loss over seeds with a min-max band
    (solid), and the median training loss (dashed, no band)."""
    by_objective: dict[str, dict[str, dict]] = {}
    for metric, variants in curves.items():
        objective, split = objective_of(metric)
        by_objective.setdefault(objective, {})[split] = variants
    paths = []
    for objective, splits in sorted(by_objective.items()):
        fig = new_figure(7, 4.5, dpi=DPI)
        ax = fig.subplots()
        colors = {}
        variants = sorted({v for s in splits.values() for v in s})
        for i, variant in enumerate(variants):
            colors[variant] = f"C{i % 10}"
        for split, style in (("eval", "-"), ("train", "--")):
            for variant, runs in sorted(splits.get(split, {}).items()):
                steps, median, low, high = median_band(runs)
                if steps.size == 0:
                    continue
                label = f"{variant} ({split}, n={len(runs)})"
                ax.plot(steps, median, style, color=colors[variant], label=label, marker="." if steps.size < 30 else None)
                if split == "eval" and len(runs) > 1:
                    ax.fill_between(steps, low, high, color=colors[variant], alpha=0.2)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats / target token)")
        ax.set_title(f"{objective}: median over seeds, band = min..max (held-out)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        paths.append(save_figure(fig, os.path.join(out_dir, f"curves_{file_name(objective)}.png")))
    return paths


def plot_downstream(by_metric: dict[str, list[tuple]], out_dir: str) -> list[str]:
    """One PNG per downstream metric: per variant its mean with the 95% CI over seeds as error bar."""
    paths = []
    for metric, entries in sorted(by_metric.items()):
        fig = new_figure(max(4.0, 1.0 + 0.8 * len(entries)), 4, dpi=DPI)
        ax = fig.subplots()
        names = [e[0] for e in entries]
        means = np.array([e[1] for e in entries])
        lows = np.array([e[2] if math.isfinite(e[2]) else e[1] for e in entries])
        highs = np.array([e[3] if math.isfinite(e[3]) else e[1] for e in entries])
        ax.bar(range(len(entries)), means, color=[f"C{i % 10}" for i in range(len(entries))], alpha=0.8)
        ax.errorbar(range(len(entries)), means, yerr=[means - lows, highs - means], fmt="none", ecolor="black",
                    capsize=4)
        ax.set_xticks(range(len(entries)), [f"{n}\n(n={e[4]})" for n, e in zip(names, entries)], fontsize=8)
        ax.set_ylabel(metric.split("/")[-1])
        ax.set_title(f"{metric}\nmean, 95% bootstrap CI over seeds", fontsize=9)
        finite = np.concatenate([lows, highs])
        span = float(np.ptp(finite)) or abs(float(finite.max())) or 1.0
        ax.set_ylim(float(finite.min()) - 0.5 * span, float(finite.max()) + 0.5 * span)
        ax.grid(alpha=0.3, axis="y")
        paths.append(save_figure(fig, os.path.join(out_dir, f"downstream_{file_name(metric)}.png")))
    return paths


def plot_optuna(study, out_dir: str) -> list[str]:
    """Optuna's optimisation history and parameter importances (when enough trials completed)."""
    import warnings

    import optuna
    from optuna.visualization import matplotlib as ovm

    plt = _pyplot()
    os.makedirs(out_dir, exist_ok=True)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    plots = [("optuna_history.png", ovm.plot_optimization_history)]
    if len(complete) >= 2 and any(t.params for t in complete):
        plots.append(("optuna_importances.png", ovm.plot_param_importances))
    paths = []
    for name, draw in plots:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            try:
                ax = draw(study)
            except (ValueError, RuntimeError):  # e.g. importances of parameters that never varied
                continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(7, 4.5)
        fig.set_dpi(DPI)
        paths.append(save_figure(fig, os.path.join(out_dir, name)))
        plt.close(fig)  # Optuna draws through pyplot, which keeps the figure until closed
    return paths
