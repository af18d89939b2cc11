"""Runs that tests/test_reliability.py kills with SIGKILL: the real training loop, checkpointer and tracker
around a 64-weight least-squares model (a step costs microseconds, so the test stays fast).

    python tests/crash_child.py WORKDIR TRACKING_URI STEPS TRIALS SEED

imports once, then forks TRIALS runs of the same workdir and kills each with SIGKILL: even trials just
after a checkpoint save has started (during the write), odd ones at a random moment; a last run
finishes. The forks are the crashes; the imports (seconds) are paid once. Prints one line per trial.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from ankh3 import train  # noqa: E402
from ankh3.checkpoint import Checkpointer  # noqa: E402
from ankh3.tracking import Tracker  # noqa: E402

WIDTH = 64


class Batches:
    """Batch k is a pure function of k; the state is k."""

    def __init__(self):
        self.k = 0

    def __next__(self):
        self.k += 1
        time.sleep(0.01)  # a step long enough for kills to land between, and during, the loop's writes
        x = np.random.default_rng(self.k).integers(1, 20, (2, WIDTH)).astype(np.int32)
        return {"encoder_tokens": x, "decoder_inputs": x, "decoder_targets": x,
                "decoder_weights": np.ones((2, WIDTH), np.float32), "task": np.zeros(2, np.int32)}

    def get_state(self):
        return {"k": self.k}


class TalkingCheckpointer(Checkpointer):
    """Writes b'c' to `signal_fd` as each save starts."""

    signal_fd = None

    def save(self, step, state, data_state, force=False):
        if self.signal_fd is not None:
            os.write(self.signal_fd, b"c")
        return super().save(step, state, data_state, force)


def train_step(state, batch):
    target = batch["encoder_tokens"].astype(jnp.float32).mean(axis=0) / 20.0

    def loss_fn(params):
        return jnp.mean((params["w"] - target) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt_state = optax.sgd(0.1).update(grads, state["opt_state"], state["params"])
    one = jnp.ones(1, jnp.float32)
    sums = {key: one for key in train.SUM_KEYS}  # per-task counts the loop sums (only the loss matters here)
    sums.update(nll=loss * WIDTH * one, tokens=WIDTH * one, loss=loss, grad_norm=optax.global_norm(grads))
    return {**state, "step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
            "opt_state": opt_state}, sums


def run(workdir: str, uri: str, steps: int, signal_fd=None) -> None:
    params = {"w": jnp.zeros(WIDTH)}
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "rest": {}, "opt_state": optax.sgd(0.1).init(params)}
    tracker = Tracker(uri, "crash", "child-s0", workdir, flush_every_s=1.0).start()
    checkpointer = TalkingCheckpointer(os.path.join(workdir, "checkpoints"), keep=2)
    checkpointer.signal_fd = signal_fd
    batches = Batches()
    if checkpointer.latest_step() is not None:
        state, data = checkpointer.restore(None, state)
        batches.k = data["k"]
    settings = train.LoopSettings(steps=steps, log_every=1, eval_every=10**9, checkpoint_every=7, progress_every_s=0)
    if signal_fd is not None:
        os.write(signal_fd, b"s")
    train.train_loop(state=state, train_step=jax.jit(train_step), eval_step=None, batches=batches, eval_batches=[],
                     task_names=("t",), settings=settings, checkpointer=checkpointer, data_state=batches.get_state,
                     tracker=tracker, workdir=workdir, out=open(os.devnull, "w"))
    checkpointer.close()
    tracker.end("FINISHED")


def crash(workdir: str, uri: str, steps: int, during_checkpoint: bool, rng: np.random.Generator) -> str:
    """Forks a run and kills it with SIGKILL; returns when and how."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the run
        os.close(read_fd)
        try:
            run(workdir, uri, steps, write_fd)
        finally:
            os._exit(0)
    os.close(write_fd)
    assert os.read(read_fd, 1) == b"s"  # the loop starts
    if during_checkpoint:
        for _ in range(int(rng.integers(1, 4))):
            os.read(read_fd, 1)  # the n-th save has just begun
        time.sleep(float(rng.uniform(0, 0.05)))
        how = "during a checkpoint write"
    else:
        time.sleep(float(rng.uniform(0, 1.0)))
        how = "at a random moment"
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    os.close(read_fd)
    return how


def main(workdir: str, uri: str, steps: int, trials: int, seed: int) -> None:
    from mlflow import MlflowClient

    MlflowClient(uri).search_experiments()  # opens (creates) the store once: forks inherit it, as they do imports
    rng = np.random.default_rng(seed)
    for trial in range(trials):
        how = crash(workdir, uri, steps, trial % 2 == 0, rng)
        print(f"trial {trial}: SIGKILL {how}", flush=True)
    pid = os.fork()
    if pid == 0:
        try:
            run(workdir, uri, steps)
            os._exit(0)
        except BaseException:
            import traceback

            traceback.print_exc()
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    print(f"final run exit status {os.waitstatus_to_exitcode(status)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
