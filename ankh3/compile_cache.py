"""JAX's persistent compilation cache for the platform's commands.

Runs of one platform mostly compile the same programs: the training step of a shape, and the probe
heads, which depend only on the embedding width and the length bucket. With the cache on disk every
run after the first loads those programs instead of compiling them (on a 2-core CPU the probes of a
short run are compile-bound). An existing JAX_COMPILATION_CACHE_DIR always wins.

The cache lives in one subfolder per host CPU type (`host_cpu_tag`): XLA:CPU compiles for the host's
instruction set, and a checkout on a filesystem shared by nodes with different CPUs would otherwise
hand each node the other's programs, which XLA rejects on load (and recompiles, overwriting them).
"""
from __future__ import annotations

import hashlib
import os
import platform

from ankh3.names import REPO_ROOT

DEFAULT_DIR = os.path.join(REPO_ROOT, "runs", "jax_cache")  # the default of run.py, grid.py and sweep.py
# Cache programs that took at least this long to compile; JAX's default (1 s) skips most probe heads.
MIN_COMPILE_SECONDS = 0.2
# The /proc/cpuinfo fields that decide what XLA:CPU may emit (x86: model and flags; Arm: features and part).
_CPU_FIELDS = ("model name", "flags", "features", "cpu implementer", "cpu part")


def host_cpu_tag(cpuinfo: str | None = None) -> str:
    """A folder name for this host's CPU type: its architecture and a digest of its model and features."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:  # not Linux: the processor string is all the standard library offers
            cpuinfo = platform.processor()
    first = cpuinfo.split("\n\n")[0]  # every core of a host is the same type
    fields = []
    for line in first.splitlines():
        name, colon, value = line.partition(":")
        if colon and name.strip().lower() in _CPU_FIELDS:
            fields.append(f"{name.strip().lower()}:{value.strip()}")
    digest = hashlib.sha256("\n".join(sorted(fields) or [first]).encode()).hexdigest()[:12]
    return f"{platform.machine() or 'cpu'}-{digest}"


def cache_folder(directory: str) -> str:
    """The folder of `directory` that this host's programs go to."""
    return os.path.join(os.path.abspath(directory), host_cpu_tag())


def cache_env(directory: str | None) -> dict:
    """Environment for child processes (grid, sweep) that share a cache in `directory` ('' or None: none)."""
    if not directory or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return {}
    return {"JAX_COMPILATION_CACHE_DIR": cache_folder(directory),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": str(MIN_COMPILE_SECONDS)}


def enable(directory: str | None) -> str | None:
    """Turns the cache on in this process (before its first compilation); returns the folder in use."""
    import jax

    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    if not directory:
        return None
    folder = cache_folder(directory)
    jax.config.update("jax_compilation_cache_dir", folder)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return folder
