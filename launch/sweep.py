"""Optuna sweep over a search space defined in an experiments file; every trial is one training run.

    python launch/sweep.py --config=experiments/sweep_masking.py --study=masking --n_trials=20 --workers=2
    python launch/sweep.py --config=experiments/sweep_masking.py --study=masking --n_trials=10   # 10 more
    python launch/sweep.py --config=experiments/sweep_masking.py --study=masking --n_trials=40 --worker \
        --storage=postgresql://USER:PASSWORD@HOST/optuna --tracking_uri=http://HOST:5000   # on every machine

--n_trials trials are queued in the study and run by workers: --workers processes of this command, or
--worker processes started anywhere with the same flags (the first to create the study queues its
--n_trials; the others join it and stop when no queued trial is left). Workers share nothing but the
study's storage and the MLflow store. Storage: --storage, else OPTUNA_STORAGE, else
sqlite:///optuna.db at the repository root; journal:PATH for an Optuna journal file. On a database a
trial whose worker dies (kill -9, a lost machine) is failed after --heartbeat_s x 2 and run again.

The sweep file defines get_config(arg), search_space(trial) -> {config key: value}, OBJECTIVE =
(metric, 'minimize'|'maximize'), and optionally PRUNE_ON (the held-out metric reported to the pruner at
every evaluation), PRUNER ('median' | 'halving' | 'none'), GRID ({param: [values]}: each point once) and
LABELS ({param: short name}: trials are named by their parameters, e.g. `nlu=0.15,0.3 mu=3`). The
objective is a metric of the trial's run (e.g. eval/nlu/loss) or TASK/SOURCE/SPLIT/METRIC of a probe
(e.g. ssp3/model/valid/q3_mean). In MLflow the sweep is a parent run with one nested run per trial.
Each worker prints `[N/M] trial ...` with an ETA after each trial. The logic is ankh3/sweep.py.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # ankh3/, experiments/

from ankh3.command_line import main_guard  # noqa: E402
from ankh3.errors import EXIT_FAILED  # noqa: E402
from ankh3.compile_cache import DEFAULT_DIR as DEFAULT_CACHE_DIR  # noqa: E402


def define_flags(flags) -> None:
    flags.DEFINE_string("config", None, "sweep file: experiments/FILE.py[:ARG] with get_config and search_space")
    flags.DEFINE_string("study", None, "Optuna study name; an existing one is resumed")
    flags.DEFINE_integer("n_trials", None, "trials to queue in the study (a --worker joining a study queues none)")
    flags.DEFINE_float("timeout", None, "stop starting trials after this many seconds")
    flags.DEFINE_string("storage", None, "sqlite:///PATH, a database URL, or journal:PATH "
                        "(default: OPTUNA_STORAGE, else sqlite:///optuna.db)")
    flags.DEFINE_integer("workers", 1, "worker processes on this machine")
    flags.DEFINE_bool("worker", False, "be one worker of the study (start one per machine or SLURM task)")
    flags.DEFINE_integer("heartbeat_s", 30, "seconds between a running trial's heartbeats (database storages)")
    flags.DEFINE_string("objective", None, "metric to optimise (default: the file's OBJECTIVE)")
    flags.DEFINE_enum("direction", None, ("minimize", "maximize"), "direction of --objective")
    flags.DEFINE_enum("pruner", None, ("median", "halving", "none"), "pruner on PRUNE_ON (default: the file's or median)")
    flags.DEFINE_enum("mode", "auto", ("auto", "all", "pretrain"),
                      "what each trial runs; auto: pretraining only when the objective is a pretraining metric")
    flags.DEFINE_integer("seed", 0, "config.seed of every trial")
    flags.DEFINE_string("tracking_uri", None, "MLflow store (default: config, MLFLOW_TRACKING_URI, sqlite:///mlflow.db)")
    flags.DEFINE_string("workdir_root", None, "trial workdirs go to ROOT/sweeps/STUDY/ (default: runs/)")
    flags.DEFINE_string("compile_cache", DEFAULT_CACHE_DIR,
                        "JAX compilation cache shared by the trials ('' = none; JAX_COMPILATION_CACHE_DIR wins)")


def main() -> None:
    from absl import flags

    define_flags(flags)
    with main_guard():
        from ankh3 import sweep
        from ankh3.compile_cache import cache_env
        from ankh3.grid import parse_command_line

        F, overrides = parse_command_line(flags, sys.argv, sweep.SweepError, "sweep.py", __doc__)
        if not F.config or not F.study:
            raise sweep.SweepError("pass --config=experiments/SWEEP.py and --study=NAME (e.g. --study=masking)")
        os.environ.update(cache_env(F.compile_cache))  # before JAX is imported
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # our [N/M] lines say it all
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # a dead server must not stall training
        request = sweep.SweepRequest(
            config=F.config, study=F.study, n_trials=F.n_trials, overrides=overrides, storage=F.storage,
            workers=F.workers, worker=F.worker, timeout=F.timeout, objective=F.objective, direction=F.direction,
            pruner=F.pruner, mode=F.mode, seed=F.seed, tracking_uri=F.tracking_uri, workdir_root=F.workdir_root,
            heartbeat_s=F.heartbeat_s)
        failed = sweep.sweep(request, sys.argv)
    if failed:
        print(f"{failed} worker(s) ended with an error; see their output above", flush=True)
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    main()
