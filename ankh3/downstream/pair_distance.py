"""The contact head's pair feature, sum_p v_p |z_ip - z_jp|, without a [B, L, L, p] tensor.

Written as `einsum("bijp,p->bij", abs(z[:, :, None] - z[:, None]), v)`, XLA:CPU materialised the
[B, L, L, p] differences in the forward pass and again (as signs) in the backward, and turned the
reductions into matrix-vector products over them. Here the forward adds the p terms in elementwise
passes over [B, L, L], and the backward needs one reduction over [B, L, L] per feature:

    R_kp = sum_j S_kj sign(z_kp - z_jp),   S = G + G^T  (G the cotangent of the output)
    dz_kp = v_p R_kp,                      dv_p = sum_k z_kp R_kp

(the second because |d| = d sign(d) and S is symmetric). Signs are jnp.sign's, 0 at ties: the gradient
is autodiff's of the einsum form except at tied features (z_ip = z_jp, i != j, in practice padding, which
the loss masks), where jnp.abs's autodiff picks +1 for both orderings and so an asymmetric subgradient.

The contact head's training step (batch 16, length 256, width 128, p 32) went from ~540 ms to ~315 ms on
a 2-core CPU, and with the backward's sums as one variadic reduction per chunk from 165 to 131 ms on
another (1.32x at length 512; benchmarks/RESULTS.md, 2026-12-03).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


# Features per loop iteration. Each iteration is one elementwise pass (forward) or one multi-output
# reduction (backward) over [B, L, L]; 8 ran the contact step in 315 ms against 415 ms for 1 at batch 16,
# length 256, p 32. A loop of one iteration is inlined and fused like a Python sum, so p <= 8 recomputes.
CHUNK = 8


def _chunks(a: jax.Array) -> jax.Array:
    """a [..., p] as [p / CHUNK, CHUNK, ...] (zero-padded features add nothing to either pass)."""
    p = a.shape[-1]
    a = jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, -p % CHUNK)])
    return jnp.moveaxis(a, -1, 0).reshape((-1, CHUNK) + a.shape[:-1])


def _signed_row_sums(zc: jax.Array, s: jax.Array) -> jax.Array:
    """R[q, b, k] = sum_j s[b, k, j] sign(z[q, b, k] - z[q, b, j]) for a chunk of features zc [CHUNK, B, L],
    as one variadic reduction (a tuple of CHUNK sums in one pass over s). As CHUNK plain sums, XLA:CPU
    handed each to YNNPACK's reduce, which takes no producer, so every select was written out as a
    [B, L, L] array first: 64 -> 28 ms at batch 16, length 256, p 32, and 235 -> 113 ms at length 512.
    A select, not a multiply by sign, so that XLA does not rewrite it as a dot over a sign tensor."""
    zero = jnp.zeros((), s.dtype)
    terms = []
    for zp in zc:
        d = zp[:, :, None] - zp[:, None, :]
        terms.append(jnp.where(d > 0, s, jnp.where(d < 0, -s, zero)))
    sums = jax.lax.reduce(tuple(terms), (zero,) * len(terms), lambda a, b: tuple(x + y for x, y in zip(a, b)), (2,))
    return jnp.stack(sums)


@jax.custom_vjp
def weighted_l1_distance(z: jax.Array, v: jax.Array) -> jax.Array:
    """[B, L, L] of sum_p v[p] |z[b, i, p] - z[b, j, p]| for z [B, L, p] and v [p]."""
    zc, vc = _chunks(z), _chunks(v)
    dtype = jnp.result_type(z, v)  # as the einsum promoted: bf16 features with float32 weights add in float32

    def add_chunk(c, total):
        zp, vp = zc[c], vc[c]
        return total + sum(vp[q].astype(dtype) * jnp.abs(zp[q][:, :, None] - zp[q][:, None, :]).astype(dtype)
                           for q in range(zp.shape[0]))

    # A loop, not a Python sum: XLA fused the unrolled sum into each of its consumers (the loss's
    # selects), recomputing all p terms there; a loop's result is computed once.
    return jax.lax.fori_loop(0, zc.shape[0], add_chunk, jnp.zeros(z.shape[:2] + z.shape[1:2], dtype))


def _forward(z, v):
    return weighted_l1_distance(z, v), (z, v)


def _backward(residuals, g):
    z, v = residuals
    s = g + jnp.swapaxes(g, 1, 2)
    # One chunk at a time: a vmap over all p materialised the [p, B, L, L] selects before reducing them.
    r = jax.lax.map(lambda zc: _signed_row_sums(zc, s), _chunks(z))
    r = jnp.moveaxis(r.reshape((-1,) + r.shape[2:])[:z.shape[-1]], 0, -1)
    return (r * v).astype(z.dtype), jnp.sum(r * z, axis=(0, 1)).astype(v.dtype)


weighted_l1_distance.defvjp(_forward, _backward)
