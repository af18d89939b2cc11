"""Turn the MLflow runs of a family (or a sweep) into tables and plots, logged to a summary run.

    python analysis/aggregate.py --experiment=ablate_tasks                 # default store: sqlite:///mlflow.db
    python analysis/aggregate.py --experiment=paper --metrics='eval/*/loss,ssp3/model/test/*'
    python analysis/aggregate.py --experiment=ablate_tasks@small           # runs of a family at a non-tiny shape
    python analysis/aggregate.py --sweep=masking --tracking_uri=http://localhost:5000

For a family: one row per (metric, variant) with mean ± sd over seeds, n, and the paired difference
from the family's BASELINE variant (same seeds) with a bootstrap 95% CI, plus the PUBLISHED Ankh3
figure where the task matches. Writes summary.md (also printed), summary.csv, summary.html (plots
inlined) and PNGs into --out (default runs/analysis/NAME/), and logs them to a summary MLflow run.
Bad input ends with one line on stderr and exit status 2.
"""
from __future__ import annotations

import base64
import csv
import dataclasses
import fnmatch
import html
import importlib.util
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from analysis.published import reference_text  # noqa: E402

DEFAULT_METRICS = ("eval/*/loss", "eval/*/accuracy", "*/model/test/*_mean")  # losses are named by their objective
PARENT_TAG = "mlflow.parentRunId"
SUMMARY_TAG = "ankh3.summary_of"
CONFIDENCE = 0.95


class AnalysisError(ValueError):
    """Nothing to analyse, or bad analysis input; the message says what and how to fix it."""


# ---- reading MLflow ---------------------------------------------------------------------------------
@dataclasses.dataclass
class RunRecord:
    """One top-level run: its identity and its final metrics, downstream children flattened in."""

    run_id: str
    variant: str
    seed: int
    start_time: int
    config_hash: str
    metrics: dict[str, float]
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    params: dict[str, str] = dataclasses.field(default_factory=dict)


def connect(uri: str | None):
    from mlflow import MlflowClient

    from ankh3.tracking import default_uri

    return MlflowClient(tracking_uri=uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri(ROOT))


def get_experiment(client, name: str):
    try:
        found = client.get_experiment_by_name(name)
    except Exception as e:  # noqa: BLE001 -- an unreachable server or a broken store
        raise AnalysisError(f"cannot read the MLflow store {client.tracking_uri}: {type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200] if str(e) else ''}; check --tracking_uri") from None
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise AnalysisError(f"no MLflow experiment {name!r} in {client.tracking_uri}; it has: "
                            f"{', '.join(names) or 'none'} (pass --experiment=FAMILY or --tracking_uri)")
    return found


def all_runs(client, experiment_id: str, filter_string: str = "") -> list:
    """Every run of the experiment matching the filter (all pages)."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def child_metrics(child) -> dict[str, float]:
    """A downstream child run 'TASK/SOURCE' with metrics 'SPLIT/NAME' -> {'TASK/SOURCE/SPLIT/NAME': v}."""
    name = child.info.run_name or ""
    return {f"{name}/{key}": value for key, value in child.data.metrics.items()}


def read_family(client, family: str, experiment: str | None = None) -> list[RunRecord]:
    """FINISHED top-level runs tagged with the family, each with its children's metrics flattened in."""
    exp = get_experiment(client, experiment or family)
    runs = all_runs(client, exp.experiment_id)
    children: dict[str, list] = {}
    for run in runs:
        parent = run.data.tags.get(PARENT_TAG)
        if parent:
            children.setdefault(parent, []).append(run)
    records = []
    for run in runs:
        tags = run.data.tags
        if tags.get(PARENT_TAG) or tags.get("family") != family or run.info.status != "FINISHED":
            continue
        probes = {}
        for child in children.get(run.info.run_id, []):
            probes.update(child_metrics(child))
        # run.py also copies each probe's test means onto the parent as 'downstream/KEY' (for the MLflow
        # UI's run comparison); count each figure once, under the child's name.
        metrics = {k: v for k, v in run.data.metrics.items()
                   if not (k.startswith("downstream/") and k[len("downstream/"):] in probes)}
        metrics.update(probes)
        records.append(RunRecord(run.info.run_id, tags.get("variant", "?"), int(tags.get("seed", 0)),
                                 run.info.start_time or 0, tags.get("config_hash", ""), metrics, dict(tags),
                                 dict(run.data.params)))
    if not records:
        raise AnalysisError(f"no FINISHED runs tagged family={family!r} in experiment {exp.name!r} of "
                            f"{client.tracking_uri}; run python launch/grid.py --config=experiments/{family}.py first")
    return records


