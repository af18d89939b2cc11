"""ConvBERT probe heads: HF parity, shapes, padding invariance, symmetry, bias init."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ankh3.downstream.heads import (ContactPredictor, ConvBertLayer, HeadConfig, HeadError, ResidueClassifier,
                                    SequenceRegressor, dropout)

DIM = 16


def _inputs(batch=2, length=10, seed=0):
    x = jax.random.normal(jax.random.key(seed), (batch, length, DIM))
    mask = jnp.arange(length)[None, :] < jnp.array([length, length - 3])[:, None]
    return x, mask


def _copy_to_hf(ours: ConvBertLayer, hf_layer):
    import torch

    def put(param, value):
        param.data = torch.tensor(np.asarray(value), dtype=torch.float32)

    att = hf_layer.attention.self
    for name, lin in (("query", ours.query), ("key", ours.key), ("value", ours.value),
                      ("conv_kernel_layer", ours.span_kernel), ("conv_out_layer", ours.conv_value)):
        put(getattr(att, name).weight, lin.kernel[...].T)
        put(getattr(att, name).bias, lin.bias[...])
    put(att.key_conv_attn_layer.depthwise.weight, ours.key_depthwise[...].T[:, None, :])
    put(att.key_conv_attn_layer.pointwise.weight, ours.key_pointwise[...].T[:, :, None])
    put(att.key_conv_attn_layer.bias, ours.key_bias[...][:, None])
    for hf_dense, lin in ((hf_layer.attention.output.dense, ours.attn_out), (hf_layer.intermediate.dense, ours.mlp_in),
                          (hf_layer.output.dense, ours.mlp_out)):
        put(hf_dense.weight, lin.kernel[...].T)
        put(hf_dense.bias, lin.bias[...])
    for hf_norm, norm in ((hf_layer.attention.output.LayerNorm, ours.attn_norm),
                          (hf_layer.output.LayerNorm, ours.mlp_norm)):
        put(hf_norm.weight, norm.scale[...])
        put(hf_norm.bias, norm.bias[...])


def test_convbert_layer_matches_hf_convbert_layer():
    torch = pytest.importorskip("torch")
    from transformers import ConvBertConfig
    from transformers.models.convbert.modeling_convbert import ConvBertLayer as HFLayer

    cfg = HeadConfig()
    ours = ConvBertLayer(DIM, cfg, rngs=nnx.Rngs(0))
    hf_cfg = ConvBertConfig(hidden_size=DIM, num_attention_heads=cfg.num_heads, head_ratio=cfg.head_ratio,
                            conv_kernel_size=cfg.kernel_size, intermediate_size=DIM // 2, hidden_act="gelu",
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12)
    hf_layer = HFLayer(hf_cfg).eval()
    _copy_to_hf(ours, hf_layer)
    x, _ = _inputs()
    full = jnp.ones(x.shape[:2], bool)
    with torch.no_grad():
        expected = hf_layer(torch.tensor(np.asarray(x)))
    expected = expected[0] if isinstance(expected, tuple) else expected
    np.testing.assert_allclose(np.asarray(ours(x, full)), expected.numpy(), atol=2e-5)


@pytest.mark.parametrize("make, shape", [
    (lambda r: ResidueClassifier(DIM, 3, rngs=r), (2, 10, 3)),
    (lambda r: SequenceRegressor(DIM, rngs=r), (2,)),
    (lambda r: ContactPredictor(DIM, HeadConfig(pair_dim=8), rngs=r), (2, 10, 10)),
])
def test_head_output_shapes_and_padding_invariance(make, shape):
    head = make(nnx.Rngs(0))
    x, mask = _inputs()
    out = head(x, mask)
    assert out.shape == shape
    # More padding, filled with garbage, must not move the outputs at real positions.
    x_long = jnp.concatenate([x, 100.0 * jnp.ones((2, 6, DIM))], axis=1)
    x_long = x_long.at[1, 7:].set(-50.0)
    mask_long = jnp.concatenate([mask, jnp.zeros((2, 6), bool)], axis=1)
    out_long = head(x_long, mask_long)
    if out.ndim == 1:
        np.testing.assert_allclose(out, out_long, atol=1e-5)
    else:
        for b, n in enumerate((10, 7)):
            real = out[b, :n, :n] if out.ndim == 3 and out.shape[-1] == out.shape[1] else out[b, :n]
            real_long = out_long[b, :n, :n] if real.ndim == 2 and real.shape == (n, n) else out_long[b, :n]
            np.testing.assert_allclose(real, real_long, atol=1e-5)


def test_dropout_is_active_only_with_a_key():
    head = ResidueClassifier(DIM, 3, rngs=nnx.Rngs(0))
    x, mask = _inputs()
    np.testing.assert_array_equal(head(x, mask), head(x, mask))
    assert not np.allclose(head(x, mask, jax.random.key(1)), head(x, mask))


@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_hashed_dropout_drops_the_rate_keeps_the_mean_and_differs_between_keys(rate):
    x = jnp.ones((8, 2, 64, 64))
    a = np.asarray(dropout(x, rate, jax.random.key(0)))
    b = np.asarray(dropout(x, rate, jax.random.key(1)))
    n = a.size
    for out in (a, b):
        assert abs((out == 0).mean() - rate) < 4 * np.sqrt(rate * (1 - rate) / n)  # binomial, 4 sd
        np.testing.assert_allclose(out[out != 0], 1 / (1 - rate), rtol=1e-6)
        assert abs(out.mean() - 1) < 0.02
    np.testing.assert_array_equal(a, np.asarray(dropout(x, rate, jax.random.key(0))))  # same key, same mask
    # Two keys' masks agree only by chance (P(agree) = r^2 + (1-r)^2), also under any small shift of the index.
    agree = rate ** 2 + (1 - rate) ** 2
    flat_a, flat_b = (a == 0).ravel(), (b == 0).ravel()
    for shift in range(-3, 4):
        assert abs((np.roll(flat_a, shift) == flat_b).mean() - agree) < 0.01
    # Neighbouring elements of one mask are independent too.
    assert abs((flat_a[1:] == flat_a[:-1]).mean() - agree) < 0.01


@pytest.mark.parametrize("pair_dim", [8, 0])
def test_contact_logits_are_symmetric(pair_dim):
    head = ContactPredictor(DIM, HeadConfig(pair_dim=pair_dim), rngs=nnx.Rngs(1))
    x, mask = _inputs()
    logits = np.asarray(head(x, mask))
    assert logits.shape == (2, 10, 10)
    np.testing.assert_allclose(logits, np.swapaxes(logits, 1, 2), atol=1e-6)


def test_regression_bias_starts_at_label_mean_and_max_pooling_is_finite_on_empty_rows():
    head = SequenceRegressor(DIM, HeadConfig(pooling="max"), label_mean=3.25, rngs=nnx.Rngs(0))
    assert float(head.out.bias[...][0]) == 3.25
    x, _ = _inputs()
    out = head(x, jnp.zeros(x.shape[:2], bool))  # a padded dummy row of a probe batch
    assert np.isfinite(np.asarray(out)).all()


def test_embedding_size_the_head_cannot_split_is_refused():
    with pytest.raises(HeadError, match="divisible by 4"):
        ConvBertLayer(18, HeadConfig(), rngs=nnx.Rngs(0))
