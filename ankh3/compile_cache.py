"""JAX's persistent compilation cache for the platform's commands.

Runs of one platform mostly compile the same programs: the training step of a shape, and the probe
heads, which depend only on the embedding width and the length bucket. With the cache on disk every
run after the first loads those programs instead of compiling them (on a 2-core CPU the probes of a
short run are compile-bound). An existing JAX_COMPILATION_CACHE_DIR always wins.
"""
from __future__ import annotations

import os

from ankh3.names import REPO_ROOT

DEFAULT_DIR = os.path.join(REPO_ROOT, "runs", "jax_cache")  # the default of run.py, grid.py and sweep.py
# Cache programs that took at least this long to compile; JAX's default (1 s) skips most probe heads.
MIN_COMPILE_SECONDS = 0.2


def cache_env(directory: str | None) -> dict:
    """Environment for child processes (grid, sweep) that share a cache in `directory` ('' or None: none)."""
    if not directory or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return {}
    return {"JAX_COMPILATION_CACHE_DIR": os.path.abspath(directory),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": str(MIN_COMPILE_SECONDS)}


def enable(directory: str | None) -> str | None:
    """Turns the cache on in this process (before its first compilation); returns the folder in use."""
    import jax

    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    if not directory:
        return None
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(directory))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return os.path.abspath(directory)
