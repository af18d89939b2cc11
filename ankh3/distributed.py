"""One run over several JAX processes (multi-host): joining them, who speaks, agreeing to stop, losing a peer.

    from ankh3 import distributed
    distributed.initialize(coordinator, num_processes, process_id)   # before any JAX computation
    if distributed.is_main(): ...                                     # tracking, printing, artifacts

`initialize` joins the processes with `jax.distributed.initialize`: from the three flags of
launch/run.py when given, else by JAX's own cluster detection (Cloud TPU VM pods, SLURM `srun`, Open
MPI, Kubernetes), else it does nothing and the run is one process. A peer that dies (kill -9, a lost
host) makes every other process exit with one `error:` line instead of a hang or a runtime dump.
"""
from __future__ import annotations

import atexit
import os
import re
import sys
import threading

import numpy as np

from ankh3.errors import ERROR_PREFIX, EXIT_FAILED, UserError

PEER_LOST = ("lost contact with another process of this run ({why}); every process stops: re-run the same "
             "command on every host to resume from the last checkpoint")


class DistributedError(UserError, ValueError):
    """The multi-process flags or environment cannot start a run."""


def detected_cluster() -> str | None:
    """The name of the cluster environment JAX would join by itself ('slurm', 'gce_tpu', ...), or None."""
    from jax._src import clusters  # JAX's detection, so a run joins exactly when jax.distributed would

    for env in clusters.ClusterEnv._cluster_types:
        if not env.opt_in_only_method and env.is_env_present():
            return env.name
    return None


def check_flags(coordinator: str | None, num_processes: int | None, process_id: int | None) -> bool:
    """True when the three flags are given (and valid), False when none is; else one line saying what is missing."""
    given = {"--coordinator": coordinator, "--num_processes": num_processes, "--process_id": process_id}
    if all(v is None for v in given.values()):
        return False
    missing = [name for name, v in given.items() if v is None]
    if missing:
        raise DistributedError(f"{', '.join(missing)} missing: a multi-process run needs --coordinator=HOST:PORT, "
                               "--num_processes=N and --process_id=I on every process (or none of them on "
                               "SLURM/Cloud TPU, where JAX finds them)")
    if not re.fullmatch(r"[^\s:]+:\d+|\[[0-9a-fA-F:]+\]:\d+", coordinator):
        raise DistributedError(f"--coordinator={coordinator} is not HOST:PORT; pass process 0's address, "
                               "e.g. --coordinator=10.0.0.2:12355")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise DistributedError(f"--process_id={process_id} must be in 0..{num_processes - 1} "
                               f"(--num_processes={num_processes})")
    return True


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               heartbeat_timeout_s: int = 100) -> int:
    """Joins this run's processes, before any JAX computation; returns the number of processes.

    A process that stops sending heartbeats for `heartbeat_timeout_s` counts as dead.
    """
    import jax

    explicit = check_flags(coordinator, num_processes, process_id)
    if not explicit and detected_cluster() is None:
        return 1
    if jax.distributed.is_initialized():
        return jax.process_count()
    # Runtime log lines (E/W) would bury the one line a lost peer ends with; fatal ones still show.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
    jax.config.update("jax_enable_preemption_service", False)  # stopping is agreed by StopAgreement
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id, heartbeat_timeout_seconds=heartbeat_timeout_s,
                                   initialization_timeout=max(heartbeat_timeout_s, 60))
    except (RuntimeError, ValueError) as e:  # JaxRuntimeError is a RuntimeError
        raise DistributedError(f"could not join the run's processes at {coordinator or 'the detected coordinator'}: "
                               f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}; "
                               "check that every process was started with the same coordinator and count") from None
    if jax.process_count() > 1:
        _exit_on_runtime_fatal()
    return jax.process_count()


def is_main() -> bool:
    """True on the process that tracks, prints and writes artifacts (process 0; the only one when alone)."""
    import jax

    return jax.process_index() == 0


def multi_process() -> bool:
    import jax

    return jax.process_count() > 1


# ---- a lost peer -----------------------------------------------------------------------------------
_real_stderr = 2  # the terminal's stderr, once _exit_on_runtime_fatal has put a filter in front of fd 2


def peer_lost(why: str) -> None:
    """Ends this process at once with one line. Not sys.exit: JAX's shutdown would wait at a barrier for
    the dead peer and then abort with a runtime dump."""
    sys.stdout.flush()
    os.write(_real_stderr, f"{ERROR_PREFIX}{PEER_LOST.format(why=why)}\n".encode())
    os._exit(EXIT_FAILED)


def is_peer_failure(error: BaseException) -> bool:
    """A runtime error of a cross-process collective or of the coordination service (not a user mistake)."""
    import jax

    return isinstance(error, jax.errors.JaxRuntimeError) and multi_process()


def _exit_on_runtime_fatal() -> None:
    """Routes the native stderr through a thread that, on the runtime's 'terminating process' fatal
    line (the coordination service saw a task die), prints one line and exits before the abort's
    stack dump. Every other line passes through unchanged."""
    global _real_stderr
    real = _real_stderr = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    fatal = re.compile(rb"^F\d{4} .*(Terminating process|distributed service)")

    def pump() -> None:
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            pending = b""
            while chunk := pipe.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if fatal.match(line):
                        peer_lost("the JAX distributed service reports a task died")
                    os.write(real, line + b"\n")
            os.write(real, pending)

    sys.stderr.flush()
    sys.stderr = os.fdopen(os.dup(2), "w", buffering=1)  # Python's own stderr through the same pipe, in order
    thread = threading.Thread(target=pump, name="ankh3-stderr", daemon=True)
    thread.start()

    def drain() -> None:
        """At exit (after any traceback is printed): close the pipe's writers and let the thread pass it all on."""
        sys.stderr.flush()
        os.dup2(real, 2)
        sys.stderr.close()
        sys.stderr = os.fdopen(os.dup(real), "w", buffering=1)
        thread.join(timeout=5)

    atexit.register(drain)


def barrier(name: str, timeout_s: int = 3600) -> None:
    """Every process waits here for the others (through the coordination service: no collective, so
    no communicator times out while one host is still busy, e.g. opening the MLflow store)."""
    from jax._src import distributed as jax_distributed

    if multi_process():
        jax_distributed.global_state.client.wait_at_barrier(f"ankh3/{name}", timeout_s * 1000)


# ---- agreeing to stop ------------------------------------------------------------------------------
class StopAgreement:
    """Makes a signal seen by any process stop every process after the same step.

    Each `check(local)` combines the processes' flags (a max over a tiny array) and returns the
    result of the previous check, so no host waits on the device for it: every process stops one
    step after the first one saw the signal, and all at the same step.
    """

    def __init__(self, mesh):
        import jax
        from jax.sharding import NamedSharding, PartitionSpec

        self._sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names))
        self._local_rows = len(mesh.local_devices)
        self._max = jax.jit(lambda x: x.max(), out_shardings=NamedSharding(mesh, PartitionSpec()))
        self._pending = None

    def check(self, local_signal: int) -> int:
        """The agreed signal number (0: none yet) as of the previous call."""
        import jax

        rows = np.full((self._local_rows,), local_signal, np.int32)
        flags = jax.make_array_from_process_local_data(self._sharding, rows)
        previous, self._pending = self._pending, self._max(flags)
        return int(jax.device_get(previous)) if previous is not None else 0
