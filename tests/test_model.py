"""Tests of the T5 model: shapes, parameter counts, masking, causality, parameter I/O, training."""
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ankh3.config import model_config, model_section
from ankh3.model import (T5, ModelConfig, ModelConfigError, attention_for_backend, attention_impl, count_params,
                         flat_params, get_shape, load_flat_params, relative_position_bucket,
                         relative_position_buckets)

CFG = get_shape("tiny", vocab_size=64, d_model=32, d_ff=64, num_heads=2, d_kv=16, relative_buckets=16,
                relative_max_distance=32)


@pytest.fixture(scope="module")
def model():
    return T5(CFG, rngs=nnx.Rngs(0))


def tokens(batch=2, length=12, seed=0, low=2):
    rng = np.random.default_rng(seed)
    return rng.integers(low, CFG.vocab_size, (batch, length)).astype(np.int32)


def test_published_parameter_counts_without_allocating():
    # Ankh3 Large 1.88B and XL 5.73B (the paper's figures); eval_shape allocates nothing.
    assert abs(count_params(get_shape("ankh3_large")) / 1.88e9 - 1) < 0.005
    assert abs(count_params(get_shape("ankh3_xl")) / 5.73e9 - 1) < 0.005


def test_forward_shapes_dtype_and_finiteness(model):
    enc, dec = tokens(), tokens(length=5, seed=1)
    logits = model(enc, dec)
    assert logits.shape == (2, 5, CFG.vocab_size) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()
    assert model.encode(enc).shape == (2, 12, CFG.d_model)


def test_encode_is_the_encoder_half_and_does_no_decoder_work(model):
    enc, dec = tokens(), tokens(length=5, seed=1)
    mask = enc != 0
    full = model(enc, dec, mask)
    encoded = model.encode(enc, mask)
    np.testing.assert_allclose(model.decode(encoded, mask, dec), full, rtol=1e-5, atol=1e-5)
    # Poison every decoder parameter: encode must not touch them.
    poisoned = T5(CFG, rngs=nnx.Rngs(0))
    flat = flat_params(poisoned)
    flat = {k: np.full_like(v, np.nan) if k.startswith(("decoder.", "lm_head")) else v for k, v in flat.items()}
    load_flat_params(poisoned, flat)
    np.testing.assert_array_equal(poisoned.encode(enc, mask), encoded)


def test_extra_padding_does_not_change_real_positions(model):
    enc, dec = tokens(length=10), tokens(length=6, seed=1)
    enc[1, 7:] = 0  # row 1 already has padding
    padded = np.concatenate([enc, np.zeros((2, 6), np.int32)], axis=1)
    np.testing.assert_allclose(model(padded, dec), model(enc, dec), rtol=1e-5, atol=1e-5)
    real = enc != 0
    np.testing.assert_allclose(np.asarray(model.encode(padded))[:, :10][real], np.asarray(model.encode(enc))[real],
                               rtol=1e-5, atol=1e-5)


def test_decoder_is_causal(model):
    enc, dec = tokens(), tokens(length=8, seed=1)
    changed = dec.copy()
    changed[:, 5] = (changed[:, 5] + 1) % CFG.vocab_size
    a, b = np.asarray(model(enc, dec)), np.asarray(model(enc, changed))
    np.testing.assert_allclose(a[:, :5], b[:, :5], rtol=1e-6, atol=1e-6)
    assert np.abs(a[:, 5:] - b[:, 5:]).max() > 1e-3


def test_relative_buckets_hand_checked():
    # Bidirectional, 32 buckets (16 per direction, 8 exact), max distance 128.
    rel = {0: 0, -1: 1, -7: 7, -8: 8, -12: 9, -127: 15, -1000: 15, 1: 17, 7: 23, 12: 25, 1000: 31}
    got = relative_position_bucket(np.array(list(rel)), True, 32, 128)
    assert got.tolist() == list(rel.values())
    # Causal, 32 buckets (16 exact), max distance 128: the future maps to bucket 0.
    rel = {5: 0, 0: 0, -5: 5, -15: 15, -16: 16, -32: 21, -127: 31, -500: 31}
    got = relative_position_bucket(np.array(list(rel)), False, 32, 128)
    assert got.tolist() == list(rel.values())