def latest_per_seed(records: list[RunRecord]) -> tuple[list[RunRecord], list[str]]:
    """One run per (variant, seed): the latest; notes say where older runs were set aside."""
    chosen: dict[tuple[str, int], RunRecord] = {}
    notes = []
    for record in sorted(records, key=lambda r: r.start_time):
        key = (record.variant, record.seed)
        if key in chosen:
            notes.append(f"{record.variant} seed {record.seed}: run {chosen[key].run_id[:8]} replaced by the later "
                         f"run {record.run_id[:8]}")
        chosen[key] = record
    return list(chosen.values()), notes


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


# ---- tables -----------------------------------------------------------------------------------------
def fmt(value: float, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def row_cells(row: Row) -> list[str]:
    spread = f"{fmt(row.mean)} ± {fmt(row.sd)}" if row.n > 1 else fmt(row.mean)
    if row.variant == row.baseline:
        diff = "(baseline)"
    elif row.pairs == 0:
        diff = "no paired seeds"
    elif row.pairs == 1:
        diff = f"{fmt(row.diff, True)} (1 pair, no CI)"
    else:
        diff = f"{fmt(row.diff, True)} [{fmt(row.ci_low, True)}, {fmt(row.ci_high, True)}]"
    return [row.metric, row.variant, str(row.n), spread, diff, row.published]


HEADER = ["metric", "variant", "n seeds", "mean ± sd", "Δ vs baseline [95% CI]", "published (not measured)"]


def to_markdown(rows: list[Row], title: str, notes: list[str]) -> str:
    lines = [f"## {title}", "", "| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row_cells(r)) + " |" for r in rows]
    lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def write_csv(rows: list[Row], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["metric", "variant", "n", "seeds", "mean", "sd", "baseline", "diff_vs_baseline",
                         "ci95_low", "ci95_high", "pairs", "published"])
        for r in rows:
            writer.writerow([r.metric, r.variant, r.n, " ".join(map(str, r.seeds)), r.mean, r.sd, r.baseline,
                             r.diff, r.ci_low, r.ci_high, r.pairs, r.published])


def to_html(title: str, header: list[str], body: list[list[str]], notes: list[str], images: list[str]) -> str:
    """A self-contained page: the table, the notes, and every PNG inlined as base64."""
    style = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#f3f3f3}"
             "td.pub{color:#777;font-style:italic}img{max-width:48%;margin:4px}")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1><table><tr>"]
    parts += [f"<th>{html.escape(h)}</th>" for h in header]
    parts.append("</tr>")
    for cells in body:
        parts.append("<tr>" + "".join(
            f"<td{' class=pub' if h.startswith('published') else ''}>{html.escape(c)}</td>"
            for h, c in zip(header, cells)) + "</tr>")
    parts.append("</table><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    for path in images:
        with open(path, "rb") as f:
            data = base64.b64encode(f.read()).decode()
        parts.append(f"<img alt='{html.escape(os.path.basename(path))}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "".join(parts)


# ---- the summary run --------------------------------------------------------------------------------
def log_summary_run(client, experiment_id: str, name: str, subject: str, files: list[str],
                    metrics: dict[str, float] | None = None) -> str:
    """A run holding the tables and plots as artifacts, tagged with what it summarises."""
    run = client.create_run(experiment_id, run_name=f"summary-{name}",
                            tags={SUMMARY_TAG: subject, "mlflow.note.content": f"Tables and plots of {subject}"})
    run_id = run.info.run_id
    for path in files:
        client.log_artifact(run_id, path, "summary")
    if metrics:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items() if math.isfinite(v)])
    client.set_terminated(run_id, "FINISHED")
    return run_id


def write_outputs(out_dir: str, markdown: str, write_csv_file, html_page: str) -> list[str]:
    """summary.md, summary.csv (written by `write_csv_file(path)`) and summary.html in out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, n) for n in ("summary.md", "summary.csv", "summary.html")]
    with open(paths[0], "w") as f:
        f.write(markdown)
    write_csv_file(paths[1])
    with open(paths[2], "w") as f:
        f.write(html_page)
    return paths


# ---- a family ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class Report:
    markdown: str
    files: list[str]  # md, csv, html, PNGs
    rows: list
    summary_run_id: str | None


def curves_for(client, records: list[RunRecord], keys: list[str]) -> dict[str, dict[str, dict[int, list]]]:
    """{metric: {variant: {seed: [(step, value), ...]}}} from the MLflow metric histories."""
    curves: dict[str, dict[str, dict[int, list]]] = {}
    for record in records:
        for key in keys:
            if key not in record.metrics:
                continue
            history = client.get_metric_history(record.run_id, key)
            points = sorted((m.step, m.value) for m in history)
            curves.setdefault(key, {}).setdefault(record.variant, {})[record.seed] = points
    return curves


def analyse_family(client, family: str, *, out_dir: str, patterns=DEFAULT_METRICS, baseline: str | None = None,
                   experiment: str | None = None, log_run: bool = True) -> Report:
    from analysis import plots

    records, notes = latest_per_seed(read_family(client, family, experiment))
    variants = {r.variant for r in records}
    base, source = pick_baseline(family, variants, baseline)
    metrics = select_metrics(records, patterns)
    if not metrics:
        present = sorted({k for r in records for k in r.metrics})
        raise AnalysisError(f"no metric of {family!r} matches {', '.join(patterns)}; "
                            f"it has e.g. {', '.join(present[:8])} (pass --metrics=PATTERN,...)")
    rows = summarize_family(records, metrics, base, variant_order(family))
    hashes = {r.variant: {x.config_hash for x in records if x.variant == r.variant} for r in records}
    notes = [f"baseline: {base} ({source})" + ("" if base in variants else " -- no runs of it, so no differences"),
             f"Δ: paired by seed (variant - baseline); 95% CI: bootstrap of the mean difference (scipy, 9,999 "
             "resamples; percentile below 10 pairs, BCa from 10)",
             "published: figures from the Ankh3 paper (arXiv:2505.20052) on its own benchmarks and scale; "
             "not measured here. Measured Q3 is a fraction, the published one a percentage",
             *[f"{v}: runs with {len(h)} different config hashes" for v, h in sorted(hashes.items()) if len(h) > 1],
             *notes]
    os.makedirs(out_dir, exist_ok=True)
    loss_keys = [k for k in sorted({k for r in records for k in r.metrics})
                 if fnmatch.fnmatchcase(k, "eval/*/loss") or fnmatch.fnmatchcase(k, "train/*/loss")]
    images = plots.plot_learning_curves(curves_for(client, records, loss_keys), out_dir)
    downstream = [m for m in metrics if m.count("/") == 3]
    images += plots.plot_downstream(rows_by_metric(rows, downstream), out_dir)
    title = f"{family}: {len(variants)} variants, {len(records)} runs"
    markdown = to_markdown(rows, title, notes)
    page = to_html(title, HEADER, [row_cells(r) for r in rows], notes, images)
    files = write_outputs(out_dir, markdown, lambda p: write_csv(rows, p), page) + images
    run_id = None
    if log_run:
        exp = get_experiment(client, experiment or family)
        run_id = log_summary_run(client, exp.experiment_id, family, f"family={family}", files)
    return Report(markdown, files, rows, run_id)


def rows_by_metric(rows: list[Row], metrics: list[str]) -> dict[str, list]:
    """{metric: [(variant, mean, CI low, CI high, n)]} for the downstream plots."""
    out: dict[str, list] = {}
    for row in rows:
        if row.metric in metrics:
            out.setdefault(row.metric, []).append((row.variant, row.mean, row.mean_ci_low, row.mean_ci_high, row.n))
    return out


# ---- a sweep ----------------------------------------------------------------------------------------
def find_sweep_parent(client, study: str):
    """The sweep's parent run (tag optuna.study=NAME), searched across experiments."""
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, f"tags.`optuna.study` = '{study}' and tags.`sweep.role` = 'parent'",
                              max_results=10, order_by=["attributes.start_time DESC"]) if ids else []
    if not runs:
        raise AnalysisError(f"no sweep named {study!r} in {client.tracking_uri}; start it with "
                            f"python launch/sweep.py --study={study} (or pass --tracking_uri)")
    return runs[0]


