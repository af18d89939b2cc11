"""ankh3/optimizer.py: schedules have the documented shape, accumulation updates once per k micro-batches."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ankh3.optimizer import OptimizerConfigError, OptimizerSpec, make_optimizer, make_schedule


def rates(spec, steps):
    schedule = make_schedule(spec)
    return np.array([float(schedule(s)) for s in steps])


def test_warmup_is_linear_from_zero_to_the_peak():
    spec = OptimizerSpec(learning_rate=0.01, warmup_steps=10, schedule="constant")
    np.testing.assert_allclose(rates(spec, range(10)), 0.01 * np.arange(1, 11) / 10, rtol=1e-6)
    np.testing.assert_allclose(rates(spec, [50, 500]), [0.01, 0.01], rtol=1e-6)


def test_inverse_sqrt_is_continuous_at_the_end_of_warmup_and_decays_as_t5():
    spec = OptimizerSpec(learning_rate=0.01, warmup_steps=100, schedule="inverse_sqrt")
    before, at, later = rates(spec, [99, 100, 399])
    assert before == pytest.approx(0.01) and at == pytest.approx(0.01 * np.sqrt(100 / 101), rel=1e-5)
    assert later == pytest.approx(0.01 * np.sqrt(100 / 400), rel=1e-5)


def test_cosine_ends_at_the_final_fraction():
    spec = OptimizerSpec(learning_rate=0.02, warmup_steps=10, schedule="cosine", total_steps=110, final_fraction=0.1)
    start, end = rates(spec, [10, 110])
    assert start == pytest.approx(0.02, rel=1e-5) and end == pytest.approx(0.002, rel=1e-5)


@pytest.mark.parametrize("field,value,words", [("name", "sgd", "optimizer.name 'sgd'"),
                                               ("schedule", "linear", "optimizer.schedule 'linear'"),
                                               ("learning_rate", 0.0, "learning_rate must be > 0"),
                                               ("grad_accum", 0, "grad_accum must be >= 1")])
def test_bad_settings_are_one_line_naming_the_key(field, value, words):
    with pytest.raises(OptimizerConfigError, match=words):
        make_optimizer(OptimizerSpec(**{field: value}))


def test_spec_reads_only_its_fields_from_a_section():
    spec = OptimizerSpec.from_config({"name": "adamw", "learning_rate": 3e-4, "unrelated": 1}, total_steps=77)
    assert (spec.name, spec.learning_rate, spec.total_steps) == ("adamw", 3e-4, 77)


@pytest.mark.parametrize("name", ["adafactor", "adamw"])
def test_accumulation_updates_once_every_k_micro_batches(name):
    tx, _ = make_optimizer(OptimizerSpec(name=name, learning_rate=0.1, warmup_steps=0, schedule="constant",
                                         grad_accum=3))
    params = {"w": jnp.ones((4, 4))}
    state = tx.init(params)
    grads = {"w": jnp.full((4, 4), 0.5)}
    seen = []
    for _ in range(6):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        seen.append(float(jax.device_get(params["w"][0, 0])))
    assert seen[0] == seen[1] == 1.0 and seen[2] < 1.0  # the first update lands on the 3rd micro-batch
    assert seen[3] == seen[4] == seen[2] and seen[5] < seen[4]
