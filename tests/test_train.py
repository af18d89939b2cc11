"""Training: loss and per-task metrics, schedules, accumulation, the loop's determinism and its NaN stop."""
import io
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ankh3 import train
from ankh3.checkpoint import Checkpointer
from ankh3.model import T5, get_shape
from ankh3.optimizer import OptimizerConfigError, OptimizerSpec, make_optimizer, make_schedule
from ankh3.tokenizer import Tokenizer

CFG = get_shape("tiny", d_model=32, d_ff=64, num_heads=2, d_kv=16, num_encoder_layers=1, num_decoder_layers=1)
TASKS = ("nlu", "s2s")


def synthetic_batches(seed, batch=4, le=24, ld=16):
    """Pipeline-shaped batches: random residues, some padding, a task per row."""
    rng = np.random.default_rng(seed)
    while True:
        enc = rng.integers(3, 28, (batch, le)).astype(np.int32)
        enc[:, -3:] = 0
        tgt = rng.integers(3, 28, (batch, ld)).astype(np.int32)
        tgt[:, -2:] = 0
        dec = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1)
        yield {"encoder_tokens": enc, "decoder_inputs": dec, "decoder_targets": tgt,
               "decoder_weights": (tgt != 0).astype(np.float32),
               "task": (np.arange(batch) % 2).astype(np.int32)}


def run_loop(steps, *, seed=0, accum=1, lr=1e-2, checkpointer=None, start=None, batches=None):
    model = T5(CFG, rngs=nnx.Rngs(seed))
    tx, schedule = make_optimizer(OptimizerSpec(learning_rate=lr, warmup_steps=2, total_steps=steps, grad_accum=accum))
    graphdef, state = train.init_state(model, tx)
    if start is not None:
        state = start(state)
    settings = train.LoopSettings(steps=steps, grad_accum=accum, log_every=1, eval_every=steps,
                                  checkpoint_every=2, progress_every_s=0.0, tokens_per_step=4 * 40)
    out = io.StringIO()
    result = train.train_loop(
        state=state, train_step=train.make_train_step(graphdef, tx, 2, False),
        eval_step=train.make_eval_step(graphdef, 2), batches=batches or synthetic_batches(seed),
        eval_batches=[train.device_batch(next(synthetic_batches(99)), None)], task_names=TASKS,
        settings=settings, checkpointer=checkpointer, schedule=schedule, out=out)
    return result, out.getvalue()


def test_token_metrics_weighted_per_task():
    logits = jnp.log(jnp.array([[[0.5, 0.5, 1e-9], [1e-9, 1.0, 1e-9]],
                                [[1e-9, 1e-9, 1.0], [1.0, 1e-9, 1e-9]]]))
    batch = {"decoder_targets": jnp.array([[0, 1], [2, 2]]), "decoder_weights": jnp.array([[1.0, 1.0], [1.0, 0.0]]),
             "task": jnp.array([1, 0])}
    loss, sums = train.token_metrics(logits, batch, 2, residues=(0, 1, 2))
    # row 0 (task 1): -log 0.5 and 0; row 1 (task 0): 0, padding ignored
    assert float(loss) == pytest.approx(math.log(2) / 3, rel=1e-5)
    np.testing.assert_allclose(sums["tokens"], [1.0, 2.0])
    np.testing.assert_allclose(sums["nll"], [0.0, math.log(2)], atol=1e-5)
    metrics = train.summarize(jax.device_get(sums), TASKS, "train")
    assert metrics["train/nlu/accuracy"] == 1.0 and metrics["train/s2s/loss"] == pytest.approx(math.log(2) / 2, rel=1e-5)


def test_accuracy_counts_only_residue_targets():
    tok = Tokenizer.default()
    sentinel, a, c = int(tok.sentinel_ids[0]), *tok.encode("AC")
    # One denoising row: <extra_id_0> A </s> pad; the model gets the sentinel and EOS right, the residue wrong.
    targets = np.array([[sentinel, a, tok.eos_id, tok.pad_id]], np.int32)
    predicted = np.array([sentinel, c, tok.eos_id, tok.pad_id])
    logits = jnp.asarray(np.log(np.where(np.eye(tok.vocab_size)[predicted] > 0, 0.9, 0.1 / 255))[None])
    batch = {"decoder_targets": targets, "decoder_weights": jnp.array([[1.0, 1.0, 1.0, 0.0]]), "task": jnp.array([0])}
    loss, sums = train.token_metrics(logits, batch, 2)
    metrics = train.summarize(jax.device_get(sums), TASKS, "eval")
    assert metrics["eval/mix_nlu_s2s/accuracy"] == 0.0 and metrics["eval/nlu/accuracy"] == 0.0  # 1 residue, missed
    assert float(sums["tokens"][0]) == 3.0  # the loss still covers the sentinel and EOS
    assert float(loss) == pytest.approx((2 * -math.log(0.9) - math.log(0.1 / 255)) / 3, rel=1e-4)
    assert "eval/s2s/accuracy" not in metrics  # no targets for that task
    _, sums = train.token_metrics(logits, batch, 2, residues=train.residue_ids(tok).tolist() + [sentinel])
    assert train.summarize(jax.device_get(sums), TASKS, "eval")["eval/mix_nlu_s2s/accuracy"] == 0.5