SWEEP_HEADER = ["trial", "state", "objective", "params", "reason / run"]


def analyse_sweep(client, study_name: str, *, out_dir: str, storage: str | None = None, log_run: bool = True) -> Report:
    from analysis import plots

    parent = find_sweep_parent(client, study_name)
    tags = parent.data.tags
    metric, direction = tags.get("sweep.objective", "objective"), tags.get("sweep.direction", "minimize")
    trials = all_runs(client, parent.info.experiment_id, f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    body = []
    for run in trials:
        t = run.data.tags
        params = {k[len("optuna.params."):]: v for k, v in run.data.params.items() if k.startswith("optuna.params.")}
        value = run.data.metrics.get("objective", math.nan)
        body.append((int(t.get("optuna.trial_number", -1)), t.get("optuna.state", run.info.status), value, params,
                     t.get("optuna.fail_reason", "") or run.info.run_id[:8]))
    worse = math.inf if direction == "minimize" else -math.inf
    sign = 1 if direction == "minimize" else -1
    body.sort(key=lambda b: (sign * b[2] if math.isfinite(b[2]) else worse * sign, b[0]))
    cells = [[str(b[0]), b[1], fmt(b[2]), ", ".join(f"{k}={short(v)}" for k, v in sorted(b[3].items())), b[4]]
             for b in body]
    notes = [f"objective: {metric} ({direction}); best first", f"MLflow parent run {parent.info.run_id}"]
    images = []
    study = load_study(study_name, storage or tags.get("optuna.storage"), notes)
    if study is not None:
        images = plots.plot_optuna(study, out_dir)
    title = f"sweep {study_name}: {len(body)} trials"
    lines = [f"## {title}", "", "| " + " | ".join(SWEEP_HEADER) + " |", "|" + " --- |" * len(SWEEP_HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    markdown = "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"
    page = to_html(title, SWEEP_HEADER, cells, notes, images)
    os.makedirs(out_dir, exist_ok=True)
    files = write_outputs(out_dir, markdown, lambda p: write_sweep_csv(body, p), page) + images
    run_id = log_summary_run(client, parent.info.experiment_id, study_name, f"sweep={study_name}", files) \
        if log_run else None
    return Report(markdown, files, body, run_id)


def write_sweep_csv(body: list[tuple], path: str) -> None:
    """One line per trial: number, state, objective, one column per sampled parameter, reason or run id."""
    keys = sorted({k for b in body for k in b[3]})
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", "state", "objective", *keys, "reason_or_run"])
        for number, state, value, params, note in body:
            writer.writerow([number, state, value, *[params.get(k, "") for k in keys], note])


def load_study(name: str, storage: str | None, notes: list[str]):
    """The Optuna study for its plots, or None (with a note) when its storage cannot be opened."""
    if not storage:
        notes.append("no Optuna storage known (pass --storage=URL) -- history and importance plots skipped")
        return None
    try:
        import optuna

        from ankh3.studies import open_storage

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return optuna.load_study(study_name=name, storage=open_storage(storage))
    except Exception as e:  # noqa: BLE001 -- the table does not need the study
        notes.append(f"Optuna storage {storage} not readable ({type(e).__name__}) -- plots skipped; pass --storage")
        return None


# ---- command line -----------------------------------------------------------------------------------
def family_and_experiment(name: str, mlflow_experiment: str | None) -> tuple[str, str | None]:
    """--experiment=FAMILY or FAMILY@SHAPE -> (family tag, MLflow experiment or None for the family's own).

    experiments/common.py family_recipe puts runs of a non-tiny shape in the experiment FAMILY@SHAPE."""
    family, at, _ = name.partition("@")
    return family, mlflow_experiment or (name if at else None)


def main(argv: list[str]) -> None:
    from absl import flags

    F = flags.FLAGS
    if len(argv) > 1:
        raise AnalysisError(f"unexpected arguments {' '.join(argv[1:])}")
    if bool(F.experiment) == bool(F.sweep):
        raise AnalysisError("pass exactly one of --experiment=FAMILY or --sweep=STUDY")
    client = connect(F.tracking_uri)
    name = F.experiment or F.sweep
    out_dir = os.path.abspath(F.out or os.path.join(ROOT, "runs", "analysis", name.replace("/", "_")))
    if F.experiment:
        patterns = tuple(F.metrics) if F.metrics else DEFAULT_METRICS
        family, experiment = family_and_experiment(F.experiment, F.mlflow_experiment)
        report = analyse_family(client, family, out_dir=out_dir, patterns=patterns, baseline=F.baseline,
                                experiment=experiment, log_run=F.log_run)
    else:
        report = analyse_sweep(client, F.sweep, out_dir=out_dir, storage=F.storage, log_run=F.log_run)
    print(report.markdown)
    print(f"wrote {', '.join(os.path.relpath(p) for p in report.files)}")
    if report.summary_run_id:
        print(f"summary MLflow run {report.summary_run_id} in {client.tracking_uri}")


def define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("experiment", None, "family to summarise (the 'family' tag of its runs), or FAMILY@SHAPE")
    flags.DEFINE_string("sweep", None, "Optuna study name of a launch/sweep.py sweep to summarise")
    flags.DEFINE_string("tracking_uri", None, "MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    flags.DEFINE_string("mlflow_experiment", None, "MLflow experiment holding the family's runs (default: the family)")
    flags.DEFINE_list("metrics", None, "glob patterns of metrics (default: " + ",".join(DEFAULT_METRICS) + ")")
    flags.DEFINE_string("baseline", None, "baseline variant (default: the family file's BASELINE)")
    flags.DEFINE_string("storage", None, "Optuna storage of --sweep (default: the one the sweep recorded)")
    flags.DEFINE_string("out", None, "output folder (default: runs/analysis/NAME)")
    flags.DEFINE_bool("log_run", True, "log the tables and plots to a summary MLflow run")


def run_main() -> None:
    from absl import app, flags

    define_flags()

    def entry(argv):
        try:
            main(argv)
        except AnalysisError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)

    def parse(argv):
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)

    app.run(entry, flags_parser=parse)


if __name__ == "__main__":
    run_main()
