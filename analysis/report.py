"""Reporting: tables as markdown, CSV and HTML (plots inlined), and the summary MLflow run that holds them."""
from __future__ import annotations

import base64
import csv
import html
import math
import os
import time

from analysis.stats import Row
from ankh3 import tracking
from ankh3.names import summary_experiment_name

SUMMARY_TAG = "ankh3.summary_of"


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
def summary_experiment_id(client, experiment_id: str) -> str:
    """The id of the experiment beside `experiment_id` that holds its summary runs (created on first use)."""
    return tracking.experiment_id(client, summary_experiment_name(client.get_experiment(experiment_id).name))


def log_summary_run(client, experiment_id: str, name: str, subject: str, files: list[str],
                    metrics: dict[str, float] | None = None) -> str:
    """A run holding the tables and plots as artifacts, tagged with what it summarises. It lives in the
    experiment EXPERIMENT/summaries, so the training runs' experiment holds training runs only."""
    run = client.create_run(summary_experiment_id(client, experiment_id), run_name=f"summary-{name}",
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


def write_sweep_csv(body: list[tuple], path: str) -> None:
    """One line per trial: number, state, objective, one column per sampled parameter, reason or run id."""
    keys = sorted({k for b in body for k in b[3]})
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", "state", "objective", *keys, "reason_or_run"])
        for number, state, value, params, note in body:
            writer.writerow([number, state, value, *[params.get(k, "") for k in keys], note])
