"""Downstream evaluation driver: embed each task with the frozen encoder and the controls, train
ConvBERT probes over several seeds, aggregate mean/std, and draw the test-set plots.

    results = run_tasks(encode_fn, tokenizer, ["ssp3", "contact", "gb1"], "[NLU]", seeds=3, epochs=5,
                        cache_dir="cache/emb", encoder_id="runs/x/ckpt@5000", out_dir="runs/x/downstream",
                        random_encode_fn=make_random_encode_fn(cfg))
    print(format_results_table(results))
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

import numpy as np

from ankh3.errors import UserError
from ankh3.downstream.embed import EncodeFn, cached_embeddings, onehot_embeddings, sequences_digest
from ankh3.downstream.kinds import get_kind
from ankh3.downstream.metrics import score_split
from ankh3.downstream.probe import ProbeConfig, ProbeSplit, train_probes
from ankh3.downstream.progress import Progress
from ankh3.downstream.tasks import TaskData, load_task
from ankh3.tokenizer import Tokenizer

SOURCES = ("model", "onehot", "random")
EVAL_SPLITS = ("valid", "test")


class EvaluateError(UserError, ValueError):
    """The evaluation was asked for something it cannot run (missing control encoder, bad seeds...)."""


@dataclasses.dataclass
class TaskResult:
    """One (task, embedding source) cell: metrics as `{split}/{metric}_mean` and `_std` over seeds."""

    name: str
    source: str  # 'model' | 'onehot' | 'random'
    metrics: dict[str, float]
    params: dict[str, object]  # flat, loggable: head config, seeds, data sizes, best epochs
    artifacts: list[str]
    # {seed: {split: {metric: value}}}: what a paired comparison with a control (same seeds) needs
    per_seed: dict[int, dict[str, dict[str, float]]] = dataclasses.field(default_factory=dict)


# ---- embeddings per source ------------------------------------------------------------
@dataclasses.dataclass
class _Source:
    name: str
    encode_fn: EncodeFn | None  # None: one-hot residues
    encoder_id: str | None


def resolve_sources(encode_fn, controls, random_encode_fn, encoder_id, random_encoder_id) -> list[_Source]:
    unknown = [c for c in controls if c not in SOURCES[1:]]
    if unknown:
        raise EvaluateError(f"unknown control(s) {unknown}; controls are chosen from {SOURCES[1:]}")
    sources = [_Source("model", encode_fn, encoder_id)]
    if "onehot" in controls:
        sources.append(_Source("onehot", None, None))
    if "random" in controls:
        if random_encode_fn is None:
            raise EvaluateError("controls include 'random' but random_encode_fn is None; pass "
                                "embed.make_random_encode_fn(model_cfg) or drop 'random' from controls")
        # The control is fixed by the model's shape and its init seed: named after the model unless told
        # otherwise (pass random_encoder_id when the control's seed changes between runs).
        random_id = random_encoder_id or (f"random-control-of:{encoder_id}" if encoder_id else None)
        sources.append(_Source("random", random_encode_fn, random_id))
    return sources


def embed_split(source: _Source, tokenizer: Tokenizer, sequences: list[str], prefix: str, memo: dict, *,
                cache_dir: str | None, token_budget: int, progress: bool, desc: str) -> list[np.ndarray]:
    """Per-residue embeddings of one split; tasks on the same chains (ssp3/ssp8/contact) share them."""
    key = (source.name, prefix, sequences_digest(sequences))
    if key not in memo:
        if source.encode_fn is None:
            memo[key] = onehot_embeddings(sequences)
        else:
            memo[key] = cached_embeddings(source.encode_fn, tokenizer, sequences, prefix, cache_dir=cache_dir,
                                          encoder_id=source.encoder_id, token_budget=token_budget,
                                          progress=progress, desc=desc)
    return memo[key]


def probe_targets(data: TaskData) -> dict[str, list]:
    """Per split, what the probe is trained and scored against: class arrays, contact maps from CB
    coordinates, or floats. Made once per task for all sources (contact maps: 13 s per source)."""
    target = get_kind(data.spec.kind).target
    return {split: [target(ex.label) for ex in examples] for split, examples in data.splits.items()}


# ---- aggregation ----------------------------------------------------------------------
def aggregate(per_seed: list[dict[str, dict[str, float]]]) -> dict[str, float]:
    """{split: {metric: v}} per seed -> `{split}/{metric}_mean` and `_std` (sample sd; 0 for one seed)."""
    out = {}
    for split, names in per_seed[0].items():
        for name in names:
            values = np.array([run[split][name] for run in per_seed], np.float64)
            out[f"{split}/{name}_mean"] = float(np.mean(values))
            out[f"{split}/{name}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return out


def normalise_seeds(seeds) -> list[int]:
    if isinstance(seeds, (int, np.integer)):
        if seeds < 1:
            raise EvaluateError(f"seeds={seeds}: give a positive number of seeds or a list of seeds")
        return list(range(int(seeds)))
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise EvaluateError("seeds is empty; give a positive number of seeds or a list of seeds")
    return seeds


def loggable_params(prefix: str, source: _Source, data: TaskData, cfg: ProbeConfig, seeds, dim: int,
                best_epochs) -> dict[str, object]:
    params = {"task": data.spec.name, "kind": data.spec.kind, "source": source.name, "prefix": prefix,
              "primary_metric": data.spec.primary_metric, "seeds": ",".join(map(str, seeds)),
              "best_epochs": ",".join(map(str, best_epochs)), "embedding_dim": dim,
              "encoder_id": source.encoder_id or ""}
    params.update({f"n_{split}": n for split, n in data.counts().items()})
    for key, value in cfg.to_dict().items():
        if isinstance(value, dict):
            params.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            params[key] = value
    return params


# ---- plots ----------------------------------------------------------------------------
def draw_artifacts(data: TaskData, source: str, predictions: list, out_dir: str | None) -> list[str]:
    """Test-set plots of one seed's predictions; nothing when out_dir is None."""
    if out_dir is None:
        return []
    spec = data.spec
    return [get_kind(spec.kind).plot(spec, data.splits["test"], predictions, os.path.join(out_dir, spec.name, source),
                                     f"{spec.name} ({source}), test")]


