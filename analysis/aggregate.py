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

import dataclasses
import fnmatch
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from analysis.report import (HEADER, SUMMARY_TAG, fmt, log_summary_run, row_cells, to_html,  # noqa: E402,F401
                             to_markdown, write_csv, write_outputs, write_sweep_csv)
from analysis.runs import (PARENT_TAG, AnalysisError, RunRecord, all_runs, connect, get_experiment,  # noqa: E402,F401
                           latest_per_seed, read_family)
from analysis.stats import (Row, pick_baseline,  # noqa: E402,F401
                            select_metrics, short, summarize_family, variant_order)

DEFAULT_METRICS = ("eval/*/loss", "eval/*/accuracy", "*/model/test/*_mean")  # losses are named by their objective


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
             "Δ: paired by seed (variant - baseline); 95% CI: bootstrap of the mean difference (scipy, 9,999 "
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
