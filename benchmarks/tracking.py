"""Metric logging throughput (metrics/s) of ankh3.tracking.Tracker: the team's tracking server on
PostgreSQL against a local SQLite file, side by side in one run.

    eval "$(launch/services.sh up)"        # the team stack: MLFLOW_TRACKING_URI=http://127.0.0.1:PORT
    python benchmarks/tracking.py          # or --tracking_uri=http://HOST:PORT for a lab's server

Each store gets the same workload, the way training logs: --steps steps of --metrics_per_step metrics,
sent with one flush (batched `log_batch` calls of up to 1,000 metrics) every --steps_per_flush steps,
into a fresh run. The figure is metrics sent per second of wall time, from the first metric to the
run's end; the best of --repeats runs per store and setting, the stores interleaved.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from anywhere


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracking_uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                   help="the tracking server (default: MLFLOW_TRACKING_URI, as `launch/services.sh up` prints)")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--metrics_per_step", type=int, default=20, help="e.g. loss and accuracy per task, lr, grad norm")
    p.add_argument("--steps_per_flush", type=int, nargs="+", default=[1, 50],
                   help="settings: steps buffered per flush (1: a call per step; 50: what a 10 s flush holds)")
    p.add_argument("--repeats", type=int, default=2)
    return p.parse_args(argv)


def log_once(uri: str, workdir: str, steps: int, per_step: int, steps_per_flush: int) -> float:
    """Metrics per second for one fresh run (experiment creation and run start are not timed)."""
    from ankh3.tracking import Tracker

    tracker = Tracker(uri, "benchmark-tracking", f"flush{steps_per_flush}-{uuid.uuid4().hex[:6]}", workdir,
                      flush_every_s=float("inf")).start()
    names = [f"train/task{i}/loss" for i in range(per_step)]
    start = time.perf_counter()
    for step in range(1, steps + 1):
        tracker.log_metrics(step, {name: 1.0 / step + i for i, name in enumerate(names)})
        if step % steps_per_flush == 0:
            tracker.flush()
    if not tracker.end():
        raise SystemExit(f"error: {uri} did not take every event (journal in {workdir})")
    return steps * per_step / (time.perf_counter() - start)


def main(argv=None) -> None:
    args = parse_args(argv)
    if not args.tracking_uri or not args.tracking_uri.startswith(("http://", "https://")):
        raise SystemExit('error: no tracking server; run eval "$(launch/services.sh up)" first, '
                         "or pass --tracking_uri=http://HOST:PORT")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # no "View run" line per run
    with tempfile.TemporaryDirectory() as tmp:
        stores = {"server + PostgreSQL": args.tracking_uri, "local SQLite": f"sqlite:///{tmp}/mlflow.db"}
        best = {}
        for setting in args.steps_per_flush:
            for _ in range(args.repeats):
                for label, uri in stores.items():  # interleaved, so both see the same machine load
                    workdir = tempfile.mkdtemp(dir=tmp)
                    rate = log_once(uri, workdir, args.steps, args.metrics_per_step, setting)
                    best[setting, label] = max(best.get((setting, label), 0.0), rate)
    print(f"{args.steps} steps x {args.metrics_per_step} metrics, best of {args.repeats}, "
          f"load {os.getloadavg()[0]:.1f}; server: {args.tracking_uri}")
    print("| metrics per flush | server + PostgreSQL | local SQLite | server / SQLite |")
    print("| --- | --- | --- | --- |")
    for setting in args.steps_per_flush:
        server, sqlite = best[setting, "server + PostgreSQL"], best[setting, "local SQLite"]
        print(f"| {setting * args.metrics_per_step:,} | {server:,.0f} metrics/s | {sqlite:,.0f} metrics/s "
              f"| {server / sqlite:.2f}x |")


if __name__ == "__main__":
    main()