def test_relative_buckets_match_hf():
    torch = pytest.importorskip("torch")
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    relative = np.arange(600)[None, :] - np.arange(600)[:, None]
    for bidirectional, buckets, distance in ((True, 32, 128), (False, 32, 128), (True, 64, 128), (False, 64, 256)):
        ours = relative_position_buckets(600, 600, bidirectional, buckets, distance)
        ref = t5.T5Attention._relative_position_bucket(torch.tensor(relative), bidirectional, buckets, distance)
        np.testing.assert_array_equal(ours, ref.numpy())


def test_flat_params_round_trip_and_canonical_names(model):
    flat = flat_params(model)
    assert flat["encoder.attn.q"].shape == (CFG.num_encoder_layers, CFG.d_model, CFG.inner_dim)
    assert flat["decoder.cross_attn.o"].shape == (CFG.num_decoder_layers, CFG.inner_dim, CFG.d_model)
    assert flat["lm_head"].shape == (CFG.d_model, CFG.vocab_size) and flat["shared"].shape == (CFG.vocab_size, CFG.d_model)
    assert all(isinstance(v, np.ndarray) for v in flat.values())
    other = T5(CFG, rngs=nnx.Rngs(7))
    load_flat_params(other, flat)
    enc, dec = tokens(), tokens(length=5, seed=1)
    np.testing.assert_array_equal(other(enc, dec), model(enc, dec))
    assert all(np.array_equal(flat_params(other)[k], v) for k, v in flat.items())


def test_load_flat_params_names_the_bad_tensor(model):
    flat = flat_params(model)
    bad = dict(flat, **{"encoder.mlp.wo": np.zeros((2, 3, 4), np.float32)})
    with pytest.raises(ModelConfigError, match=r"encoder\.mlp\.wo.*\(2, 3, 4\).*\(2, 64, 32\)"):
        load_flat_params(T5(CFG, rngs=nnx.Rngs(1)), bad)
    missing = {k: v for k, v in flat.items() if k != "decoder.relative_bias"}
    with pytest.raises(ModelConfigError, match="decoder.relative_bias"):
        load_flat_params(T5(CFG, rngs=nnx.Rngs(1)), missing)


def test_tied_embeddings_have_no_head_and_scale_the_output():
    tied = T5(dataclasses.replace(CFG, tie_embeddings=True), rngs=nnx.Rngs(0))
    flat = flat_params(tied)
    assert "lm_head" not in flat
    # Tying = an untied head equal to shared^T, with the output scaled by d_model**-0.5.
    untied = load_flat_params(T5(CFG, rngs=nnx.Rngs(1)), dict(flat, lm_head=flat["shared"].T * CFG.d_model ** -0.5))
    enc, dec = tokens(), tokens(length=5, seed=1)
    np.testing.assert_allclose(tied(enc, dec), untied(enc, dec), rtol=1e-5, atol=1e-5)


def test_hf_config_round_trip():
    cfg = get_shape("ankh3_large")
    hf = cfg.to_hf_config()
    assert hf["feed_forward_proj"] == "gated-silu" and hf["num_decoder_layers"] == 24
    assert ModelConfig.from_hf_config(hf) == cfg
    ankh = get_shape("ankh_base")
    assert ModelConfig.from_hf_config(ankh.to_hf_config()).activation == "gelu_new"
    with pytest.raises(ModelConfigError, match="gated"):
        ModelConfig.from_hf_config(dict(hf, feed_forward_proj="relu"))


