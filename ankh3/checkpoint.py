"""Checkpoints of a training run with orbax: train state (params, optimizer, step, RNG) and data position.

Saves are asynchronous (training goes on while arrays are written) and the last K are kept. The data
iterator's state is JSON, taken synchronously at save time so it matches the train state exactly; with
several JAX processes every process saves (and restores) its own, as data/process_I-of-N.json (Grain's
layout), while the arrays are saved collectively. `PreemptionGuard` turns SIGTERM/SIGINT into a flag
the loop checks, so it can save before exiting.
"""
from __future__ import annotations

import dataclasses
import functools
import gc
import json
import logging
import os
import signal
import sys
from typing import Any

import jax
import numpy as np

from ankh3.errors import UserError

STATE_ITEM, DATA_ITEM = "state", "data"
log = logging.getLogger(__name__)
_DAMAGE_MARKERS = ("DATA_LOSS", "NOT_FOUND", "OUT_OF_RANGE")  # tensorstore's words for files cut short or missing


class CheckpointError(UserError, RuntimeError):
    """A checkpoint cannot be restored into this run (different model or optimizer)."""


class Checkpointer:
    """Orbax CheckpointManager over `directory` with items `state` (pytree) and `data` (JSON)."""

    def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=(STATE_ITEM, DATA_ITEM))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_state: Any, force: bool = False) -> bool:
        """Starts an asynchronous save of `state` (arrays) and `data_state` (JSON-able) at `step`."""
        ocp = self._ocp
        args = ocp.args.Composite(**{
            STATE_ITEM: ocp.args.StandardSave(to_saveable(state)),
            DATA_ITEM: _data_args()[0](_json_data_state(data_state)),
        })
        return self._manager.save(step, args=args, force=force)

    def restore(self, step: int | None, target: Any) -> tuple[Any, Any]:
        """(state shaped like `target`, data state) of `step`, or by default of the newest checkpoint
        that can be read: one that cannot (cut short by a crash, damaged on disk) is set aside as
        `unreadable-STEP` (nothing is deleted) with a warning, once an older one has restored."""
        if step is not None:
            return self._restore_step(step, target)
        steps = sorted(self.all_steps(), reverse=True)
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        failed: list[tuple[int, str, bool]] = []  # (step, why, another model?): no exception kept alive
        for candidate in steps:
            try:
                restored = self._restore_step(candidate, target)
            except Exception as e:  # noqa: BLE001 -- orbax and tensorstore raise many kinds, even bare Exception
                failed.append((candidate, str(e) if isinstance(e, CheckpointError) else first_line(e),
                               isinstance(e, CheckpointError)))
                continue
            finally:
                collect_abandoned_reads()
            self._set_aside(failed)
            return restored
        # Not one can be read: the same failure everywhere is this run's doing (another model), not damage.
        step, why, mismatch = failed[0]
        if mismatch:
            raise CheckpointError(why)
        raise CheckpointError(f"no checkpoint in {self.directory} can be read (newest: step {step}: {why}); "
                              "restore the directory from a backup or use a new --workdir")

    def _restore_step(self, step: int, target: Any) -> tuple[Any, Any]:
        ocp = self._ocp
        abstract = jax.tree.map(_abstract_leaf, to_saveable(target))
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**{
                STATE_ITEM: ocp.args.StandardRestore(abstract),
                DATA_ITEM: _data_args()[1](),
            }))
        except (ValueError, KeyError, TypeError) as e:
            if isinstance(e, (json.JSONDecodeError, UnicodeDecodeError)) or any(m in str(e) for m in _DAMAGE_MARKERS):
                raise  # damage, not another model: restore() falls back or says the checkpoints cannot be read
            raise CheckpointError(
                f"checkpoint {self.directory}/{step} does not match this run's model or optimizer "
                f"({first_line(e)}); use a new --workdir or the config the checkpoint was written with") from None
        state = from_saveable(restored[STATE_ITEM], target)
        return state, _unwrap_data_state(restored[DATA_ITEM])

    def _set_aside(self, failed: list[tuple[int, str, bool]]) -> None:
        """Renames unreadable newer steps to `unreadable-STEP` so that orbax no longer lists them."""
        for step, why, _ in failed:
            path = os.path.join(self.directory, str(step))
            aside = os.path.join(self.directory, f"unreadable-{step}")
            while os.path.exists(aside):
                aside += "-again"
            os.rename(path, aside)
            log.warning("checkpoint %s cannot be read (%s); set aside as %s, resuming from an older one",
                        path, why, aside)
        if failed:
            self._manager.reload()

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


