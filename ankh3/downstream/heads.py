"""ConvBERT probe heads (Flax NNX) trained on frozen per-residue embeddings.

One ConvBERT layer as in the Ankh evaluation (mixed self-attention + span-based dynamic
convolution, no position embedding), followed by a task-specific output: per-residue
classes, a pooled scalar, or a symmetric residue-pair contact logit. Padding is masked so
that the outputs at real positions do not depend on how much padding a batch carries.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from ankh3.downstream.pair_distance import weighted_l1_distance
from ankh3.errors import UserError

_NEG = -1e9  # finite, so that a fully masked row gives a uniform softmax instead of NaN


class HeadError(UserError, ValueError):
    """A head was configured in a way its input cannot support."""


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """ConvBERT head settings of the Ankh evaluation; pair_dim and pooling are ours."""

    kernel_size: int = 7
    num_heads: int = 4
    head_ratio: int = 2  # ConvBERT: num_heads // head_ratio attention heads, as many conv heads
    intermediate_ratio: float = 0.5  # intermediate size = embedding size * ratio
    dropout: float = 0.2
    pooling: str = "mean"  # 'mean' | 'max' for the regression head
    pair_dim: int = 32  # width of the |difference| pair feature (B*L*L*p floats); 0 = product only

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _windows(x: jax.Array, kernel: int) -> list[jax.Array]:
    """The zero-padded window centred on each position of x [B, L, ...], as `kernel` shifted copies of x
    (window slot j of position i is x[i + j - kernel // 2]). Kept as separate views that the caller
    weights and sums, so XLA fuses them into one elementwise pass: stacking them into [B, L, kernel, ...]
    made copies and concatenations most of the probe step's time on CPU."""
    half, length = kernel // 2, x.shape[1]
    padded = jnp.pad(x, ((0, 0), (half, kernel - 1 - half)) + ((0, 0),) * (x.ndim - 2))
    return [padded[:, j:j + length] for j in range(kernel)]


def _mix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finalizer: a bijection of uint32 whose output bits each depend on every input bit."""
    h = (h ^ (h >> 16)) * jnp.uint32(0x85EBCA6B)
    h = (h ^ (h >> 13)) * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def dropout(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
    """Inverted dropout whose mask is a keyed hash of each element's index (a counter-based generator).

    Why not jax.random: on CPU, XLA's RngBitGenerator (the 'rbg' keys) runs as a separate call with
    concatenations of its output, and threefry as dozens of integer ops per element; for the attention
    probabilities' [B, heads, L, L] mask either cost more than the probe head's matmuls. The hash fuses
    into the elementwise multiply. The two key words enter in separate rounds, so two keys do not give
    shifted or permuted copies of one mask; the bits are for regularisation, not for statistics.
    """
    k0, k1 = jax.random.bits(key, (2,), jnp.uint32)
    index = jax.lax.iota(jnp.uint32, x.size).reshape(x.shape)
    bits = _mix32(_mix32(index ^ k0) + k1)
    keep = bits >= jnp.uint32(min(round(rate * 2.0**32), 2**32 - 1))
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype))


def _linear(n_in: int, n_out: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(n_in, n_out, kernel_init=nnx.initializers.normal(0.02), rngs=rngs)


class ConvBertLayer(nnx.Module):
    """One ConvBERT layer (HF `ConvBertLayer` semantics) with a padding mask that also
    zeroes padded positions before the convolutions, so padding never leaks into windows."""

    def __init__(self, dim: int, cfg: HeadConfig, *, rngs: nnx.Rngs):
        heads = max(1, cfg.num_heads // cfg.head_ratio)
        if dim % (2 * heads):
            raise HeadError(f"ConvBERT head: embedding size {dim} must be divisible by {2 * heads} "
                            f"(2 x num_heads // head_ratio); pad or project the embeddings")
        self.heads, self.head_dim, self.kernel = heads, dim // heads // 2, cfg.kernel_size
        inner = heads * self.head_dim
        init = nnx.initializers.normal(0.02)
        self.query = _linear(dim, inner, rngs)
        self.key = _linear(dim, inner, rngs)
        self.value = _linear(dim, inner, rngs)
        # Separable convolution producing the "key" of the span-based dynamic convolution.
        self.key_depthwise = nnx.Param(init(rngs.params(), (cfg.kernel_size, dim)))
        self.key_pointwise = nnx.Param(init(rngs.params(), (dim, inner)))
        self.key_bias = nnx.Param(jnp.zeros((inner,)))
        self.span_kernel = _linear(inner, heads * cfg.kernel_size, rngs)
        self.conv_value = _linear(dim, inner, rngs)
        self.attn_out = _linear(dim, dim, rngs)
        self.attn_norm = nnx.LayerNorm(dim, epsilon=1e-12, rngs=rngs)
        hidden = max(1, int(round(dim * cfg.intermediate_ratio)))
        self.mlp_in = _linear(dim, hidden, rngs)
        self.mlp_out = _linear(hidden, dim, rngs)
        self.mlp_norm = nnx.LayerNorm(dim, epsilon=1e-12, rngs=rngs)
        self.dropout_rate = cfg.dropout

    def __call__(self, x: jax.Array, mask: jax.Array, key: jax.Array | None = None) -> jax.Array:
        keys = list(jax.random.split(key, 3)) if key is not None else [None] * 3
        b, length, dim = x.shape
        h, hd = self.heads, self.head_dim
        real = mask[..., None].astype(x.dtype)
        x = x * real
        q, k, v = self.query(x), self.key(x), self.value(x)

        depthwise = self.key_depthwise[...]
        conv_key = sum(w * depthwise[j] for j, w in enumerate(_windows(x, self.kernel)))
        conv_key = conv_key @ self.key_pointwise[...] + self.key_bias[...]
        span = self.span_kernel(conv_key * q).reshape(b, length, h, self.kernel)
        span = jax.nn.softmax(span, axis=-1)
        conv_value = (self.conv_value(x) * real).reshape(b, length, h, hd)
        conv_out = sum(w * span[..., j, None] for j, w in enumerate(_windows(conv_value, self.kernel)))

        qh, kh, vh = (t.reshape(b, length, h, hd) for t in (q, k, v))
        scores = jnp.einsum("bqhd,bkhd->bhqk", qh, kh) / math.sqrt(hd)
        scores = jnp.where(mask[:, None, None, :], scores, _NEG)
        probs = self._drop(jax.nn.softmax(scores, axis=-1), keys[0])
        context = jnp.einsum("bhqk,bkhd->bqhd", probs, vh)

        mixed = jnp.concatenate([context, conv_out], axis=2).reshape(b, length, dim)
        hidden = self.attn_norm(self._drop(self.attn_out(mixed), keys[1]) + x)
        ff = self.mlp_out(jax.nn.gelu(self.mlp_in(hidden), approximate=False))
        return self.mlp_norm(self._drop(ff, keys[2]) + hidden)

    def _drop(self, x: jax.Array, key: jax.Array | None) -> jax.Array:
        if key is None or self.dropout_rate == 0:
            return x
        return dropout(x, self.dropout_rate, key)


class ResidueClassifier(nnx.Module):
    """ConvBERT -> per-residue class logits [B, L, C] (secondary structure)."""

    def __init__(self, dim: int, num_classes: int, cfg: HeadConfig = HeadConfig(), *, rngs: nnx.Rngs):
        self.body = ConvBertLayer(dim, cfg, rngs=rngs)
        self.out = _linear(dim, num_classes, rngs)

    def __call__(self, x, mask, key=None):
        return self.out(self.body(x, mask, key))


class SequenceRegressor(nnx.Module):
    """ConvBERT -> masked pooling -> scalar [B] (fitness). The output bias starts at the
    training-label mean so early epochs are not spent learning the offset."""

    def __init__(self, dim: int, cfg: HeadConfig = HeadConfig(), label_mean: float = 0.0, *, rngs: nnx.Rngs):
        if cfg.pooling not in ("mean", "max"):
            raise HeadError(f"pooling must be 'mean' or 'max', got {cfg.pooling!r}")
        self.pooling = cfg.pooling
        self.body = ConvBertLayer(dim, cfg, rngs=rngs)
        self.out = nnx.Linear(dim, 1, kernel_init=nnx.initializers.normal(0.02),
                              bias_init=nnx.initializers.constant(label_mean), rngs=rngs)

    def __call__(self, x, mask, key=None):
        hidden = self.body(x, mask, key)
        real = mask[..., None]
        if self.pooling == "max":
            # Finite fill: a padded dummy row must give finite outputs, or NaN leaks into gradients.
            pooled = jnp.where(real, hidden, _NEG).max(axis=1)
            pooled = jnp.where(real.any(axis=1), pooled, 0.0)
        else:
            pooled = (hidden * real).sum(axis=1) / jnp.maximum(real.sum(axis=1), 1)
        return self.out(pooled)[:, 0]


class ContactPredictor(nnx.Module):
    """ConvBERT -> pair features -> linear -> symmetric logits [B, L, L].

    logit_ij = w . (h_i * h_j) + v . |P h_i - P h_j| + b. The product term is the issue's
    (h_i * h_j) feature on the full width, computed as a bilinear form without materialising
    [B, L, L, D]. The signed h_i - h_j is replaced by |P h_i - P h_j| on a `pair_dim`
    projection (0 disables it): a linear map of a signed difference is antisymmetric, so it could
    not enter symmetric logits. The pair term is computed without a [B, L, L, p] tensor
    (pair_distance.py); p bounds its cost.
    """

    def __init__(self, dim: int, cfg: HeadConfig = HeadConfig(), *, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.02)
        self.body = ConvBertLayer(dim, cfg, rngs=rngs)
        self.product_weight = nnx.Param(init(rngs.params(), (dim,)))
        self.project = _linear(dim, cfg.pair_dim, rngs) if cfg.pair_dim else None
        self.diff_weight = nnx.Param(init(rngs.params(), (cfg.pair_dim,))) if cfg.pair_dim else None
        self.bias = nnx.Param(jnp.zeros(()))

    def __call__(self, x, mask, key=None):
        h = self.body(x, mask, key)
        # Every term is symmetric in (i, j), so the logits are, without a symmetrising pass (a transpose
        # of [B, L, L] forward and backward); rounding in the product's matmul may differ by an ulp.
        logits = jnp.einsum("bid,bjd,d->bij", h, h, self.product_weight[...]) + self.bias[...]
        if self.project is not None:
            z = self.project(h)
            logits = logits + weighted_l1_distance(z, self.diff_weight[...])
        return logits