def test_metrics_carry_their_objective_and_residue_losses_sit_beside_the_unigram_floor():
    # task 0: two residue targets (nll 1 and 3) and an EOS (nll 0.5); task 1: one residue target (nll 2)
    sums = {"nll": np.array([4.5, 2.0]), "tokens": np.array([3.0, 1.0]), "correct": np.array([1.0, 0.0]),
            "residues": np.array([2.0, 1.0]), "residue_nll": np.array([4.0, 2.0])}
    metrics = train.summarize(sums, TASKS, "eval", unigram_floor=2.5)
    assert not {"eval/loss", "eval/accuracy"} & set(metrics)  # never a bare pooled name
    assert metrics["eval/nlu/loss"] == 1.5 and metrics["eval/nlu/residue_loss"] == 2.0
    assert metrics["eval/nlu/loss_minus_unigram"] == -0.5 and metrics["eval/s2s/loss_minus_unigram"] == -0.5
    assert metrics["eval/mix_nlu_s2s/loss"] == 6.5 / 4 and metrics["eval/mix_nlu_s2s/residue_loss"] == 2.0
    alone = train.summarize({k: v[:1] for k, v in sums.items()}, ("s2s",), "eval")
    assert set(alone) == {"eval/s2s/loss", "eval/s2s/accuracy", "eval/s2s/residue_loss"}  # no unigram: not shown
    records = [{"step": 1, train.UNIGRAM_KEY: 2.5, "train/nlu/loss": 3.0}, {"step": 2, **metrics}]
    curves = train.loss_curves(records, TASKS)
    assert set(curves) == {"nlu", "s2s", "mix_nlu_s2s"} and curves["nlu"]["unigram floor"] == [(1, 2.5)]
    assert curves["nlu"]["eval per residue"] == [(2, 2.0)] and curves["nlu"]["train"] == [(1, 3.0)]


@pytest.mark.parametrize("schedule", ["inverse_sqrt", "cosine", "constant"])
def test_schedules_warm_up_then_follow_their_shape(schedule):
    lr = make_schedule(OptimizerSpec(learning_rate=1.0, warmup_steps=10, total_steps=100, schedule=schedule))
    assert float(lr(0)) == pytest.approx(0.1) and float(lr(9)) == pytest.approx(1.0)
    late = float(lr(99))
    expected = {"inverse_sqrt": math.sqrt(10 / 100), "cosine": 0.1, "constant": 1.0}[schedule]
    assert late == pytest.approx(expected, rel=0.05)


def test_bad_optimizer_settings_are_one_clear_error():
    with pytest.raises(OptimizerConfigError, match="optimizer.name 'sgd'"):
        make_optimizer(OptimizerSpec(name="sgd"))


def test_gradient_accumulation_averages_micro_batches():
    params = {"w": jnp.array([1.0])}
    tx, _ = make_optimizer(OptimizerSpec(name="adamw", schedule="constant", warmup_steps=0, learning_rate=0.1,
                                         clip_norm=0, grad_accum=2))
    state = tx.init(params)
    updates, state = tx.update({"w": jnp.array([1.0])}, state, params)
    assert float(updates["w"][0]) == 0.0  # first micro-batch: nothing applied yet
    updates, state = tx.update({"w": jnp.array([3.0])}, state, params)
    assert float(updates["w"][0]) < 0.0  # second: one update from the mean gradient


def test_loop_learns_logs_per_task_and_is_deterministic():
    first, text = run_loop(12)
    second, _ = run_loop(12)
    assert first.final_step == 12 and not first.stopped_by
    assert first.metrics["train/mix_nlu_s2s/loss"] == second.metrics["train/mix_nlu_s2s/loss"]  # same seed, same losses
    assert {"train/nlu/loss", "train/s2s/accuracy", "eval/nlu/loss", "perf/tokens_per_s"} <= set(first.metrics)
    losses = [float(line.split("train nlu ")[1].split(",")[0]) for line in text.splitlines()]
    assert losses[-1] < losses[0]
    assert "steps/s" in text and "ETA" in text


def test_non_finite_loss_stops_before_a_bad_checkpoint(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "ckpt"), async_save=False)

    def poisoned():
        for i, batch in enumerate(synthetic_batches(0)):
            if i >= 3:  # from the 4th update on, the loss is NaN
                batch["decoder_weights"] = batch["decoder_weights"] * np.nan
            yield batch

    with pytest.raises(train.NonFiniteLossError, match="non-finite loss .* at step 4"):
        run_loop(8, checkpointer=ckpt, batches=poisoned())
    assert ckpt.all_steps() == [2]  # the last good checkpoint is left in place


def test_restored_state_trains_on_a_mesh(tmp_path):
    """A checkpoint restored onto a (data, model) mesh feeds the jitted step without device errors."""
    from ankh3.sharding import make_mesh, shard_model

    mesh = make_mesh(data=2, model=2)
    tx, _ = make_optimizer(OptimizerSpec(warmup_steps=1, total_steps=4))

    def fresh():
        return train.init_state(shard_model(T5(CFG, rngs=nnx.Rngs(0)), mesh), tx, mesh)

    graphdef, state = fresh()
    step = train.make_train_step(graphdef, tx, 2, False)
    batch = train.device_batch(next(synthetic_batches(0)), mesh)
    with jax.set_mesh(mesh):
        state, _ = step(state, batch)
    ckpt = Checkpointer(str(tmp_path / "ckpt"), async_save=False)
    ckpt.save(1, state, {})
    restored, _ = ckpt.restore(None, fresh()[1])  # as in a new process: outside the mesh context
    with jax.set_mesh(mesh):
        _, sums = step(restored, batch)
        _, expected = step(state, batch)
    assert float(sums["loss"]) == float(expected["loss"])
