"""Run one experiment: pretrain a config on its data, then probe the frozen encoder downstream.

    python launch/run.py --config=experiments/base.py                       # the tiny Ankh3 recipe, CPU
    python launch/run.py --config=experiments/ablate_completion.py:0.75 --config.seed=1
    python launch/run.py --config=experiments/base.py --dry_run             # config, size and token budget
    python launch/run.py --config=experiments/base.py --mode=downstream     # probe a workdir's checkpoint
    python launch/run.py --sync_workdir=runs/base/ankh3-s0                  # send an offline run to MLflow
    python launch/run.py --config=... --coordinator=HOST:PORT --num_processes=2 --process_id=0  # one of 2 hosts

Re-running the same command with the same --workdir resumes from its last checkpoint. Flag parsing
and one call of ankh3.experiment; bad input ends with one `error:` line and exit status 2, a diverged
run with 3, a run stopped by a signal with 128 + its number (docs/commands.md lists them all).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # ankh3/, experiments/
if __name__ == "__main__":  # before any work: glibc reads its tunables only at process start
    from ankh3.host_malloc import reexec_with_hugepages

    reexec_with_hugepages()

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ankh3.command_line import fail, main_guard, parse_flags  # noqa: E402
from ankh3.compile_cache import DEFAULT_DIR as DEFAULT_CACHE_DIR  # noqa: E402
from ankh3.config import RUN_MODES  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiment config: experiments/FAMILY.py[:ARG]; override fields with --config.KEY=VALUE")
flags.DEFINE_string("workdir", None, "checkpoints, logs and artifacts (default runs/EXPERIMENT/RUN_NAME)")
flags.DEFINE_enum("mode", "all", RUN_MODES, "pretrain, downstream (probe a checkpoint), or all (both)")
flags.DEFINE_bool("dry_run", False, "print the resolved config, parameter count and token budget; then exit")
flags.DEFINE_string("sync_workdir", None, "send a workdir's offline-journaled metrics to the MLflow store; then exit")
flags.DEFINE_integer("dry_run_devices", None, "--dry_run: plan memory for a mesh of this many devices "
                     "(default config.mesh.devices, else this machine's)")
# One run over several processes (hosts). On SLURM (srun) and Cloud TPU VM pods JAX finds these itself.
flags.DEFINE_string("coordinator", None, "multi-process run: HOST:PORT of process 0 (the same on every process)")
flags.DEFINE_integer("num_processes", None, "multi-process run: how many processes take part")
flags.DEFINE_integer("process_id", None, "multi-process run: this process's index, 0..num_processes-1")
flags.DEFINE_integer("heartbeat_timeout_s", 100, "multi-process run: a process silent this long counts as dead")
flags.DEFINE_string("compile_cache", DEFAULT_CACHE_DIR,
                    "JAX compilation cache: runs after the first load the training step and probe heads instead of "
                    "compiling them ('' = none; JAX_COMPILATION_CACHE_DIR wins)")
flags.DEFINE_string("sync_to", None, "with --sync_workdir: send to this tracking URI instead of the run's recorded store")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {' '.join(argv[1:])}; use --config=experiments/FAMILY.py:ARG and --config.KEY=VALUE")
    logging.set_verbosity(logging.WARNING)  # orbax narrates every save at INFO
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # a dead server must not stall training
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    with main_guard():
        from ankh3 import experiment

        if FLAGS.sync_workdir:
            experiment.sync(FLAGS.sync_workdir, FLAGS.sync_to)
            print(f"synced {FLAGS.sync_workdir}", flush=True)
            return
        config = _CONFIG.value
        if config is None:
            fail("no --config given; e.g. --config=experiments/base.py (see experiments/ for the families)")
        workdir = os.path.abspath(FLAGS.workdir) if FLAGS.workdir else None
        experiment.resolve(config, workdir)
        if FLAGS.dry_run:
            print(experiment.dry_run_report(config, FLAGS.dry_run_devices), flush=True)
            return
        from ankh3 import compile_cache, distributed

        compile_cache.enable(FLAGS.compile_cache)
        distributed.initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id, FLAGS.heartbeat_timeout_s)
        workdir = workdir or os.path.abspath(experiment.default_workdir(config))
        result = experiment.run(config, workdir, FLAGS.mode)
        sys.exit(result.exit_code)


if __name__ == "__main__":
    app.run(main, flags_parser=lambda argv: parse_flags(flags.FLAGS, argv))
