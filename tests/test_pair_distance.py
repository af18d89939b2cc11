"""The contact head's pair feature: same values and gradients as the einsum over [B, L, L, p] it replaces."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ankh3.downstream.pair_distance import weighted_l1_distance


def einsum_form(z, v):
    """The head's formula as it was; |d| as d * sign(d) so that a tie's slope is 0 (jnp.abs's is +1)."""
    d = z[:, :, None] - z[:, None]
    return jnp.einsum("bijp,p->bij", d * jnp.sign(d), v)


@pytest.mark.parametrize("pair_dim", [5, 20])  # one loop chunk of 8 (padded), and three
def test_values_and_gradients_match_the_einsum_form(pair_dim):
    z = jax.random.normal(jax.random.key(0), (2, 24, pair_dim))
    z = z.at[1, 20:].set(0.0)  # padded positions: equal features, where |d| has no slope
    v = jax.random.normal(jax.random.key(1), (pair_dim,))
    g = jax.random.normal(jax.random.key(2), (2, 24, 24))  # a cotangent that is not symmetric

    def loss(form):
        return lambda z, v: jnp.sum(form(z, v) * g)

    np.testing.assert_allclose(weighted_l1_distance(z, v), einsum_form(z, v), rtol=1e-5, atol=1e-5)
    ours = jax.grad(loss(weighted_l1_distance), argnums=(0, 1))(z, v)
    reference = jax.grad(loss(einsum_form), argnums=(0, 1))(z, v)
    for a, b in zip(ours, reference):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_bfloat16_features_with_float32_weights_add_in_float32_as_the_einsum_did():
    z = jax.random.normal(jax.random.key(3), (1, 16, 12)).astype(jnp.bfloat16)
    v = jax.random.normal(jax.random.key(4), (12,))
    out = jax.jit(weighted_l1_distance)(z, v)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, einsum_form(z, v), rtol=1e-5, atol=1e-5)
    dz, dv = jax.jit(jax.grad(lambda z, v: jnp.sum(weighted_l1_distance(z, v)), argnums=(0, 1)))(z, v)
    assert dz.dtype == jnp.bfloat16 and dv.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(dz, np.float32))) and np.all(np.isfinite(dv))
