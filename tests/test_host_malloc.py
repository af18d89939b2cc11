"""launch/run.py's re-execution with glibc's huge-page tunable: the environment it builds, and that the
restarted process keeps its PID and arguments and takes far fewer page faults on large buffers."""
import os
import subprocess
import sys

import pytest

from ankh3.host_malloc import TUNABLE, environment_with_hugepages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THP = "/sys/kernel/mm/transparent_hugepage/enabled"

# Prints its PID on start (so twice where it re-executes), then its PID, argv and tunables, and the page
# faults of filling a fresh 256 MiB buffer from glibc's malloc.
CHILD = f"""
import os, sys
sys.path.insert(0, {ROOT!r})
print("pid", os.getpid(), flush=True)
from ankh3.host_malloc import reexec_with_hugepages
reexec_with_hugepages()
import ctypes
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
def faults():
    return int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[7])
before = faults()
ctypes.memset(libc.malloc(256 << 20), 1, 256 << 20)  # glibc's malloc (numpy asks for huge pages itself)
print("pid", os.getpid(), "argv", sys.argv[1:], "tunables", os.environ.get("GLIBC_TUNABLES"),
      "faults", faults() - before)
"""


def child(env_tunables):
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if env_tunables is not None:
        env["GLIBC_TUNABLES"] = env_tunables
    lines = subprocess.run([sys.executable, "-c", CHILD, "an-argument"], capture_output=True, text=True, env=env,
                           check=True).stdout.splitlines()
    return lines[:-1], lines[-1].split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tunables are Linux's")
def test_the_restarted_process_keeps_pid_and_arguments_and_faults_in_huge_pages():
    starts, out = child(None)
    assert len(starts) == 2  # re-executed once
    assert starts[0] == starts[1] == f"pid {out[1]}"  # exec, not a child: supervisors and signals see one process
    assert out[3] == "['an-argument']" and out[5] == f"{TUNABLE}=1"
    faults = int(out[7])
    if os.path.exists(THP) and "[never]" in open(THP).read():
        pytest.skip("transparent huge pages are off on this machine")
    assert faults < (256 << 20) // 4096 // 8, faults  # 4 KiB pages would take 65,536 faults


def test_a_users_own_setting_is_kept():
    assert environment_with_hugepages({"GLIBC_TUNABLES": f"{TUNABLE}=0"}) is None  # turned off on purpose
    if sys.platform.startswith("linux"):
        env = environment_with_hugepages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "HOME": "/h"})
        assert env == {"GLIBC_TUNABLES": f"glibc.malloc.arena_max=2:{TUNABLE}=1", "HOME": "/h"}
        starts, out = child(f"{TUNABLE}=0")
        assert len(starts) == 1 and out[5] == f"{TUNABLE}=0"
        if os.path.exists(THP) and "[madvise]" in open(THP).read():  # huge pages only where asked for
            assert int(out[7]) > (256 << 20) // 4096 // 2  # the control: 4 KiB pages without the tunable
