"""Run every variant of an experiments family x N seeds; skip finished runs, resume unfinished ones.

    python launch/grid.py --config=experiments/ablate_tasks.py --seeds=3                # 3 variants x 3 seeds
    python launch/grid.py --config=experiments/paper.py --shape=small --seeds=3 --jobs=2  # the paper's matrix
    python launch/grid.py --config=experiments/ablate_completion.py --variants=0.25,0.75 --config.train.steps=100

Each (variant, seed) is one `launch/run.py` process and one MLflow run tagged family, variant, seed and
config_hash (a hash of the resolved config without seed and tracking). Re-running the same command
skips the runs that are FINISHED in MLflow with those four tags and resumes the others from the
checkpoints in their workdir (runs/EXPERIMENT/VARIANT-sSEED-HASH). --config.KEY=VALUE overrides go to
every run. A family file lists its variants in VARIANTS (docs/interfaces.md, "Experiment families");
--shape=SHAPE runs each as VARIANT@SHAPE (default tiny). Progress: `[N/M] ...` with an ETA per run done.
Bad input ends with one line on stderr and exit status 2; failed runs give exit status 1.
The logic is ankh3/grid.py; this file is its flags.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # ankh3/, experiments/

from ankh3 import grid  # noqa: E402
from ankh3.command_line import main_guard  # noqa: E402
from ankh3 import compile_cache  # noqa: E402
from ankh3.errors import EXIT_FAILED  # noqa: E402


def define_flags(flags) -> None:
    flags.DEFINE_string("config", None, "experiments family file (no :ARG; see --variants and --shape)")
    flags.DEFINE_string("shape", None, "model shape of every run (experiments/common.py RUN_SIZES; default tiny)")
    flags.DEFINE_integer("seeds", 1, "seeds 0..N-1 per variant")
    flags.DEFINE_list("variants", None, "only these variants (ARGs or names); default: all of the family")
    flags.DEFINE_multi_string("variant", None, "one more variant, repeatable (for ARGs with commas: --variant=0.15,0.3)")
    flags.DEFINE_integer("jobs", 1, "runs at a time (independent processes)")
    flags.DEFINE_enum("mode", "all", ("all", "pretrain"), "what each run does (launch/run.py --mode)")
    flags.DEFINE_string("tracking_uri", None, "MLflow store (default: config, MLFLOW_TRACKING_URI, sqlite:///mlflow.db)")
    flags.DEFINE_string("workdir_root", None, "where run workdirs go (default: runs/)")
    flags.DEFINE_string("compile_cache", compile_cache.DEFAULT_DIR,
                        "JAX compilation cache shared by the runs ('' = none; JAX_COMPILATION_CACHE_DIR wins)")
    flags.DEFINE_bool("dry_run", False, "list the jobs, their workdirs and whether they would be skipped; then exit")



def main() -> None:
    from absl import flags

    define_flags(flags)
    with main_guard():
        F, overrides = grid.parse_command_line(flags, sys.argv, grid.GridError, "grid.py", __doc__)
        if not F.config:
            raise grid.GridError("no --config given; e.g. --config=experiments/ablate_tasks.py --seeds=3")
        if F.jobs < 1:
            raise grid.GridError(f"--jobs={F.jobs}: need at least 1")
        jobs = grid.plan(F.config, F.seeds, [*(F.variants or []), *(F.variant or [])] or None, overrides,
                         flag_uri=F.tracking_uri, workdir_root=os.path.abspath(F.workdir_root) if F.workdir_root else None,
                         mode=F.mode, shape=F.shape)
        if F.dry_run:
            print(grid.dry_run_report(jobs), flush=True)
            return
        outcomes = grid.run_grid(jobs, F.jobs, env=compile_cache.cache_env(F.compile_cache))
    print(grid.summarize(outcomes), flush=True)
    if any(o.status == "failed" for o in outcomes):
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    main()