def test_bad_config_and_shape_names_raise_clear_errors():
    with pytest.raises(ModelConfigError, match="unknown model shape 'huge'"):
        get_shape("huge")
    with pytest.raises(ModelConfigError, match="d_modl"):
        get_shape("tiny", d_modl=3)
    with pytest.raises(ModelConfigError, match="activation 'swish'"):
        get_shape("tiny", activation="swish")
    with pytest.raises(ModelConfigError, match="cudnn.*bfloat16"):
        get_shape("tiny", attention="cudnn")
    with pytest.raises(ModelConfigError, match=r"decoder_inputs have batch 3 but the encoder input has 2"):
        T5(CFG, rngs=nnx.Rngs(0))(tokens(), tokens(batch=3))


def _loss(model, batch, deterministic=True):
    logits = model(batch["enc"], batch["dec_in"], deterministic=deterministic)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()


def _batch():
    targets = tokens(batch=4, length=6, seed=3)
    dec_in = np.concatenate([np.zeros((4, 1), np.int32), targets[:, :-1]], axis=1)
    enc = tokens(batch=4, length=10, seed=2)
    enc[0, 7:] = 0  # padding, so masked attention is in every gradient test
    return dict(enc=enc, dec_in=dec_in, targets=targets)


def test_training_steps_lower_the_loss():
    m = T5(CFG, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(m, optax.adamw(3e-3), wrt=nnx.Param)
    batch = _batch()

    @nnx.jit
    def step(m, optimizer, batch):
        loss, grads = nnx.value_and_grad(_loss)(m, batch)
        optimizer.update(m, grads)
        return loss

    losses = [float(step(m, optimizer, batch)) for _ in range(25)]
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("tie", [False, True])
def test_fresh_model_starts_near_uniform_loss(tie):
    # T5X's fan_in head init: a fresh model's loss is about ln(vocab), not the ~30 of a std-1 head.
    cfg = get_shape("tiny", tie_embeddings=tie)
    m = T5(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    enc, targets = (rng.integers(3, cfg.vocab_size, (4, n)).astype(np.int32) for n in (64, 48))
    dec_in = np.concatenate([np.zeros((4, 1), np.int32), targets[:, :-1]], axis=1)
    log_probs = jax.nn.log_softmax(m(enc, dec_in, encoder_mask=enc != 0, deterministic=True))
    loss = -float(jnp.mean(jnp.take_along_axis(log_probs, targets[..., None], axis=-1)))
    assert 0.8 * np.log(cfg.vocab_size) < loss < 2 * np.log(cfg.vocab_size)


def test_dropout_draws_fresh_masks_only_when_not_deterministic():
    m = T5(dataclasses.replace(CFG, dropout_rate=0.2), rngs=nnx.Rngs(0))
    enc, dec = tokens(), tokens(length=5, seed=1)
    a, b = m(enc, dec, deterministic=False), m(enc, dec, deterministic=False)
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3
    np.testing.assert_array_equal(m(enc, dec), m(enc, dec))


def _grads(model, batch, deterministic=True):
    grad_fn = nnx.jit(nnx.value_and_grad(_loss), static_argnums=2)
    loss, grads = grad_fn(model, batch, deterministic)
    return loss, jax.tree.leaves(nnx.state(grads, nnx.Param))


@pytest.fixture(scope="module")
def reference_grads():
    """Loss and gradients of the CPU default (hand-written backward passes, no remat), float32."""
    return _grads(T5(dataclasses.replace(CFG, attention="cpu_kernels"), rngs=nnx.Rngs(0)), _batch())


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_policies_give_the_same_gradients(remat, reference_grads):
    loss, grads = _grads(T5(dataclasses.replace(CFG, attention="cpu_kernels", remat=remat), rngs=nnx.Rngs(0)),
                         _batch())
    np.testing.assert_allclose(loss, reference_grads[0], rtol=1e-6)
    for a, b in zip(grads, reference_grads[1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# xla: autodiff of jax.nn.dot_product_attention (the accelerators' path). Dropout: with dropout
# active the model uses autodiff of its own attention maths; a vanishing rate leaves the values unchanged.
@pytest.mark.parametrize("autodiff", [dict(attention="xla"), dict(attention="cpu_kernels", dropout_rate=1e-9)])
def test_hand_written_backward_passes_match_autodiff(autodiff, reference_grads):
    loss, grads = _grads(T5(dataclasses.replace(CFG, **autodiff), rngs=nnx.Rngs(0)), _batch(), False)
    np.testing.assert_allclose(loss, reference_grads[0], rtol=1e-5)
    for a, b in zip(grads, reference_grads[1]):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)


# bfloat16 keeps 8 significant bits (rounding error 2**-9 = 0.2% per operation); measured through
# this 2+2-layer model every parameter gradient is within 3.3% (relative L2 norm) of float32's.
BF16_GRAD_TOLERANCE = 0.05


@pytest.mark.parametrize("attention", ["cpu_kernels", "xla"])
def test_bfloat16_gradients_are_float32_and_close_to_float32_compute(attention, reference_grads):
    m = T5(dataclasses.replace(CFG, dtype="bfloat16", attention=attention), rngs=nnx.Rngs(0))
    enc = _batch()["enc"]
    assert jax.eval_shape(lambda: m(enc, tokens(batch=4, length=5, seed=1))).dtype == jnp.float32
    assert m.encode(enc).dtype == jnp.bfloat16
    loss, grads = _grads(m, _batch())
    np.testing.assert_allclose(loss, reference_grads[0], rtol=0.01)
    for got, want in zip(grads, reference_grads[1]):
        assert got.dtype == jnp.float32
        error = np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want)
        assert error < BF16_GRAD_TOLERANCE, (got.shape, error)


def test_attention_auto_picks_the_kernels_on_cpu_only():
    assert get_shape("tiny").attention == "auto" and attention_impl(CFG) == "cpu_kernels"  # tests run on CPU
    assert attention_for_backend("cpu", "bfloat16") == "cpu_kernels"
    assert attention_for_backend("gpu", "bfloat16") == "cudnn"
    assert attention_for_backend("gpu", "float32") == "xla"  # cuDNN's fused attention needs 16-bit inputs
    assert attention_for_backend("tpu", "bfloat16") == "xla"
    assert model_config(dict(model_section("tiny"), dtype="auto"), backend="gpu").attention == "cudnn"
    assert model_config(model_section("tiny"), backend="cpu").attention == "cpu_kernels"
    # model_config.json files written before 'auto' existed name the kernels 'einsum'.
    assert ModelConfig(attention="einsum").attention == "cpu_kernels"


def test_xla_attention_matches_the_cpu_kernels(model):
    xla = T5(dataclasses.replace(CFG, attention="xla"), rngs=nnx.Rngs(0))
    enc, dec = tokens(), tokens(length=5, seed=1)
    enc[0, 8:] = 0
    np.testing.assert_allclose(xla(enc, dec), model(enc, dec), rtol=1e-5, atol=1e-5)


def _compile_seconds(layers: int) -> float:
    """Compile time of the jitted forward pass (from abstract parameters) at a given depth."""
    cfg = dataclasses.replace(CFG, num_encoder_layers=layers, num_decoder_layers=layers)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: T5(cfg, rngs=nnx.Rngs(0))))
    batch = _batch()
    forward = jax.jit(lambda s: _loss(nnx.merge(graphdef, s), batch))
    start = time.perf_counter()
    forward.lower(state).compile()
    return time.perf_counter() - start


def test_compile_time_does_not_grow_with_depth():
    shallow = min(_compile_seconds(2) for _ in range(2))  # the first also warms tracing caches
    deep = _compile_seconds(12)
    assert deep < 3 * shallow, (shallow, deep)
