"""Pretraining: the loss, pure jitted train/eval steps, and the loop (metrics, evaluation, checkpoints).

The train state is a pytree {step, params, rest, opt_state}: `params` are the model's nnx.Param
state, `rest` everything else in the model (the dropout RNG), so one orbax save captures it all and a
resumed run continues bit for bit. Losses are per target token; every metric is also kept per task
(the objective's index in the batch's `task` column).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ankh3.errors import EXIT_NONFINITE, UserError
from ankh3.names import HISTORY
from ankh3.objectives import mixture_name
from ankh3.sharding import place as place_on, shard_batch
from ankh3.tokenizer import RESIDUES, Tokenizer

BATCH_KEYS = ("encoder_tokens", "decoder_inputs", "decoder_targets", "decoder_weights", "task")
SUM_KEYS = ("nll", "tokens", "correct", "residues", "residue_nll")  # what token_metrics sums per task
UNIGRAM_KEY = "data/unigram_entropy"  # the training data's residue-frequency entropy, logged once


class NonFiniteLossError(UserError, RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint is left in place."""

    exit_code = EXIT_NONFINITE


# ---- loss -------------------------------------------------------------------------------------------
def residue_ids(tokenizer: Tokenizer) -> np.ndarray:
    """The ids of the tokenizer's residue tokens: the targets that token accuracy counts."""
    return np.unique(tokenizer.encode(RESIDUES, on_invalid="x")).astype(np.int32)


def _residue_lookup(vocab_size: int, ids: Sequence[int] | None) -> jax.Array:
    """A [vocab] float mask of residue ids; None means the default tokenizer's residues."""
    ids = residue_ids(Tokenizer.default(vocab_size)) if ids is None else np.asarray(ids, np.int32)
    mask = np.zeros(vocab_size, np.float32)
    mask[ids] = 1.0
    return jnp.asarray(mask)


def token_metrics(logits: jax.Array, batch: dict, num_tasks: int,
                  residues: Sequence[int] | None = None) -> tuple[jax.Array, dict]:
    """Mean cross-entropy per target token, and sums per task for exact averaging over many batches.

    The loss covers every target token (residues, sentinels, EOS), as in T5. Accuracy counts only
    residue targets (`residues`: their ids; None = those of `Tokenizer.default` for this vocabulary):
    sentinels and EOS are nearly free to predict and would otherwise make up half of a denoising
    target. Returns (loss, sums) where sums holds `nll`, `tokens` (all targets), `correct`, `residues`
    and `residue_nll` (residue targets only) as float32 [num_tasks].
    """
    logits = logits.astype(jnp.float32)
    targets = batch["decoder_targets"]
    weights = batch["decoder_weights"].astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    is_residue = weights * _residue_lookup(logits.shape[-1], residues)[targets]
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    per_task = jax.nn.one_hot(batch["task"], num_tasks, dtype=jnp.float32)  # [B, T]
    sums = {
        "nll": per_task.T @ jnp.sum(nll * weights, axis=1),
        "tokens": per_task.T @ jnp.sum(weights, axis=1),
        "correct": per_task.T @ jnp.sum(correct * is_residue, axis=1),
        "residues": per_task.T @ jnp.sum(is_residue, axis=1),
        "residue_nll": per_task.T @ jnp.sum(nll * is_residue, axis=1),
    }
    loss = jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1.0)
    return loss, sums


def summarize(sums: dict, task_names: Sequence[str], prefix: str,
              unigram_floor: float | None = None) -> dict[str, float]:
    """Summed per-task counts -> {prefix/NAME/loss, prefix/NAME/accuracy, prefix/NAME/residue_loss} per
    objective NAME, and the same pooled over the mixture under its name (`mixture_name`, e.g.
    'mix_nlu_s2s'; absent for a single objective), never a bare `prefix/loss`: losses of different
    objectives must not share a metric name.

    `loss` is the mean cross-entropy over all target tokens; `residue_loss` over residue targets only
    (nats per residue, comparable with the unigram floor); `accuracy` is residue accuracy: the fraction
    of residue targets predicted exactly by argmax. With `unigram_floor` (nats), each `residue_loss`
    also comes as `loss_minus_unigram`: below 0 means the model predicts residues better than their
    frequencies alone.
    """
    totals = {k: np.asarray(sums[k], np.float64) for k in SUM_KEYS}
    groups = [(name, i) for i, name in enumerate(task_names)]
    if len(task_names) > 1:
        groups.append((mixture_name(task_names), slice(None)))
    out = {}
    for name, rows in groups:
        nll, tokens, correct, residues, residue_nll = (np.sum(totals[k][rows]) for k in SUM_KEYS)
        if tokens > 0:
            out[f"{prefix}/{name}/loss"] = float(nll / tokens)
        if residues > 0:
            out[f"{prefix}/{name}/accuracy"] = float(correct / residues)
            out[f"{prefix}/{name}/residue_loss"] = float(residue_nll / residues)
            if unigram_floor is not None:
                out[f"{prefix}/{name}/loss_minus_unigram"] = float(residue_nll / residues - unigram_floor)
    return out


