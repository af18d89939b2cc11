"""Is a run's encoder better than its controls? One table per run, with paired confidence intervals.

    python analysis/versus_controls.py --workdir=runs/base@cpu_hour/ankh3-s0
    python analysis/versus_controls.py --workdir=W --split=valid --markdown

For each probed task (WORKDIR/summary.json, or WORKDIR/downstream/summary.json of --mode=downstream,
whichever is newer): the primary
metric of the pretrained encoder, of the random encoder and of one-hot residues (mean ± sd over probe
seeds), and the difference model - random with its 95% bootstrap CI, paired by probe seed (the same
seed draws the same head initialisation and batch order for every source). A pretrained encoder is
only interesting where that interval lies above zero. Choose recipes on --split=valid; report test.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # ankh3/, analysis/

from ankh3.command_line import ArgumentParser, fail, main_guard  # noqa: E402


def parse_args(argv):
    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--workdir", required=True, help="a run's workdir holding summary.json")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"))
    p.add_argument("--markdown", action="store_true", help="a Markdown table instead of aligned text")
    return p.parse_args(argv)


def summary_path(workdir: str) -> str:
    """The newer of WORKDIR/summary.json (--mode=all) and WORKDIR/downstream/summary.json (--mode=downstream)."""
    from ankh3 import names

    candidates = [os.path.join(workdir, names.SUMMARY), os.path.join(workdir, names.DOWNSTREAM, names.SUMMARY)]
    found = [p for p in candidates if os.path.isfile(p)]
    return max(found, key=os.path.getmtime) if found else candidates[0]


def read_summary(workdir: str) -> list[dict]:
    path = summary_path(workdir)
    try:
        with open(path) as f:
            entries = json.load(f)["downstream"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        fail(f"{path}: cannot read the run's probe results ({type(e).__name__}: {e}); pass --workdir of a run "
             "that finished its probes (--mode=all or --mode=downstream)")
    if not any(e.get("per_seed") for e in entries):
        fail(f"{path}: has no per-seed results (written before they were kept); probe the run again with "
             f"python launch/run.py --mode=downstream --workdir={workdir} --config=...")
    return entries


def rows(entries: list[dict], split: str) -> list[dict]:
    """One row per task: {task, metric, SOURCE: (mean, sd), diff: (mean, low, high, n)} of model - random."""
    from analysis.stats import paired_difference

    by_task: dict[str, dict[str, dict]] = {}
    for entry in entries:
        by_task.setdefault(entry["task"], {})[entry["source"]] = entry
    table = []
    for task, sources in by_task.items():
        metric = next(e["primary_metric"] for e in sources.values())
        row = {"task": task, "metric": f"{split}/{metric}"}
        per_seed = {}
        for source, entry in sources.items():
            row[source] = (entry["metrics"][f"{split}/{metric}_mean"], entry["metrics"][f"{split}/{metric}_std"])
            per_seed[source] = {int(s): v[split][metric] for s, v in entry.get("per_seed", {}).items()}
        if "model" in per_seed and "random" in per_seed:
            row["diff"] = paired_difference(per_seed["model"], per_seed["random"])
        table.append(row)
    return table


def format_table(table: list[dict], markdown: bool) -> str:
    header = ["task", "metric", "model", "random encoder", "one-hot", "model - random (95% CI, paired by seed)"]

    def cell(row, source):
        return f"{row[source][0]:.3f} ± {row[source][1]:.3f}" if source in row else "n/a"

    def diff(row):
        if "diff" not in row:
            return "n/a"
        mean, low, high, n = row["diff"]
        verdict = "above 0" if low > 0 else "below 0" if high < 0 else "includes 0"
        return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}], {n} seeds: {verdict}"

    body = [[r["task"], r["metric"], cell(r, "model"), cell(r, "random"), cell(r, "onehot"), diff(r)] for r in table]
    if markdown:
        return "\n".join("| " + " | ".join(line) + " |" for line in [header, ["---"] * len(header), *body])
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in [header, *body])


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with main_guard():
        entries = read_summary(args.workdir)
        print(f"{summary_path(args.workdir)}, {args.split} split", flush=True)
        print(format_table(rows(entries, args.split), args.markdown), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
