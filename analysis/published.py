"""PUBLISHED reference figures of the Ankh3 paper, shown beside measured results; never measured here.

Source: Alsamkary, Elshaffei, Elkerdawy, Elnaggar, "Ankh3: Multi-Task Pretraining with Sequence
Denoising and Completion Enhances Protein Representations", arXiv:2505.20052 (2025). The published
models were trained on UniRef50 at 1.88B (Large) and 5.73B (XL) parameters and probed on the
benchmarks named below, which are not this repository's bundled splits: the column tells a user
where a run stands, it is not a like-for-like comparison.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Published:
    """One published figure: `low`..`high` (equal for a single value) in the paper's own unit."""

    task: str  # the downstream task name this figure corresponds to (ankh3.downstream.tasks)
    metric: str  # the metric name as logged (q3, spearman, ...)
    benchmark: str  # the paper's test set
    model: str
    embedding_prefix: str  # the task token used to embed ('' where the paper does not say)
    low: float
    high: float
    unit: str  # '%' or '' (a fraction or a correlation)

    def text(self) -> str:
        value = f"{self.low:.2f}" if self.low == self.high else f"{self.low:.2f}-{self.high:.2f}"
        prefix = f" {self.embedding_prefix}" if self.embedding_prefix else ""
        return f"{self.model}{prefix} {value}{self.unit}"


FIGURES = (
    Published("ssp3", "q3", "CASP12", "Ankh3-XL", "[NLU]", 84.40, 84.40, "%"),
    Published("ssp3", "q3", "CASP12", "Ankh3-XL", "[S2S]", 83.76, 83.76, "%"),
    Published("ssp3", "q3", "CASP12", "Ankh3-Large", "[NLU]", 78.03, 78.03, "%"),
    Published("ssp3", "q3", "CASP12", "Ankh3-Large", "[S2S]", 75.49, 75.49, "%"),
    Published("fluorescence", "spearman", "TAPE fluorescence", "Ankh3", "", 0.64, 0.65, ""),
)


def lookup(metric_key: str) -> list[Published]:
    """The published figures matching a flattened downstream metric 'TASK/SOURCE/SPLIT/METRIC_mean'.

    Only the probed model's own embeddings (source 'model') on the held-out 'test' split match:
    controls (one-hot, random encoder) and validation scores have no published counterpart.
    """
    parts = metric_key.split("/")
    if len(parts) != 4 or parts[1] != "model" or parts[2] != "test":
        return []
    task, metric = parts[0], parts[3].removesuffix("_mean")
    return [f for f in FIGURES if f.task == task and f.metric == metric]


def reference_text(metric_key: str) -> str:
    """'published (CASP12): Ankh3-XL [NLU] 84.40%; ...' or '' when nothing matches."""
    found = lookup(metric_key)
    if not found:
        return ""
    benchmarks = sorted({f.benchmark for f in found})
    return f"published ({', '.join(benchmarks)}): " + "; ".join(f.text() for f in found)
