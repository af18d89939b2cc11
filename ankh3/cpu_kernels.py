"""Hand-written backward passes for attention and the gated MLP, used on CPU only.

XLA:CPU's own derivative of these two blocks spends most of its time in strided reductions and
transposed copies (about 10x the forward on the CPU benchmark shape); these custom VJPs keep the
backward to plain matmuls. Accelerators use XLA's autodiff of `jax.nn.dot_product_attention`
instead (model.attention 'xla' or 'cudnn'), so the maths lives in one place there.
tests/test_cpu_kernels.py checks both functions against autodiff of the same maths.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ankh3.mixed_matmul import einsum, matmul, matmul_transposed, stash, unstash, weight_gradient
from ankh3.sharding import constrain


def full_mask(mask, causal: bool, query_len: int, key_len: int):
    """The key mask (bool, broadcastable to [B, N, T, S], or None) combined with the causal one."""
    if not causal:
        return mask
    tril = jnp.tril(jnp.ones((query_len, key_len), bool))
    return tril if mask is None else mask & tril


def masked_logits(q, k, bias, mask, causal):
    """q k^T + bias in float32, masked positions at the float32 minimum (as HF T5); [B, N, T, S]."""
    logits = einsum("btnk,bsnk->bnts", q, k, jnp.float32)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    mask = full_mask(mask, causal, *logits.shape[-2:])
    return logits if mask is None else jnp.where(mask, logits, jnp.finfo(jnp.float32).min)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def attention(causal: bool, q, k, v, bias, mask):
    """softmax(q k^T + bias, masked) v, unscaled; q [B,T,N,K], k/v [B,S,N,K] -> [B,T,N,K].

    The backward saves the probabilities, uses the output to form the softmax correction
    (delta = sum(dout * out)) and sums the bias gradient over the batch with a matmul.
    bias: [1, N, T, S] float32 or None; mask: bool broadcastable to [B, N, T, S] or None.
    """
    return _attention_fwd(causal, q, k, v, bias, mask)[0]


def _attention_fwd(causal, q, k, v, bias, mask):
    probs = jax.nn.softmax(masked_logits(q, k, bias, mask, causal), axis=-1).astype(v.dtype)
    out = einsum("bnts,bsnk->btnk", probs, v)
    return out, (stash(q), stash(k), stash(v), bias, mask, stash(probs), stash(out))


def _attention_bwd(causal, residuals, d_out):
    q, k, v, bias, mask, probs, out = (unstash(r) if r is not None else r for r in residuals)
    d_v = einsum("bnts,btnk->bsnk", probs, d_out)
    d_probs = einsum("btnk,bsnk->bnts", d_out, v, jnp.float32)
    delta = jnp.einsum("btnk,btnk->bnt", d_out.astype(jnp.float32), out.astype(jnp.float32))
    d_logits = probs.astype(jnp.float32) * (d_probs - delta[..., None])
    # Masked logits are constants: no gradient flows to them. This matters for a query whose keys
    # are all masked (an all-padding row): its probabilities are uniform, not zero, on masked keys.
    combined = full_mask(mask, causal, *d_logits.shape[-2:])
    if combined is not None:
        d_logits = jnp.where(combined, d_logits, 0.0)
    d_bias = None
    if bias is not None:
        ones = jnp.ones((d_logits.shape[0],), jnp.float32)
        d_bias = jnp.einsum("b,bnts->nts", ones, d_logits)[None].astype(bias.dtype)
    d_logits = d_logits.astype(q.dtype)
    d_q = einsum("bnts,bsnk->btnk", d_logits, k)
    d_k = einsum("bnts,btnk->bsnk", d_logits, q)
    d_mask = None if mask is None else np.zeros(mask.shape, jax.dtypes.float0)
    return d_q, d_k, d_v, d_bias, d_mask


attention.defvjp(_attention_fwd, _attention_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def gated_mlp(activation, x, wi_0, wi_1, wo):
    """activation(x wi_0) * (x wi_1) @ wo in x's dtype; `activation` is an elementwise function (hashable).

    The weights may be float32 parameters of a bfloat16 `x`: products follow `mixed_matmul`, and
    the weights' gradients come back in the weights' dtype.

    The backward keeps only x and the two pre-activations, and materialises the hidden
    gradients before the weight-gradient matmuls: left to itself XLA:CPU fuses the activation's
    derivative into a transposed copy for those matmuls, a strided loop several times slower
    than the matmuls themselves.
    """
    return _gated_mlp_fwd(activation, x, wi_0, wi_1, wo)[0]


def _gated_mlp_fwd(activation, x, wi_0, wi_1, wo):
    gate, linear = matmul(x, wi_0), matmul(x, wi_1)
    gate = constrain(gate, ("batch", "length", "mlp"))
    linear = constrain(linear, ("batch", "length", "mlp"))
    return matmul(activation(gate) * linear, wo), (stash(x), stash(gate), stash(linear), wi_0, wi_1, wo)


def _gated_mlp_bwd(activation, residuals, dy):
    x, gate, linear, wi_0, wi_1, wo = (unstash(r) for r in residuals)
    act, act_vjp = jax.vjp(activation, gate)
    d_hidden = matmul_transposed(dy, wo)
    d_linear = d_hidden * act
    d_gate = act_vjp(d_hidden * linear)[0]
    d_gate, d_linear, hidden = jax.lax.optimization_barrier((d_gate, d_linear, act * linear))
    d_x = matmul_transposed(d_gate, wi_0) + matmul_transposed(d_linear, wi_1)
    d_wi_0, d_wi_1, d_wo = (weight_gradient(a, d).astype(w.dtype)
                            for a, d, w in ((x, d_gate, wi_0), (x, d_linear, wi_1), (hidden, dy, wo)))
    return d_x, d_wi_0, d_wi_1, d_wo


gated_mlp.defvjp(_gated_mlp_fwd, _gated_mlp_bwd)
