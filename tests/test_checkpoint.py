"""Checkpoints: a train state (with PRNG keys) and a data iterator state round-trip; last K kept."""
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ankh3.checkpoint import CheckpointError, Checkpointer, PreemptionGuard, to_saveable


def _state(scale=1.0):
    params = {"w": jnp.arange(6.0).reshape(2, 3) * scale, "b": jnp.ones(3) * scale}
    return {"step": jnp.asarray(3, jnp.int32), "params": params,
            "opt_state": optax.adamw(1e-3).init(params), "rng": jax.random.key(7)}


def test_save_restore_round_trip_with_data_state(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "ckpt"), keep=2)
    state = _state()
    data_state = {"next_index": 42, "rng": [1, 2, 3]}
    ckpt.save(3, state, data_state)
    ckpt.wait()
    restored, data = Checkpointer(str(tmp_path / "ckpt")).restore(None, _state(scale=0.0))
    assert data == data_state
    same = jax.tree.map(lambda a, b: np.array_equal(a, b), to_saveable(restored), to_saveable(state))
    assert all(jax.tree.leaves(same))
    # the restored key draws the same numbers as the saved one
    assert jnp.array_equal(jax.random.normal(restored["rng"], (4,)), jax.random.normal(state["rng"], (4,)))
    ckpt.close()


def test_keeps_last_k_and_bytes_data_state(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "ckpt"), keep=2)
    for step in (1, 2, 3):
        ckpt.save(step, _state(step), b'{"pos": %d}' % step)
    ckpt.wait()
    assert ckpt.all_steps() == [2, 3]
    restored, data = ckpt.restore(2, _state(0.0))
    assert data == b'{"pos": 2}'
    assert float(restored["params"]["b"][0]) == 2.0
    ckpt.close()


def test_restoring_into_another_shape_is_one_clear_error(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "ckpt"))
    ckpt.save(1, _state(), {})
    ckpt.wait()
    other = _state()
    other["params"]["w"] = jnp.zeros((4, 4))
    with pytest.raises(CheckpointError, match="does not match"):
        ckpt.restore(1, other)
    ckpt.close()


def test_preemption_guard_turns_sigterm_into_a_flag():
    with PreemptionGuard() as guard:
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.requested == signal.SIGTERM and guard.name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_unreadable_latest_checkpoint_is_set_aside_and_the_previous_restored(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "ckpt"), keep=3)
    for step in (1, 2):
        ckpt.save(step, _state(step), {"pos": step})
    ckpt.close()
    (tmp_path / "ckpt" / "2" / "data" / "process_0-of-1.json").write_text("{cut short")  # its data position
    ckpt = Checkpointer(str(tmp_path / "ckpt"))
    restored, data = ckpt.restore(None, _state(0.0))
    assert data == {"pos": 1} and float(restored["params"]["b"][0]) == 1.0
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["1", "unreadable-2"] and ckpt.latest_step() == 1
    ckpt.save(2, _state(5.0), {"pos": 2})  # training goes on past the step set aside
    ckpt.wait()
    assert ckpt.all_steps() == [1, 2]
    ckpt.close()
