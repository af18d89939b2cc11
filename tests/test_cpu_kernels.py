"""Tests of the hand-written CPU backward passes against JAX's autodiff of the same maths."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ankh3 import cpu_kernels
from ankh3.model import ACTIVATIONS

B, T, S, N, K = 3, 5, 7, 2, 4


def _inputs(t, seed=0):
    """q, k, v, bias, key mask and output cotangent for t queries over S keys."""
    rng = np.random.default_rng(seed)
    q, k, v, d_out = (jnp.asarray(rng.normal(size=shape), jnp.float32)
                      for shape in ((B, t, N, K), (B, S, N, K), (B, S, N, K), (B, t, N, K)))
    bias = jnp.asarray(rng.normal(size=(1, N, t, S)), jnp.float32)
    lengths = np.array([S, 4, 0])  # row 2 is all padding: every one of its keys is masked
    mask = jnp.asarray(np.arange(S)[None, :] < lengths[:, None])[:, None, None, :]
    return q, k, v, bias, mask, d_out


def _autodiff_attention(causal, q, k, v, bias, mask):
    probs = jax.nn.softmax(cpu_kernels.masked_logits(q, k, bias, mask, causal), axis=-1)
    return jnp.einsum("bnts,bsnk->btnk", probs, v)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_gradients_match_autodiff_with_an_all_masked_row(causal):
    # Causal attention is self-attention (as many queries as keys); cross-attention has fewer queries.
    q, k, v, bias, mask, d_out = _inputs(S if causal else T)

    def vjp(fn):
        out, pullback = jax.vjp(lambda q, k, v, bias: fn(causal, q, k, v, bias, mask), q, k, v, bias)
        return out, pullback(d_out)

    out, grads = vjp(cpu_kernels.attention)
    ref_out, ref_grads = vjp(_autodiff_attention)
    np.testing.assert_allclose(out, ref_out, rtol=1e-6, atol=1e-6)
    for name, got, want in zip(("q", "k", "v", "bias"), grads, ref_grads):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)
    # The all-padding row's queries see only masked keys: no gradient reaches them.
    assert float(jnp.abs(grads[0][2]).max()) == 0.0


@pytest.mark.parametrize("activation", ["gelu_new", "silu"])
def test_gated_mlp_gradients_match_autodiff(activation):
    rng = np.random.default_rng(1)
    x, wi_0, wi_1, wo, dy = (jnp.asarray(rng.normal(size=shape), jnp.float32)
                             for shape in ((2, 5, 6), (6, 8), (6, 8), (8, 6), (2, 5, 6)))
    act = ACTIVATIONS[activation]

    def vjp(fn):
        out, pullback = jax.vjp(fn, x, wi_0, wi_1, wo)
        return out, pullback(dy)

    out, grads = vjp(lambda *a: cpu_kernels.gated_mlp(act, *a))
    ref_out, ref_grads = vjp(lambda x, wi_0, wi_1, wo: (act(x @ wi_0) * (x @ wi_1)) @ wo)
    np.testing.assert_allclose(out, ref_out, rtol=1e-6, atol=1e-6)
    for name, got, want in zip(("x", "wi_0", "wi_1", "wo"), grads, ref_grads):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)
