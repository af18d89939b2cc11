"""Matrix products for bfloat16 compute: bfloat16 operands, float32 accumulation, float32 weight gradients.

Why a module of its own: on CPUs with AMX or avx512_bf16, XLA:CPU sends a dot with bfloat16
operands and a float32 result to YNNPACK's bf16 kernel (measured 2.5-4x its float32 rate), but only
when its operands are row-major arrays in a matmul's order. A bf16 -> bf16 dot, or one that reads
an operand through a transposed view (as every weight gradient, dW = X^T dY, does under autodiff),
it upcasts to float32 first: slower than float32 compute, converts included. So in bfloat16 the
products here keep float32 accumulation and copy operands into a matmul's order where needed
(`einsum`). The float32 path is the plain product, unchanged (exactness against HF). The model
uses this module on CPU only (`model._projection`, `cpu_kernels`); tests/test_mixed_matmul.py
checks that the compiled products keep bf16 operands.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def _dot(a, b, contracting):
    return jax.lax.dot_general(a, b, (contracting, ((), ())), preferred_element_type=jnp.float32)


def transposed_copy(a, axes):
    """jnp.transpose(a, axes) as a new row-major array, not a transposed view of `a`.

    XLA lays a plain transpose out as a view (a permuted layout) that its CPU dot then upcasts;
    with a trailing unit axis the transpose is materialised as a copy, which the bf16 kernel takes.
    """
    axes = tuple(axes)
    if axes == tuple(range(a.ndim)):
        return a
    return jnp.transpose(a[..., None], (*axes, a.ndim))[..., 0]


def einsum(spec: str, a, b, out_dtype=None):
    """jnp.einsum of two operands with float32 accumulation, result in `out_dtype` (default a's dtype).

    For bfloat16 the product runs as one batched row-major dot, which XLA:CPU keeps in bf16:
    lhs [batch, free, contracted] and rhs [batch, contracted, free] or [batch, free, contracted].
    Operands not already in such an order are copied into it (`transposed_copy`), and as XLA:CPU's
    transposes are slow (tens of ms for a few MB), of the two orientations, a.b and (b.a)^T, the one
    that copies fewer elements is taken. Every letter must be a batch (in a, b and the output),
    contracted (in a and b only) or free (in one operand and the output) dimension.
    """
    out_dtype = out_dtype or a.dtype
    if a.dtype == jnp.float32:
        return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32).astype(out_dtype)
    inputs, out = spec.split("->")
    sa, sb = inputs.split(",")
    batch = [c for c in out if c in sa and c in sb]
    contracted = [c for c in sa if c in sb and c not in out]
    size = dict(zip(sa, a.shape)) | dict(zip(sb, b.shape))
    plans = [_plan(batch, contracted, out, size, *operands) for operands in (((a, sa), (b, sb)), ((b, sb), (a, sa)))]
    return min(plans, key=lambda plan: plan[0])[1](out_dtype)


def _plan(batch, contracted, out, size, lhs, rhs):
    """(elements copied, run) for lhs . rhs as a batched row-major dot, then arranged as `out`."""
    (x, sx), (y, sy) = lhs, rhs
    free_x = [c for c in out if c in sx and c not in batch]
    free_y = [c for c in out if c in sy and c not in batch]
    orders = {"x": batch + free_x + contracted, "y": batch + contracted + free_y, "y_t": batch + free_y + contracted}
    y_key = "y" if list(sy) == orders["y"] or list(sy) != orders["y_t"] else "y_t"
    result = batch + free_x + free_y
    copied = ((list(sx) != orders["x"]) * x.size + (list(sy) != orders[y_key]) * y.size
              + (result != list(out)) * math.prod(size[c] for c in out))

    def run(out_dtype):
        nb, lead = len(batch), [size[c] for c in batch]
        m, k, n = (math.prod(size[c] for c in group) for group in (free_x, contracted, free_y))
        x2 = transposed_copy(x, [sx.index(c) for c in orders["x"]]).reshape(*lead, m, k)
        y2 = transposed_copy(y, [sy.index(c) for c in orders[y_key]])
        y2 = y2.reshape(*lead, k, n) if y_key == "y" else y2.reshape(*lead, n, k)
        contracting = ((nb + 1,), (nb if y_key == "y" else nb + 1,))
        z = jax.lax.dot_general(x2, y2, (contracting, (tuple(range(nb)),) * 2), preferred_element_type=jnp.float32)
        z = z.astype(out_dtype).reshape(*lead, *(size[c] for c in free_x + free_y))
        if result == list(out):
            return z
        # The barrier keeps XLA from folding this transpose into the dot as (y^T x^T), a dot it
        # would then neither upcast nor give to the bf16 kernel (it fails at run time).
        return jnp.transpose(jax.lax.optimization_barrier(z), [result.index(c) for c in out])

    return copied, run


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
    return einsum("mk,mn->kn", _tokens(x), _tokens(dy.astype(x.dtype)), jnp.float32)


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
