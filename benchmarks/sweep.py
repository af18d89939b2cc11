"""Sweep throughput (trials per minute) of launch/sweep.py with 1 and with N worker processes, on tiny
trials of the masking recipe, side by side in one run.

    eval "$(launch/services.sh up)"      # PostgreSQL study storage + MLflow server (else: SQLite files)
    python benchmarks/sweep.py           # --trials=8 --workers 1 4

Each setting is a fresh study of --trials queued trials (a grid over the mean span length, so every
setting runs the same trials) of a 1+1-layer d_model 32 model, 4 steps, evaluated every 2, started
cold: the figure includes each worker's imports and compiling (the JAX compilation cache is off), as
a sweep on a fresh machine pays them.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ("--config.train.steps=4", "--config.train.eval_every=2", "--config.train.log_every=1",
        "--config.train.checkpoint_every=4", "--config.train.eval_batches=1", "--config.data.batch_size=4",
        "--config.data.encoder_length=32", "--config.data.decoder_length=32", "--config.model.d_model=32",
        "--config.model.d_ff=64", "--config.model.num_heads=2", "--config.model.d_kv=16",
        "--config.model.num_encoder_layers=1", "--config.model.num_decoder_layers=1")
SWEEP_FILE = '''
"""Benchmark grid: tiny trials of the masking recipe that differ in their mean span length."""
from experiments import sweep_masking

OBJECTIVE = ("eval/s2s/loss", "minimize")
PRUNER = "none"
GRID = {{"mu": [1.0 + 0.25 * i for i in range({n})]}}
get_config = sweep_masking.get_config


def search_space(trial):
    return {{"objectives.nlu.mean_span_length": trial.suggest_float("mu", 1.0, 1.0 + 0.25 * {n})}}
'''


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        sweep_file = os.path.join(tmp, "bench_sweep.py")
        with open(sweep_file, "w") as f:
            f.write(SWEEP_FILE.format(n=args.trials))
        storage = os.environ.get("OPTUNA_STORAGE") or f"sqlite:///{tmp}/optuna.db"
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{tmp}/mlflow.db"
        rates = {}
        for workers in args.workers:
            command = [sys.executable, "launch/sweep.py", f"--config={sweep_file}", f"--study=bench-{uuid.uuid4().hex[:8]}",
                       f"--n_trials={args.trials}", f"--workers={workers}", f"--storage={storage}",
                       f"--tracking_uri={uri}", f"--workdir_root={tmp}/runs", "--compile_cache=", *TINY]
            start = time.perf_counter()
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                                  env={k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"})
            minutes = (time.perf_counter() - start) / 60
            if done.returncode != 0 or f"{args.trials} COMPLETE" not in done.stdout:
                raise SystemExit(f"error: the {workers}-worker sweep failed: {(done.stdout + done.stderr)[-1500:]}")
            rates[workers] = args.trials / minutes
    print(f"{args.trials} tiny trials per setting, load {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs; "
          f"storage {storage.split(':')[0]}, tracking {uri.split(':')[0]}")
    print("| workers | trials/min | vs 1 worker |")
    print("| --- | --- | --- |")
    for workers, rate in rates.items():
        print(f"| {workers} | {rate:.2f} | {rate / rates[args.workers[0]]:.2f}x |")


if __name__ == "__main__":
    main()