# ---- state and steps --------------------------------------------------------------------------------
def init_state(model: nnx.Module, tx, mesh=None) -> tuple[Any, dict]:
    """(graphdef, state) for a model: its params, the rest of its state, and the optimizer state.

    With a mesh, every array not already laid out on it (counters, RNG, unsharded optimizer
    statistics) is replicated over it, so a restored checkpoint lands where jit expects it.
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt_state = jax.jit(tx.init)(params)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "rest": rest, "opt_state": opt_state}
    return graphdef, (replicate_loose(state, mesh) if mesh is not None else state)


def replicate_loose(tree, mesh):
    """Replicates over `mesh` each array that is not already a NamedSharding on it."""
    from jax.sharding import NamedSharding, PartitionSpec

    def place(x):
        if isinstance(x, jax.Array) and not (isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh):
            return place_on(x, NamedSharding(mesh, PartitionSpec()))  # also across processes
        return x

    return jax.tree.map(place, tree)


def _forward(graphdef, params, rest, batch, deterministic: bool, num_tasks: int, residues=None):
    model = nnx.merge(graphdef, params, rest)
    tokens = batch["encoder_tokens"]
    logits = model(tokens, batch["decoder_inputs"], encoder_mask=tokens != 0, deterministic=deterministic)
    loss, sums = token_metrics(logits, batch, num_tasks, residues)
    _, _, new_rest = nnx.split(model, nnx.Param, ...)
    return loss, (sums, new_rest)


def make_train_step(graphdef, tx, num_tasks: int, dropout: bool, residues: Sequence[int] | None = None) -> Callable:
    """jit(state, batch) -> (state, sums): one micro-batch of gradient (one update without accumulation).

    `residues`: the residue token ids that accuracy counts (`residue_ids(tokenizer)`); None = the
    default tokenizer's, which is wrong for a converted checkpoint with another vocabulary layout.
    """
    residues = None if residues is None else tuple(int(i) for i in residues)
    import optax

    def train_step(state, batch):
        grad_fn = jax.value_and_grad(_forward, argnums=1, has_aux=True)
        (loss, (sums, rest)), grads = grad_fn(graphdef, state["params"], state["rest"], batch, not dropout,
                                              num_tasks, residues)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        sums = dict(sums, loss=loss, grad_norm=optax.global_norm(grads))
        return {"step": state["step"] + 1, "params": params, "rest": rest, "opt_state": opt_state}, sums

    return jax.jit(train_step, donate_argnums=(0,))


def make_eval_step(graphdef, num_tasks: int, residues: Sequence[int] | None = None) -> Callable:
    """jit(state, batch) -> sums, without dropout; `residues` as in make_train_step."""
    residues = None if residues is None else tuple(int(i) for i in residues)

    def eval_step(state, batch):
        _, (sums, _) = _forward(graphdef, state["params"], state["rest"], batch, True, num_tasks, residues)
        return sums

    return jax.jit(eval_step)


def device_batch(batch: dict, mesh) -> dict:
    """The model's columns of this process's numpy batch, as the global batch on the mesh (split over
    the batch axis). With several processes, each passes its own share (its rows of the global batch,
    in process order) and the result is one array over all hosts."""
    arrays = {k: np.asarray(batch[k]) for k in BATCH_KEYS}
    return shard_batch(arrays, mesh) if mesh is not None else jax.device_put(arrays)


def evaluate(eval_step, state, batches: Sequence[dict], task_names, prefix: str = "eval",
             unigram_floor: float | None = None) -> dict[str, float]:
    """Token-weighted losses and residue accuracy over fixed held-out batches (already on device)."""
    totals = None
    for batch in batches:
        sums = eval_step(state, batch)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    return summarize(jax.device_get(totals), task_names, prefix, unigram_floor) if totals is not None else {}


# ---- the loop ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class LoopSettings:
    steps: int
    grad_accum: int = 1
    log_every: int = 10
    eval_every: int = 100
    checkpoint_every: int = 250
    progress_every_s: float = 5.0
    tokens_per_step: int = 0
    dropout: bool = False
    # Residue-frequency entropy of the training data in nats (ankh3.data.frequencies.unigram_entropy):
    # each held-out residue loss is shown beside it. None: not measured, not shown.
    unigram_floor: float | None = None


@dataclasses.dataclass
class TrainResult:
    state: Any
    final_step: int
    metrics: dict[str, float]  # last train window and last evaluation
    stopped_by: str = ""  # '' when all steps ran, else the signal's name
    wall_s: float = 0.0


class Progress:
    """The terminal progress line, printed at most every `every_s` seconds (always on the last step)."""

    def __init__(self, total: int, every_s: float, out=sys.stdout):
        self.total, self.every_s, self.out = total, every_s, out
        self._last = -math.inf

    def maybe_print(self, step: int, metrics: dict[str, float], steps_per_s: float, task_names, force=False):
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return
        self._last = now
        parts = [f"step {step}/{self.total}"]
        for split in ("train", "eval"):
            losses = [f"{t} {metrics[f'{split}/{t}/loss']:.3f}" for t in task_names if f"{split}/{t}/loss" in metrics]
            if losses:
                parts.append(f"{split} {', '.join(losses)}")
        floor = metrics.get(UNIGRAM_KEY)
        beside = [f"{t} {metrics[f'eval/{t}/loss_minus_unigram']:+.3f}" for t in task_names
                  if f"eval/{t}/loss_minus_unigram" in metrics]
        if floor is not None and beside:
            parts.append(f"eval per residue - unigram {floor:.3f}: {', '.join(beside)}")
        if steps_per_s > 0:
            parts.append(f"{steps_per_s:.2f} steps/s")
            parts.append(f"ETA {format_duration((self.total - step) / steps_per_s)}")
        print(" | ".join(parts), file=self.out, flush=True)


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def train_loop(*, state, train_step, eval_step, batches: Iterator[dict], eval_batches: Sequence[dict],
               task_names: Sequence[str], settings: LoopSettings, mesh=None, checkpointer=None,
               data_state: Callable[[], Any] | None = None, tracker=None, guard=None, schedule=None,
               workdir: str | None = None, out=sys.stdout,
               on_eval: Callable[[int, dict], None] | None = None,
               on_log: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Trains from `state['step']` to `settings.steps`, logging, evaluating and checkpointing.

    `on_eval(step, metrics)` runs after each evaluation is logged; it may raise to stop the run
    (a sweep's pruner does, so a pruned trial stops within one evaluation interval). `on_log(step,
    metrics)` sees each logged step's metrics (the training-health check).

    `batches` yields numpy batches (grad_accum of them per update); `data_state()` gives the
    iterator's state for checkpoints. A non-finite loss raises NonFiniteLossError before any
    checkpoint of the bad state is written; a signal seen by `guard` saves and returns.
    """
    start_step = int(jax.device_get(state["step"])) // settings.grad_accum
    progress = Progress(settings.steps, settings.progress_every_s, out)
    history = _History(workdir, start_step)
    window: list[dict] = []
    window_start, window_steps = time.monotonic(), 0
    latest: dict[str, float] = {}
    begin = time.monotonic()
    step = start_step
    stopped_by = ""
    first_step_s = None
    while step < settings.steps:
        t0 = time.monotonic()
        for _ in range(settings.grad_accum):
            state, sums = train_step(state, device_batch(next(batches), mesh))
            window.append(sums)
        step += 1
        window_steps += 1
        if first_step_s is None:
            jax.block_until_ready(state["step"])
            first_step_s = time.monotonic() - t0  # includes compilation
            window_start, window_steps = time.monotonic(), 0
        last = step == settings.steps
        stopping = guard is not None and guard.requested is not None
        due_ckpt = checkpointer is not None and (step % settings.checkpoint_every == 0 or last or stopping)
        due_log = step % settings.log_every == 0 or last or stopping or due_ckpt
        due_eval = eval_batches and (step % settings.eval_every == 0 or last)
        metrics: dict[str, float] = {}
        if due_log and window:
            metrics = _window_metrics(window, task_names, step)  # checks finiteness
            elapsed = time.monotonic() - window_start
            if window_steps > 0 and elapsed > 0:
                metrics["perf/steps_per_s"] = window_steps / elapsed
                metrics["perf/step_time_s"] = elapsed / window_steps
                metrics["perf/tokens_per_s"] = settings.tokens_per_step * window_steps / elapsed
            if schedule is not None:
                metrics["train/learning_rate"] = float(schedule(step - 1))
            window, window_start, window_steps = [], time.monotonic(), 0
        if due_eval:
            metrics.update(evaluate(eval_step, state, eval_batches, task_names, unigram_floor=settings.unigram_floor))
            window_start = time.monotonic()  # throughput counts training only
        if metrics:
            if first_step_s is not None and step == start_step + 1:
                metrics["perf/first_step_s"] = first_step_s
            if settings.unigram_floor is not None and UNIGRAM_KEY not in latest:
                metrics[UNIGRAM_KEY] = float(settings.unigram_floor)
            latest.update(metrics)
            history.append(step, metrics)
            if tracker is not None:
                tracker.log_metrics(step, metrics)
            progress.maybe_print(step, latest, latest.get("perf/steps_per_s", 0.0), task_names, force=last or stopping)
            if on_log is not None:
                on_log(step, metrics)
        if due_eval and on_eval is not None:
            on_eval(step, dict(latest))
        if due_ckpt:
            if tracker is not None:  # the store holds every row up to a checkpoint before it exists: see tracking
                tracker.flush()
            checkpointer.save(step * settings.grad_accum, state, data_state() if data_state else {}, force=True)
        if stopping:
            stopped_by = guard.name
            break
    if checkpointer is not None:
        checkpointer.wait()
    return TrainResult(state, step, latest, stopped_by, time.monotonic() - begin)