# ---- every process's data position -------------------------------------------------------------------
def _host_file(directory, index: int, count: int):
    return directory / f"process_{index}-of-{count}.json"


@functools.cache
def _data_args():
    """(save args, restore args) of the per-process data item; registered with orbax once, on first use."""
    import orbax.checkpoint as ocp

    class HostDataHandler(ocp.CheckpointHandler):
        """Writes this process's JSON data state into the item directory; reads it back. A one-process
        checkpoint written as orbax JSON (data/metadata) restores too."""

        def save(self, directory, args):
            _host_file(directory, jax.process_index(), jax.process_count()).write_text(json.dumps(args.state))

        def restore(self, directory, args=None):
            index, count = jax.process_index(), jax.process_count()
            path = _host_file(directory, index, count)
            if path.exists():
                return json.loads(path.read_text())
            if count == 1 and (directory / "metadata").exists():
                return json.loads((directory / "metadata").read_text())
            saved = sorted(p.name for p in directory.glob("process_*-of-*.json")) or ["none"]
            raise CheckpointError(f"{directory} holds the data positions {', '.join(saved)}, not this run's "
                                  f"process {index} of {count}; resume with the number of processes that wrote it")

        def metadata(self, directory):
            return None

    @ocp.args.register_with_handler(HostDataHandler, for_save=True)
    @dataclasses.dataclass
    class HostDataSave(ocp.args.CheckpointArgs):
        state: Any

    @ocp.args.register_with_handler(HostDataHandler, for_restore=True)
    @dataclasses.dataclass
    class HostDataRestore(ocp.args.CheckpointArgs):
        pass

    return HostDataSave, HostDataRestore


def collect_abandoned_reads() -> None:
    """A failed orbax read leaves its read coroutines unfinished; collected at exit, each prints an
    'Exception ignored ... GeneratorExit' traceback. Collect them now, without the noise."""
    previous = sys.unraisablehook
    sys.unraisablehook = lambda _: None
    try:
        gc.collect()
    finally:
        sys.unraisablehook = previous


def first_line(error: BaseException) -> str:
    """What went wrong, short: tensorstore appends its whole spec after 'See full TensorStore details'."""
    text = str(error).strip().split(" See full TensorStore details")[0]
    return (text.splitlines()[0][:300] if text else "") or type(error).__name__


# ---- PRNG keys are saved as their raw key data -----------------------------------------------------
def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_saveable(tree):
    """Typed PRNG keys -> uint32 key data (orbax stores plain arrays)."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def from_saveable(tree, target):
    """Undoes `to_saveable`, re-wrapping key data where `target` holds typed keys."""
    return jax.tree.map(
        lambda saved, like: jax.random.wrap_key_data(saved, impl=jax.random.key_impl(like)) if _is_key(like) else saved,
        tree, target)


def _abstract_leaf(x):
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    if isinstance(x, np.ndarray):
        return jax.ShapeDtypeStruct(x.shape, x.dtype)
    return x


def _json_data_state(state: Any) -> dict:
    """Grain iterator states are dicts (dataset API) or bytes (DataLoader); both become JSON."""
    if isinstance(state, (bytes, bytearray)):
        return {"encoding": "utf-8-bytes", "value": bytes(state).decode("utf-8")}
    json.dumps(state)  # fail now, with the offending value, rather than in the save thread
    return {"encoding": "json", "value": state}


def _unwrap_data_state(saved: dict) -> Any:
    if saved.get("encoding") == "utf-8-bytes":
        return saved["value"].encode("utf-8")
    return saved.get("value")


# ---- preemption --------------------------------------------------------------------------------------
class PreemptionGuard:
    """While active, SIGTERM and SIGINT set `requested` instead of killing the process.

    The loop saves a checkpoint and exits when it sees the flag; a second signal exits at once. With
    several processes, `agreement` (ankh3.distributed.StopAgreement) makes them all see the flag at
    the same step, whichever of them got the signal, so that they save the same step together.
    """

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT), agreement=None):
        self.signals = signals
        self._seen: int | None = None
        self._agreement = agreement
        self._agreed: int | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> int | None:
        """The signal to stop for, or None. Read once per step (the same number of times on every process)."""
        if self._agreement is None:
            return self._seen
        if self._agreed is None:
            self._agreed = self._agreement.check(self._seen or 0) or None
        return self._agreed

    def _handle(self, signum, frame):
        if self._seen is not None:  # asked twice: the user means it
            raise KeyboardInterrupt
        self._seen = signum

    def __enter__(self) -> "PreemptionGuard":
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def name(self) -> str:
        signum = self._agreed if self._agreement is not None else self._seen
        return signal.Signals(signum).name if signum is not None else ""