# ---- driver ---------------------------------------------------------------------------
def run_task(data: TaskData, targets: dict[str, list], source: _Source, tokenizer: Tokenizer, prefix: str,
             memo: dict, *, seeds: list[int], cfg: ProbeConfig, cache_dir, out_dir, token_budget: int,
             progress: bool) -> TaskResult:
    spec = data.spec
    splits = {}
    for split, examples in data.splits.items():
        sequences = [ex.sequence for ex in examples]
        emb = embed_split(source, tokenizer, sequences, prefix, memo, cache_dir=cache_dir, token_budget=token_budget,
                          progress=progress, desc=f"{spec.name}/{split} ({source.name})")
        splits[split] = ProbeSplit(emb, targets[split])
        check_lengths(spec.name, split, examples, emb)

    def score(split: str, predictions: list) -> dict[str, float]:
        return score_split(spec, splits[split].targets, predictions)

    bars: list[Progress] = []

    def on_step(done: int, total: int) -> None:
        if not bars:
            desc = f"probing {spec.name}/{source.name} ({len(seeds)} seed{'s' * (len(seeds) > 1)})"
            bars.append(Progress(total, desc, enabled=progress))
        bars[0].update(done=done)

    runs = train_probes(spec.kind, splits, score, spec.primary_metric, cfg, seeds=seeds, num_classes=spec.num_classes,
                        higher_is_better=spec.higher_is_better, eval_splits=EVAL_SPLITS, on_step=on_step)
    for bar in bars:
        bar.close()
    dim = int(splits["train"].embeddings[0].shape[-1])
    artifacts = draw_artifacts(data, source.name, runs[0].predictions["test"], out_dir)
    return TaskResult(spec.name, source.name, aggregate([r.metrics for r in runs]),
                      loggable_params(prefix, source, data, cfg, seeds, dim, [r.best_epoch for r in runs]), artifacts,
                      per_seed={seed: r.metrics for seed, r in zip(seeds, runs)})


def check_lengths(task: str, split: str, examples, embeddings) -> None:
    for ex, emb in zip(examples, embeddings):
        if len(emb) != len(ex.sequence):
            raise EvaluateError(f"task {task!r} {split} chain {ex.name}: {len(emb)} embedding rows for "
                                f"{len(ex.sequence)} residues; the encode_fn must return one row per input token")


def run_tasks(encode_fn: EncodeFn, tokenizer: Tokenizer, tasks: Sequence[str | TaskData], prefix: str = "[NLU]", *,
              seeds: int | Sequence[int] = 3, epochs: int = 5, cache_dir: str | None = None,
              controls: Sequence[str] = ("onehot", "random"), random_encode_fn: EncodeFn | None = None,
              out_dir: str | None = None, encoder_id: str | None = None, random_encoder_id: str | None = None,
              probe_config: ProbeConfig | None = None, token_budget: int = 16384,
              progress: bool = True, on_result: Callable[[TaskResult], None] | None = None) -> list[TaskResult]:
    """Probe every task with the model's embeddings and each control; one TaskResult per (task, source).

    `tasks` are bundled task names or loaded `TaskData`. `cache_dir` needs `encoder_id` (the
    weights' identity, e.g. checkpoint path and step). `probe_config` overrides head and optimiser
    settings; `epochs` always wins over its epochs. `on_result` sees each result as soon as it exists
    (e.g. to log it while the next task trains).
    """
    seeds = normalise_seeds(seeds)
    cfg = dataclasses.replace(probe_config or ProbeConfig(), epochs=int(epochs))
    sources = resolve_sources(encode_fn, tuple(controls), random_encode_fn, encoder_id, random_encoder_id)
    memo: dict = {}
    results = []
    for task in tasks:
        data = load_task(task) if isinstance(task, str) else task
        targets = probe_targets(data)
        for source in sources:
            result = run_task(data, targets, source, tokenizer, prefix, memo, seeds=seeds, cfg=cfg, cache_dir=cache_dir,
                              out_dir=out_dir, token_budget=token_budget, progress=progress)
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results


def format_results_table(results: Sequence[TaskResult], split: str = "test") -> str:
    """One row per task, the primary metric's mean ± sd per source, controls beside the model."""
    sources = [s for s in SOURCES if any(r.source == s for r in results)]
    cells: dict[str, dict[str, str]] = {}
    metric_of: dict[str, str] = {}
    for r in results:
        metric = str(r.params.get("primary_metric", ""))
        metric_of[r.name] = f"{split}/{metric}"
        mean, sd = r.metrics.get(f"{split}/{metric}_mean"), r.metrics.get(f"{split}/{metric}_std")
        cells.setdefault(r.name, {})[r.source] = "n/a" if mean is None else f"{mean:.3f} ± {sd:.3f}"
    header = ["task", "metric", *sources]
    rows = [[name, metric_of[name], *(cells[name].get(s, "") for s in sources)] for name in cells]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