def _window_metrics(window: list[dict], task_names, step: int) -> dict[str, float]:
    fetched = jax.device_get(window)
    losses = np.array([w["loss"] for w in fetched], np.float64)
    if not np.isfinite(losses).all():
        bad = int(np.flatnonzero(~np.isfinite(losses))[0])
        raise NonFiniteLossError(
            f"non-finite loss ({losses[bad]}) at step {step - len(window) + bad + 1}; stopping with the last good "
            "checkpoint in place. Lower optimizer.learning_rate, raise optimizer.warmup_steps or keep "
            "optimizer.clip_norm > 0")
    totals = {k: np.sum([w[k] for w in fetched], axis=0) for k in SUM_KEYS}
    metrics = summarize(totals, task_names, "train")
    metrics["train/grad_norm"] = float(np.mean([w["grad_norm"] for w in fetched]))
    return metrics


class _History:
    """Every logged metric as JSON lines in WORKDIR/history.jsonl (read back for loss plots and tests).

    On resume, records past the restored step are dropped: they belong to the abandoned future.
    """

    def __init__(self, workdir: str | None, start_step: int):
        self.path = os.path.join(workdir, HISTORY) if workdir else None
        if self.path and os.path.exists(self.path):
            kept = [r for r in read_history(self.path) if r["step"] <= start_step]
            with open(self.path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)

    def append(self, step: int, metrics: dict[str, float]) -> None:
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")


def read_history(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def loss_curves(records: Sequence[dict], task_names: Sequence[str]) -> dict[str, dict[str, list]]:
    """{name: {'train': [(step, loss)], 'eval': [...], 'eval per residue': [...], 'unigram floor': [...]}}
    from history records, per objective and (with several) for the mixture under its name."""
    curves = {}
    floor = [(r["step"], r[UNIGRAM_KEY]) for r in records if UNIGRAM_KEY in r][-1:]
    names = (*task_names, mixture_name(task_names)) if len(task_names) > 1 else tuple(task_names)
    for name in names:
        series = {"train": f"train/{name}/loss", "eval": f"eval/{name}/loss",
                  "eval per residue": f"eval/{name}/residue_loss"}
        curves[name] = {label: [(r["step"], r[key]) for r in records if key in r] for label, key in series.items()}
        curves[name]["unigram floor"] = floor
    return curves
