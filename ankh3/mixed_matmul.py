"""Matrix products for bfloat16 compute: bfloat16 operands, float32 accumulation, float32 weight gradients.

Why a module of its own: on CPUs with AMX or avx512_bf16, XLA:CPU sends a dot with bfloat16
operands and a float32 result to YNNPACK's bf16 kernel (measured 2.5-4x its float32 rate), but only
when both operands are row-major arrays. A bf16 -> bf16 dot, or one that reads an operand through
a transposed view (as every weight gradient, dW = X^T dY, does under autodiff), it upcasts to
float32 first: slower than float32 compute, converts included. So in bfloat16 the products here
keep float32 accumulation, and the weight gradient transposes X physically before its dot
(`rows_to_columns`). The float32 path is the plain `x @ w`, unchanged (exactness against HF).
Accelerators take the same code: there a dot with a float32 result is the usual mixed precision.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _dot(a, b, contracting):
    return jax.lax.dot_general(a, b, (contracting, ((), ())), preferred_element_type=jnp.float32)


def rows_to_columns(a):
    """a [M, K] -> [K, M] as a new row-major array, not a transposed view of `a`.

    XLA lays a plain transpose out as a view ({0,1} layout) that its CPU dot then upcasts; through
    a 3-d reshape the transpose is materialised as a copy, which the bf16 kernel takes as it is.
    """
    m, k = a.shape
    return jnp.transpose(a.reshape(m, k, 1), (1, 0, 2)).reshape(k, m)


def stash(x):
    """A bfloat16 residual as uint16 bits (other dtypes as they are); `unstash` undoes it.

    Residuals saved for the backward are stacked across the layer scan with dynamic-update-slice,
    which XLA:CPU has no bfloat16 kernel for: it converts the whole stacked buffer to float32 and
    back at every layer. The same bits as uint16 stack natively.
    """
    return jax.lax.bitcast_convert_type(x, jnp.uint16) if x.dtype == jnp.bfloat16 else x


def unstash(x):
    return jax.lax.bitcast_convert_type(x, jnp.bfloat16) if x.dtype == jnp.uint16 else x


def _tokens(x):
    return x.reshape(-1, x.shape[-1])


def matmul(x, w):
    """x [..., K] @ w [K, N] in x's dtype (w is cast to it), accumulated in float32."""
    w = w.astype(x.dtype)
    if x.dtype == jnp.float32:
        return x @ w
    return _dot(_tokens(x), w, ((1,), (0,))).astype(x.dtype).reshape(*x.shape[:-1], w.shape[1])


def matmul_transposed(dy, w):
    """dy [..., N] @ w[K, N]^T -> [..., K] in dy's dtype: the input gradient of `matmul`."""
    w = w.astype(dy.dtype)
    if dy.dtype == jnp.float32:
        return dy @ w.T
    return _dot(_tokens(dy), w, ((1,), (1,))).astype(dy.dtype).reshape(*dy.shape[:-1], w.shape[0])


def weight_gradient(x, dy):
    """sum over tokens of x [..., K] (outer) dy [..., N] -> float32 [K, N]: the weight gradient of `matmul`."""
    if x.dtype == jnp.float32:
        # XLA:CPU's float32 matmul transposes an operand for this product: let it be the narrower one.
        if x.shape[-1] <= dy.shape[-1]:
            return jnp.einsum("...k,...n->kn", x, dy)
        return jnp.einsum("...n,...k->nk", dy, x).T
    return _dot(rows_to_columns(_tokens(x)), _tokens(dy.astype(x.dtype)), ((1,), (0,)))


def dense(x, w):
    """x [..., K] @ w [K, N] (w float32 parameters, cast to x's dtype); its gradient for w is float32.

    float32 is the plain product under JAX's autodiff; other dtypes take the products above.
    """
    return x @ w.astype(x.dtype) if x.dtype == jnp.float32 else _dense(x, w)


@jax.custom_vjp
def _dense(x, w):
    return matmul(x, w)


def _dense_fwd(x, w):
    return matmul(x, w), (stash(x), w)


def _dense_bwd(residuals, dy):
    x, w = unstash(residuals[0]), residuals[1]
    return matmul_transposed(dy, w), weight_gradient(x, dy).astype(w.dtype)


_dense.defvjp(_dense_fwd, _dense_bwd)
