"""Statistics of a family's runs: mean ± sd over seeds, and the paired difference from the baseline
variant with a bootstrap 95% CI (scipy.stats.bootstrap); the baseline and variant order come from the
experiments file.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import importlib.util
import math
import os

import numpy as np

from analysis.published import reference_text
from analysis.runs import AnalysisError, RunRecord
from ankh3.names import REPO_ROOT as ROOT

CONFIDENCE = 0.95


# ---- statistics -------------------------------------------------------------------------------------
@dataclasses.dataclass
class Row:
    """One (metric, variant) cell of the table."""

    metric: str
    variant: str
    seeds: list[int]
    mean: float
    sd: float
    baseline: str
    diff: float = math.nan  # paired mean difference variant - baseline
    ci_low: float = math.nan
    ci_high: float = math.nan
    pairs: int = 0
    published: str = ""
    mean_ci_low: float = math.nan  # bootstrap 95% CI of the variant's own mean (for the plots)
    mean_ci_high: float = math.nan

    @property
    def n(self) -> int:
        return len(self.seeds)


def select_metrics(records: list[RunRecord], patterns) -> list[str]:
    """Metric names present in any run that match one of the glob patterns, in pattern order."""
    present = sorted({k for r in records for k in r.metrics})
    chosen = []
    for pattern in patterns:
        chosen += [k for k in present if fnmatch.fnmatchcase(k, pattern) and k not in chosen]
    return chosen


def bootstrap_ci(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap CI of the mean: BCa from 10 values on, percentile below (BCa is unstable there)."""
    from scipy.stats import bootstrap

    values = np.asarray(values, np.float64)
    if len(values) < 2:
        return math.nan, math.nan
    if np.ptp(values) == 0:
        return float(values[0]), float(values[0])  # every resample is the same
    method = "BCa" if len(values) >= 10 else "percentile"
    result = bootstrap((values,), np.mean, confidence_level=CONFIDENCE, method=method, n_resamples=9999,
                       rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_difference(variant: dict[int, float], baseline: dict[int, float]) -> tuple[float, float, float, int]:
    """(mean of variant - baseline over shared seeds, CI low, CI high, number of pairs)."""
    seeds = sorted(set(variant) & set(baseline))
    if not seeds:
        return math.nan, math.nan, math.nan, 0
    diffs = np.array([variant[s] - baseline[s] for s in seeds])
    low, high = bootstrap_ci(diffs)
    return float(diffs.mean()), low, high, len(seeds)


def summarize_family(records: list[RunRecord], metrics: list[str], baseline: str,
                     order: list[str] | None = None) -> list[Row]:
    """Rows for every (metric, variant) with at least one value, baseline first within a metric."""
    variants = sorted({r.variant for r in records}, key=lambda v: _variant_rank(v, baseline, order))
    rows = []
    for metric in metrics:
        by_variant = {v: {r.seed: r.metrics[metric] for r in records if r.variant == v and metric in r.metrics}
                      for v in variants}
        base = by_variant.get(baseline, {})
        for variant in variants:
            values = by_variant[variant]
            if not values:
                continue
            array = np.array([values[s] for s in sorted(values)])
            first = not rows or rows[-1].metric != metric  # the published figure once per metric
            row = Row(metric, variant, sorted(values), float(array.mean()),
                      float(array.std(ddof=1)) if len(array) > 1 else math.nan, baseline,
                      published=reference_text(metric) if first else "")
            row.mean_ci_low, row.mean_ci_high = bootstrap_ci(array)
            if variant != baseline and base:
                row.diff, row.ci_low, row.ci_high, row.pairs = paired_difference(values, base)
            rows.append(row)
    return rows


def _variant_rank(variant: str, baseline: str, order: list[str] | None):
    if variant == baseline:
        return (0, 0, variant)
    if order and variant in order:
        return (1, order.index(variant), variant)
    return (2, 0, variant)


def family_module(family: str):
    """experiments/FAMILY.py as a module, or None when there is no such file."""
    path = os.path.join(ROOT, "experiments", f"{family}.py")
    if not os.path.isfile(path):
        return None
    spec = importlib.util.spec_from_file_location(f"aggregate_family_{family}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception:  # noqa: BLE001 -- the table does not need the file; only its baseline name
        return None
    return module


def pick_baseline(family: str, variants: set[str], flag: str | None) -> tuple[str, str]:
    """(baseline variant, where the choice came from)."""
    module = family_module(family)
    candidates = [(flag, "--baseline"), (getattr(module, "BASELINE", None), f"experiments/{family}.py BASELINE")]
    for name, source in candidates:
        if name:
            if flag and name == flag and name not in variants:
                raise AnalysisError(f"--baseline={flag}: no runs of that variant; variants: {', '.join(sorted(variants))}")
            return name, source
    first = sorted(variants)[0]
    return first, "first variant by name (pass --baseline=VARIANT)"


def variant_order(family: str) -> list[str] | None:
    module = family_module(family)
    listed = getattr(module, "VARIANTS", None) if module is not None else None
    return [str(v) for v in listed] if listed else None


def short(text: str) -> str:
    """A sampled parameter for a table cell: floats to 4 significant digits, anything else as it is."""
    try:
        value = float(text)
    except ValueError:
        return text
    return text if value.is_integer() else f"{value:.4g}"

