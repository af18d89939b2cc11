"""bfloat16 products: float32 weight gradients close to float32 maths, and dots XLA:CPU keeps in bfloat16."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ankh3 import mixed_matmul


def _operands(seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(2, 24, 16)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(16, 40)) / 4, jnp.float32)
    dy = jnp.asarray(rng.normal(size=(2, 24, 40)), jnp.float32)
    return x, w, dy


def _vjp(x, w, dy):
    y, pullback = jax.vjp(mixed_matmul.dense, x, w)
    return (y, *pullback(dy.astype(y.dtype)))


def test_bfloat16_dense_matches_float32_with_float32_weight_gradients():
    x, w, dy = _operands()
    want = _vjp(x, w, dy)
    got = _vjp(x.astype(jnp.bfloat16), w, dy)
    assert got[0].dtype == jnp.bfloat16 and got[1].dtype == jnp.bfloat16
    assert got[2].dtype == jnp.float32  # the parameters' gradient stays float32
    for g, r in zip(got, want):
        error = np.linalg.norm(np.asarray(g, np.float64) - r) / np.linalg.norm(r)
        assert error < 0.01, error  # bf16 operands, float32 accumulation: about 2**-9 per operand


def test_float32_dense_is_the_plain_product():
    x, w, dy = _operands()
    y, dx, dw = _vjp(x, w, dy)
    ref_y, ref_pullback = jax.vjp(lambda x, w: x @ w, x, w)
    np.testing.assert_array_equal(y, ref_y)
    for got, want in zip((dx, dw), ref_pullback(dy)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_stash_round_trips_bfloat16_bits_and_leaves_other_dtypes():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 5)), jnp.bfloat16)
    assert mixed_matmul.stash(x).dtype == jnp.uint16
    np.testing.assert_array_equal(mixed_matmul.unstash(mixed_matmul.stash(x)), x)
    f = jnp.ones(3, jnp.float32)
    assert mixed_matmul.stash(f) is f and mixed_matmul.unstash(f) is f


def _bf16_dots(fn, *args):
    """The compiled program's dots as (lhs, rhs) operand types; the program must also run."""
    jax.block_until_ready(jax.jit(fn)(*args))  # XLA:CPU fails at run time on a bf16 dot it mis-assigned
    compiled = jax.jit(fn).lower(*args).compile().as_text()
    operand_types = dict(re.findall(r"%(\S+) = (\w+)\[", compiled))
    dots = re.findall(r"= \w+\[[^\]]*\]\{[^}]*\} dot\(%([^,]+), %([^)]+)\)", compiled)
    return [(operand_types[a], operand_types[b]) for a, b in dots]


@pytest.mark.parametrize("width", [16, 512])  # a narrow and a wide x: dW copies x, or dY and the result
def test_cpu_compiles_every_bfloat16_product_of_dense_with_bfloat16_operands(width):
    # The point of the module: no dot of the forward or backward is upcast to float32 by XLA:CPU.
    x, _, dy = _operands()
    x = jnp.tile(x, (1, 1, width // 16)).astype(jnp.bfloat16)
    w = jnp.ones((width, dy.shape[-1]), jnp.float32) / width
    assert _bf16_dots(_vjp, x, w, dy) == [("bf16", "bf16")] * 3


# Attention's products: logits, probs.v, and the backward's d_v, d_probs, d_q, d_k.
SPECS = ["btnk,bsnk->bnts", "bnts,bsnk->btnk", "bnts,btnk->bsnk", "btnk,bsnk->bnts", "bnts,bsnk->btnk",
         "bnts,btnk->bsnk", "mk,mn->kn"]


@pytest.mark.parametrize("spec", sorted(set(SPECS)))
def test_einsum_in_bfloat16_matches_float32_and_keeps_bfloat16_dots(spec):
    sizes = dict(b=2, t=6, s=10, n=3, k=4, m=12, n_=5)
    rng = np.random.default_rng(2)
    operands = [jnp.asarray(rng.normal(size=[sizes[c] for c in part]), jnp.float32)
                for part in spec.split("->")[0].split(",")]
    want = jnp.einsum(spec, *operands)
    low = [o.astype(jnp.bfloat16) for o in operands]
    got = mixed_matmul.einsum(spec, *low, jnp.float32)
    np.testing.assert_allclose(got, want, rtol=0.02, atol=0.05)
    assert all(pair == ("bf16", "bf16") for pair in _bf16_dots(lambda a, b: mixed_matmul.einsum(spec, a, b), *low))
