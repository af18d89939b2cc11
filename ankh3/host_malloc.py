"""Transparent huge pages for the host allocator, set before a run's process starts its work.

XLA:CPU allocates each step's buffers afresh; glibc serves large ones with new mappings that the
kernel then faults in 4 KiB at a time. On a 2-core CPU that made the kernel time of a run a sizeable
fraction of its user time (the tiny run: 7.0M page faults and 17 s of sys per 200 steps; the probe
head: ~20k faults per step). glibc's `malloc.hugetlb=1` tunable (glibc >= 2.35; older ones ignore it)
asks for 2 MiB pages on those mappings: 0.2M faults, 6 s of sys (benchmarks/RESULTS.md, 2026-12-03).
glibc reads tunables only when a process starts, so the entry point re-executes itself once with it.
"""
from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb"


def environment_with_hugepages(env: dict[str, str]) -> dict[str, str] | None:
    """`env` with the tunable added to GLIBC_TUNABLES, or None where nothing is to change: not Linux,
    or the tunable already set (by us, or by a user who chose another value, e.g. 0 to turn it off)."""
    if not sys.platform.startswith("linux"):
        return None
    current = env.get("GLIBC_TUNABLES", "")
    if any(item.split("=")[0] == TUNABLE for item in current.split(":") if item):
        return None
    return {**env, "GLIBC_TUNABLES": f"{current}:{TUNABLE}=1" if current else f"{TUNABLE}=1"}


def reexec_with_hugepages() -> None:
    """Replaces this process (same PID, arguments and interpreter flags) by one started with the tunable;
    returns at once when it is already in place."""
    env = environment_with_hugepages(dict(os.environ))
    if env is not None:
        os.execve(sys.executable, sys.orig_argv, env)
