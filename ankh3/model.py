"""The T5 v1.1 encoder-decoder used by Ankh and Ankh3, in Flax NNX, numerically equal to HF T5.

Each stack keeps its layers' parameters stacked on a leading `layers` axis and applies one
compiled layer body with `jax.lax.scan`, so compile time does not grow with depth.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ankh3 import cpu_kernels, mixed_matmul
from ankh3.errors import UserError
from ankh3.sharding import constrain


class ModelConfigError(UserError, ValueError):
    """A model configuration, shape name or parameter set that cannot be used."""


ACTIVATIONS = {
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),  # HF gelu_new (tanh form)
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
}
REMAT_POLICIES = ("none", "full", "dots")
# auto: cpu_kernels on CPU, cudnn on GPU for 16-bit compute, xla otherwise (see attention_for_backend).
ATTENTION_IMPLS = ("auto", "cpu_kernels", "xla", "cudnn")
LEGACY_ATTENTION = {"einsum": "cpu_kernels"}  # the name saved in model_config.json files before 2026-12
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 256
    d_model: int = 128
    d_ff: int = 256
    num_heads: int = 4
    d_kv: int = 32
    num_encoder_layers: int = 2
    num_decoder_layers: int = 2
    activation: str = "silu"
    relative_buckets: int = 64
    relative_max_distance: int = 128
    dropout_rate: float = 0.0
    layer_norm_eps: float = 1e-6
    tie_embeddings: bool = False
    dtype: str = "float32"  # compute dtype; parameters stay float32
    remat: str = "none"  # none | full | dots
    attention: str = "auto"  # auto | cpu_kernels (hand-written backward passes, CPU) | xla | cudnn (GPU)
    scan_unroll: int = 1
    pad_id: int = 0

    def __post_init__(self):
        if self.attention in LEGACY_ATTENTION:
            object.__setattr__(self, "attention", LEGACY_ATTENTION[self.attention])
        checks = (
            (self.activation in ACTIVATIONS, f"activation {self.activation!r} is not one of {sorted(ACTIVATIONS)}"),
            (self.remat in REMAT_POLICIES, f"remat {self.remat!r} is not one of {REMAT_POLICIES}"),
            (self.attention in ATTENTION_IMPLS, f"attention {self.attention!r} is not one of {ATTENTION_IMPLS}"),
            (self.dtype in DTYPES, f"dtype {self.dtype!r} is not one of {sorted(DTYPES)}"),
            (self.num_encoder_layers >= 1 and self.num_decoder_layers >= 0, "need >= 1 encoder layer"),
            (0.0 <= self.dropout_rate < 1.0, f"dropout_rate {self.dropout_rate} must be in [0, 1)"),
            (self.attention != "cudnn" or self.dtype != "float32",
             "attention 'cudnn' needs dtype 'bfloat16' or 'float16'; use attention 'xla' or 'auto' for float32"),
        )
        for ok, message in checks:
            if not ok:
                raise ModelConfigError(f"ModelConfig: {message}")

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any], **overrides) -> "ModelConfig":
        """From a HF `T5Config` dict (config.json); only gated feed-forward models are supported."""
        proj = hf.get("feed_forward_proj", "relu")
        gated, _, act = proj.rpartition("-")
        if gated != "gated":
            raise ModelConfigError(
                f"HF config feed_forward_proj={proj!r}: only gated feed-forward (e.g. 'gated-gelu', "
                f"'gated-silu') is supported, as in T5 v1.1 / Ankh"
            )
        act = "gelu_new" if act == "gelu" else act  # HF maps gated-gelu to gelu_new
        fields = dict(
            vocab_size=hf["vocab_size"], d_model=hf["d_model"], d_ff=hf["d_ff"],
            num_heads=hf["num_heads"], d_kv=hf["d_kv"], num_encoder_layers=hf["num_layers"],
            num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"], activation=act,
            relative_buckets=hf.get("relative_attention_num_buckets", 32),
            relative_max_distance=hf.get("relative_attention_max_distance", 128),
            dropout_rate=hf.get("dropout_rate", 0.0), layer_norm_eps=hf.get("layer_norm_epsilon", 1e-6),
            tie_embeddings=hf.get("tie_word_embeddings", True) is not False,
            pad_id=hf.get("pad_token_id", 0) or 0,
        )
        fields.update(overrides)
        return cls(**fields)

    def to_hf_config(self) -> dict[str, Any]:
        """A HF `T5Config` dict for this model (T5ForConditionalGeneration)."""
        act = "gelu" if self.activation == "gelu_new" else self.activation
        return dict(
            architectures=["T5ForConditionalGeneration"], model_type="t5",
            vocab_size=self.vocab_size, d_model=self.d_model, d_ff=self.d_ff, num_heads=self.num_heads,
            d_kv=self.d_kv, num_layers=self.num_encoder_layers, num_decoder_layers=self.num_decoder_layers,
            feed_forward_proj=f"gated-{act}", relative_attention_num_buckets=self.relative_buckets,
            relative_attention_max_distance=self.relative_max_distance, dropout_rate=self.dropout_rate,
            layer_norm_epsilon=self.layer_norm_eps, tie_word_embeddings=self.tie_embeddings,
            is_encoder_decoder=True, pad_token_id=self.pad_id, eos_token_id=1,
            decoder_start_token_id=self.pad_id, initializer_factor=1.0,
        )


def attention_for_backend(backend: str, dtype: str) -> str:
    """What attention 'auto' means on a JAX backend ('cpu', 'gpu', 'tpu') for a compute dtype.

    The hand-written kernels exist for XLA:CPU, whose autodiff of attention is slow; elsewhere
    XLA's autodiff of `jax.nn.dot_product_attention` serves, through cuDNN's fused kernel on GPUs
    (which needs 16-bit inputs).
    """
    if backend == "cpu":
        return "cpu_kernels"
    return "cudnn" if backend == "gpu" and dtype != "float32" else "xla"


def attention_impl(cfg: ModelConfig) -> str:
    """The attention implementation `cfg` computes with on the default backend ('auto' resolved)."""
    if cfg.attention != "auto":
        return cfg.attention
    return attention_for_backend(jax.default_backend(), cfg.dtype)


_ANKH = dict(d_kv=64, num_encoder_layers=48, num_decoder_layers=24, relative_buckets=64, relative_max_distance=128)
SHAPES: dict[str, ModelConfig] = {
    "tiny": ModelConfig(),
    "small": ModelConfig(d_model=512, d_ff=1024, num_heads=8, d_kv=64, num_encoder_layers=8, num_decoder_layers=4),
    # One hour of pretraining on a 2-core CPU (experiments RUN_SIZES['cpu_hour']): ~1.4M parameters, the
    # compute-optimal size for that budget, with a deeper encoder (what the probes read) and one decoder layer.
    "cpu_hour": ModelConfig(d_model=128, d_ff=512, num_heads=4, d_kv=32, num_encoder_layers=4,
                            num_decoder_layers=1),
    # The CPU benchmark shape (benchmarks/model_step.py).
    "bench_cpu": ModelConfig(d_model=256, d_ff=1024, num_heads=4, d_kv=64, num_encoder_layers=4,
                             num_decoder_layers=2, activation="gelu_new"),
    "ankh_base": ModelConfig(vocab_size=144, d_model=768, d_ff=3072, num_heads=12, activation="gelu_new", **_ANKH),
    "ankh_large": ModelConfig(vocab_size=144, d_model=1536, d_ff=3840, num_heads=16, activation="gelu_new", **_ANKH),
    "ankh3_large": ModelConfig(vocab_size=256, d_model=1536, d_ff=3840, num_heads=16, activation="silu", **_ANKH),
    "ankh3_xl": ModelConfig(vocab_size=256, d_model=2560, d_ff=6720, num_heads=32, activation="silu", **_ANKH),
}


def get_shape(name: str, **overrides) -> ModelConfig:
    """A named shape, with any ModelConfig field overridden."""
    if name not in SHAPES:
        raise ModelConfigError(f"unknown model shape {name!r}; choose one of {sorted(SHAPES)}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)}
    if unknown:
        raise ModelConfigError(f"unknown ModelConfig field(s) {sorted(unknown)} in overrides of shape {name!r}")
    return dataclasses.replace(SHAPES[name], **overrides)


# ----------------------------------------------------------------------------- parameters

# From-scratch initialisation follows T5X / Flax T5 (the original training code), as normal(0, std):
# embeddings std 1; every kernel variance-scaling 1.0 fan_in (std = fan_in**-0.5), with the query kernel
# further divided by sqrt(d_kv) (T5 folds the attention scale into it) and the untied output head a
# plain fan_in kernel (d_model**-0.5), so a fresh model starts near loss ln(vocab). HF's `_init_weights`
# uses std 1 for the untied head, which starts the loss at ~30 and wastes the first ~100 steps.
# The relative position bias is T5X's variance scaling 1.0 fan_avg. T5X draws some kernels from a
# truncated normal; plain normal with the same std is used here (as HF does).
def _param(rngs: nnx.Rngs, shape, std: float | None, axes) -> nnx.Param:
    """A float32 parameter, normal(0, std) or ones when std is None, tagged with logical axes."""
    value = jnp.ones(shape, jnp.float32) if std is None else std * jax.random.normal(rngs.params(), shape)
    return nnx.Param(value, logical_axes=tuple(axes))


class Attention(nnx.Module):
    """Stacked q, k, v, o kernels (in, out) of one attention kind for all layers of a stack."""

    def __init__(self, cfg: ModelConfig, layers: int, rngs: nnx.Rngs):
        d, inner = cfg.d_model, cfg.inner_dim
        # T5 folds the 1/sqrt(d_kv) attention scale into the query initialisation.
        self.q = _param(rngs, (layers, d, inner), (d * cfg.d_kv) ** -0.5, ("layers", "embed", "heads"))
        self.k = _param(rngs, (layers, d, inner), d ** -0.5, ("layers", "embed", "heads"))
        self.v = _param(rngs, (layers, d, inner), d ** -0.5, ("layers", "embed", "heads"))
        self.o = _param(rngs, (layers, inner, d), inner ** -0.5, ("layers", "heads", "embed"))


class Mlp(nnx.Module):
    """Stacked gated feed-forward kernels: act(x wi_0) * (x wi_1) -> wo."""

    def __init__(self, cfg: ModelConfig, layers: int, rngs: nnx.Rngs):
        d, f = cfg.d_model, cfg.d_ff
        self.wi_0 = _param(rngs, (layers, d, f), d ** -0.5, ("layers", "embed", "mlp"))
        self.wi_1 = _param(rngs, (layers, d, f), d ** -0.5, ("layers", "embed", "mlp"))
        self.wo = _param(rngs, (layers, f, d), f ** -0.5, ("layers", "mlp", "embed"))


def _norm(rngs, layers: int | None, d: int) -> nnx.Param:
    if layers is None:
        return _param(rngs, (d,), None, ("embed",))
    return _param(rngs, (layers, d), None, ("layers", "embed"))


# ----------------------------------------------------------------------------- functions

def relative_position_buckets(query_len: int, key_len: int, bidirectional: bool, num_buckets: int,
                              max_distance: int) -> np.ndarray:
    """T5's bucket of (key - query) for every pair, int32 [query_len, key_len].

    Computed in numpy float32 exactly as HF/Mesh TensorFlow does, at trace time (shapes are static).
    """
    relative = np.arange(key_len)[None, :] - np.arange(query_len)[:, None]
    return relative_position_bucket(relative, bidirectional, num_buckets, max_distance)


def relative_position_bucket(relative: np.ndarray, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> np.ndarray:
    """T5's bucket of each relative position (key - query), like HF `_relative_position_bucket`."""
    relative = np.asarray(relative, np.int64)
    buckets = np.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative > 0).astype(relative.dtype) * num_buckets
        relative = np.abs(relative)
    else:
        relative = -np.minimum(relative, 0)
    max_exact = num_buckets // 2
    is_small = relative < max_exact
    with np.errstate(divide="ignore"):
        scaled = (np.log(relative.astype(np.float32) / np.float32(max_exact))
                  / np.float32(math.log(max_distance / max_exact)) * np.float32(num_buckets - max_exact))
    large = max_exact + np.where(is_small, 0, scaled).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return (buckets + np.where(is_small, relative, large)).astype(np.int32)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """T5 LayerNorm: scale only, no mean subtraction, variance in float32."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return normed.astype(x.dtype) * scale.astype(x.dtype)


def _dropout(x, rate: float, key):
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def _attend(cfg: ModelConfig, q, k, v, bias, key_mask, causal: bool, dropout_key):
    """softmax(q k^T + bias + masks) v without scaling; q [B,T,N,K], k/v [B,S,N,K], bias [1,N,T,S]|None."""
    mask = None if key_mask is None else key_mask[:, None, None, :]
    impl = attention_impl(cfg)
    if dropout_key is not None and cfg.dropout_rate > 0.0:
        return _attend_with_dropout(q, k, v, bias, mask, causal, cfg.dropout_rate, dropout_key)
    if impl == "cpu_kernels":
        return cpu_kernels.attention(causal, q, k, v, bias, mask)
    if impl == "cudnn":
        # cuDNN takes padding as lengths; the pipeline pads at the end, so the mask is a prefix.
        lengths = None if key_mask is None else jnp.sum(key_mask, axis=-1, dtype=jnp.int32)
        return jax.nn.dot_product_attention(
            q, k, v, bias=None if bias is None else bias.astype(q.dtype), scale=1.0, is_causal=causal,
            key_value_seq_lengths=lengths, implementation="cudnn")
    return jax.nn.dot_product_attention(
        q, k, v, bias=bias, mask=mask, scale=1.0, is_causal=causal, implementation="xla")


def _attend_with_dropout(q, k, v, bias, mask, causal, rate, key):
    """Attention with dropout on the probabilities (as HF T5), differentiated by JAX."""
    probs = jax.nn.softmax(cpu_kernels.masked_logits(q, k, bias, mask, causal), axis=-1)
    probs = _dropout(probs, rate, key).astype(v.dtype)
    return jnp.einsum("bnts,bsnk->btnk", probs, v)


def _attention_block(cfg, p, x, kv_source, bias, key_mask, causal, keys):
    """Attention sublayer after its pre-norm: projections, attention, output projection, dropout."""
    project = _projection(cfg)
    b, t, _ = x.shape
    s = kv_source.shape[1]
    heads = (cfg.num_heads, cfg.d_kv)
    q = project(x, p["q"]).reshape(b, t, *heads)
    k = project(kv_source, p["k"]).reshape(b, s, *heads)
    v = project(kv_source, p["v"]).reshape(b, s, *heads)
    q = constrain(q, ("batch", "length", "heads", "kv"))
    k = constrain(k, ("batch", "length", "heads", "kv"))
    out = _attend(cfg, q, k, v, bias, key_mask, causal, keys[0])
    out = constrain(out, ("batch", "length", "heads", "kv")).reshape(b, t, cfg.inner_dim)
    return _dropout(project(out, p["o"]), cfg.dropout_rate, keys[1])


def _projection(cfg: ModelConfig):
    """x @ w with w cast to x's dtype; on CPU through mixed_matmul (bf16's fast kernel, float32 weight gradients)."""
    if attention_impl(cfg) == "cpu_kernels":
        return mixed_matmul.dense
    return lambda x, w: x @ w.astype(x.dtype)


def _mlp_block(cfg, p, x, keys):
    activation = ACTIVATIONS[cfg.activation]
    if keys[0] is None and attention_impl(cfg) == "cpu_kernels":
        weights = (p[name] for name in ("wi_0", "wi_1", "wo"))
        return _dropout(cpu_kernels.gated_mlp(activation, x, *weights), cfg.dropout_rate, keys[1])
    wi_0, wi_1, wo = (p[name].astype(x.dtype) for name in ("wi_0", "wi_1", "wo"))
    hidden = activation(x @ wi_0) * (x @ wi_1)
    hidden = constrain(hidden, ("batch", "length", "mlp"))
    hidden = _dropout(hidden, cfg.dropout_rate, keys[0])
    return _dropout(hidden @ wo, cfg.dropout_rate, keys[1])


def _layer_keys(key, layers: int, per_layer: int):
    """Per-layer dropout keys [layers, per_layer, 2], or None when deterministic."""
    if key is None:
        return None
    return jax.random.split(key, (layers, per_layer))


def _split(keys, n):
    return (None,) * n if keys is None else tuple(keys[i] for i in range(n))


def _encoder_layer(cfg, bias, mask, x, layer):
    p, keys = layer
    keys = _split(keys, 4)
    x = constrain(x, ("batch", "length", "embed"))
    h = rms_norm(x, p["attn_norm"], cfg.layer_norm_eps)
    x = x + _attention_block(cfg, p["attn"], h, h, bias, mask, False, keys[0:2])
    h = rms_norm(x, p["mlp_norm"], cfg.layer_norm_eps)
    return x + _mlp_block(cfg, p["mlp"], h, keys[2:4]), None


def _decoder_layer(cfg, bias, encoded, enc_mask, x, layer):
    p, keys = layer
    keys = _split(keys, 6)
    x = constrain(x, ("batch", "length", "embed"))
    h = rms_norm(x, p["self_attn_norm"], cfg.layer_norm_eps)
    x = x + _attention_block(cfg, p["self_attn"], h, h, bias, None, True, keys[0:2])
    h = rms_norm(x, p["cross_attn_norm"], cfg.layer_norm_eps)
    x = x + _attention_block(cfg, p["cross_attn"], h, encoded, None, enc_mask, False, keys[2:4])
    h = rms_norm(x, p["mlp_norm"], cfg.layer_norm_eps)
    return x + _mlp_block(cfg, p["mlp"], h, keys[4:6]), None


def _remat(cfg: ModelConfig, body):
    if cfg.remat == "none":
        return body
    policy = None if cfg.remat == "full" else jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    return jax.checkpoint(body, policy=policy, prevent_cse=False)  # prevent_cse is moot under scan


def _scan_layers(cfg, body, x, params, keys):
    x, _ = jax.lax.scan(_remat(cfg, body), x, (params, keys), unroll=cfg.scan_unroll)
    return x


def position_bias(cfg: ModelConfig, table, query_len: int, key_len: int, bidirectional: bool) -> jax.Array:
    """[1, heads, query_len, key_len] float32, computed once per stack and shared by all its layers."""
    # Buckets depend only on key - query: look up the T+S-1 distances once (a small constant
    # rather than a T*S one in the program), then spread them over the grid by index arithmetic.
    distances = np.arange(-(query_len - 1), key_len)
    buckets = relative_position_bucket(distances, bidirectional, cfg.relative_buckets, cfg.relative_max_distance)
    per_distance = jnp.take(table, jnp.asarray(buckets, jnp.int32), axis=0)  # [T+S-1, H]
    grid = jnp.arange(key_len)[None, :] - jnp.arange(query_len)[:, None] + (query_len - 1)
    bias = jnp.take(per_distance, grid, axis=0)  # [T, S, H]
    return jnp.transpose(bias, (2, 0, 1))[None].astype(jnp.float32)


def _layer_params(stack: dict, names) -> dict:
    return {name: stack[name] for name in names}


def _embed(cfg: ModelConfig, shared, tokens, key):
    x = jnp.take(shared, tokens, axis=0).astype(cfg.compute_dtype)
    return _dropout(constrain(x, ("batch", "length", "embed")), cfg.dropout_rate, key)


# Pure forward functions, jitted with the config static: eager calls reuse the compiled stack
# (an un-jitted scan would recompile its body on every call), and under an outer jit they inline.
@functools.partial(jax.jit, static_argnums=0)
def encode_tokens(cfg: ModelConfig, params: dict, tokens, mask, keys=None) -> jax.Array:
    """Embedding + encoder stack + final norm; `params` holds `shared` and `encoder`."""
    keys = (None,) * 3 if keys is None else keys
    p = params["encoder"]
    length = tokens.shape[1]
    bias = position_bias(cfg, p["relative_bias"], length, length, True)
    x = _embed(cfg, params["shared"], tokens, keys[0])
    layers = _layer_params(p, ("attn", "mlp", "attn_norm", "mlp_norm"))
    x = _scan_layers(cfg, functools.partial(_encoder_layer, cfg, bias, mask), x, layers,
                     _layer_keys(keys[1], cfg.num_encoder_layers, 4))
    return _dropout(rms_norm(x, p["final_norm"], cfg.layer_norm_eps), cfg.dropout_rate, keys[2])


@functools.partial(jax.jit, static_argnums=0)
def decode_logits(cfg: ModelConfig, params: dict, encoded, encoder_mask, decoder_inputs, keys=None) -> jax.Array:
    """Decoder stack + head -> float32 logits; `params` holds `shared`, `decoder` and `lm_head`."""
    keys = (None,) * 3 if keys is None else keys
    p = params["decoder"]
    length = decoder_inputs.shape[1]
    bias = position_bias(cfg, p["relative_bias"], length, length, False)
    x = _embed(cfg, params["shared"], decoder_inputs, keys[0])
    layers = _layer_params(p, ("self_attn", "cross_attn", "mlp", "self_attn_norm", "cross_attn_norm", "mlp_norm"))
    body = functools.partial(_decoder_layer, cfg, bias, encoded.astype(cfg.compute_dtype), encoder_mask)
    x = _scan_layers(cfg, body, x, layers, _layer_keys(keys[1], cfg.num_decoder_layers, 6))
    x = _dropout(rms_norm(x, p["final_norm"], cfg.layer_norm_eps), cfg.dropout_rate, keys[2])
    if cfg.tie_embeddings:
        # A tied output embedding needs the d_model**-0.5 rescale (as in the original T5).
        x = x * (cfg.d_model ** -0.5)
        head = params["shared"].T
    else:
        head = params["lm_head"]
    logits = jnp.einsum("btd,dv->btv", x, head.astype(x.dtype), preferred_element_type=jnp.float32)
    return constrain(logits, ("batch", "length", "vocab"))


# ----------------------------------------------------------------------------- modules

class Encoder(nnx.Module):
    """Parameters of the encoder stack (layers stacked on axis 0)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        layers = cfg.num_encoder_layers
        self.attn = Attention(cfg, layers, rngs)
        self.attn_norm = _norm(rngs, layers, cfg.d_model)
        self.mlp = Mlp(cfg, layers, rngs)
        self.mlp_norm = _norm(rngs, layers, cfg.d_model)
        self.relative_bias = _relative_bias(cfg, rngs)
        self.final_norm = _norm(rngs, None, cfg.d_model)


class Decoder(nnx.Module):
    """Parameters of the decoder stack (layers stacked on axis 0)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        layers = cfg.num_decoder_layers
        self.self_attn = Attention(cfg, layers, rngs)
        self.self_attn_norm = _norm(rngs, layers, cfg.d_model)
        self.cross_attn = Attention(cfg, layers, rngs)
        self.cross_attn_norm = _norm(rngs, layers, cfg.d_model)
        self.mlp = Mlp(cfg, layers, rngs)
        self.mlp_norm = _norm(rngs, layers, cfg.d_model)
        self.relative_bias = _relative_bias(cfg, rngs)
        self.final_norm = _norm(rngs, None, cfg.d_model)


def _relative_bias(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Param:
    std = (2.0 / (cfg.relative_buckets + cfg.num_heads)) ** 0.5  # T5X: variance scaling 1.0, fan_avg
    return _param(rngs, (cfg.relative_buckets, cfg.num_heads), std, ("relpos", "heads"))


class T5(nnx.Module):
    """T5 v1.1 encoder-decoder: `model(encoder_tokens, decoder_inputs, encoder_mask)` -> float32 logits."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.shared = _param(rngs, (cfg.vocab_size, cfg.d_model), 1.0, ("vocab", "embed"))
        self.encoder = Encoder(cfg, rngs)
        self.decoder = Decoder(cfg, rngs)
        if not cfg.tie_embeddings:
            # T5X's logits_dense: fan_in variance scaling (not HF's std 1.0), see _param above.
            self.lm_head = _param(rngs, (cfg.d_model, cfg.vocab_size), cfg.d_model ** -0.5, ("embed", "vocab"))
        # Dropout draws from its own stream (falls back to `default` when not given one).
        self.rngs = nnx.Rngs(dropout=rngs.dropout())

    def _dropout_keys(self, deterministic: bool):
        if deterministic or self.cfg.dropout_rate == 0.0:
            return None
        # Masks come from XLA's RngBitGenerator ('rbg'): far cheaper to compile and run than
        # threefry for activation-sized draws; only the seed is drawn from the NNX stream.
        seed = jax.random.bits(self.rngs.dropout(), (4,), jnp.uint32)
        return tuple(jax.random.split(jax.random.wrap_key_data(seed, impl="rbg"), 3))

    def _params(self, *names) -> dict:
        return {name: nnx.to_pure_dict(nnx.state(getattr(self, name), nnx.Param))
                if isinstance(getattr(self, name), nnx.Module) else getattr(self, name)[...] for name in names}

    def encode(self, tokens, mask=None, deterministic: bool = True) -> jax.Array:
        """Encoder output [B, L, D] in the compute dtype; mask defaults to tokens != pad."""
        tokens = jnp.asarray(tokens)
        mask = tokens != self.cfg.pad_id if mask is None else jnp.asarray(mask, bool)
        params = self._params("shared", "encoder")
        return encode_tokens(self.cfg, params, tokens, mask, self._dropout_keys(deterministic))

    def decode(self, encoded, encoder_mask, decoder_inputs, deterministic: bool = True) -> jax.Array:
        """Logits float32 [B, Ld, V] for decoder inputs (targets shifted right, starting with pad)."""
        _check_batches(encoded.shape[0], decoder_inputs)
        names = ("shared", "decoder") if self.cfg.tie_embeddings else ("shared", "decoder", "lm_head")
        return decode_logits(self.cfg, self._params(*names), encoded, jnp.asarray(encoder_mask, bool),
                             jnp.asarray(decoder_inputs), self._dropout_keys(deterministic))

    def __call__(self, encoder_tokens, decoder_inputs, encoder_mask=None, deterministic: bool = True):
        encoder_tokens = jnp.asarray(encoder_tokens)
        _check_batches(encoder_tokens.shape[0], decoder_inputs)
        if encoder_mask is None:
            encoder_mask = encoder_tokens != self.cfg.pad_id
        encoded = self.encode(encoder_tokens, encoder_mask, deterministic)
        return self.decode(encoded, encoder_mask, decoder_inputs, deterministic)


def _check_batches(encoder_batch: int, decoder_inputs) -> None:
    if np.shape(decoder_inputs)[0] != encoder_batch:
        raise ModelConfigError(
            f"decoder_inputs have batch {np.shape(decoder_inputs)[0]} but the encoder input has "
            f"{encoder_batch}; pass one decoder row per encoder row")


# ----------------------------------------------------------------------------- utilities

def count_params(cfg: ModelConfig) -> int:
    """Number of parameters, computed abstractly (nothing is allocated)."""
    abstract = nnx.eval_shape(lambda: T5(cfg, rngs=nnx.Rngs(0)))
    return sum(math.prod(v.shape) for v in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def _flat_variables(model: T5) -> dict[str, nnx.Variable]:
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {".".join(str(part) for part in path): var for path, var in flat}


def flat_params(model: T5) -> dict[str, np.ndarray]:
    """Parameters as numpy arrays under canonical names (docs/interfaces.md); kernels (in, out)."""
    return {name: np.asarray(jax.device_get(var.get_value())) for name, var in _flat_variables(model).items()}


def load_flat_params(model: T5, flat: Mapping[str, Any]) -> T5:
    """Load canonical-name arrays into the model in place (dtype/sharding kept); returns the model."""
    variables = _flat_variables(model)
    missing = sorted(set(variables) - set(flat))
    unexpected = sorted(set(flat) - set(variables))
    if missing or unexpected:
        raise ModelConfigError(
            f"load_flat_params: names do not match the model: missing {missing[:8]}"
            f"{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    for name, var in variables.items():
        current = var.get_value()
        array = np.asarray(flat[name])
        if array.shape != tuple(current.shape):
            raise ModelConfigError(
                f"load_flat_params: tensor {name!r} has shape {array.shape} but the model expects "
                f"{tuple(current.shape)}; check the model config matches the checkpoint"
            )
        sharding = getattr(current, "sharding", None)
        value = jnp.asarray(array, dtype=current.dtype)
        var.set_value(jax.device_put(value, sharding) if sharding is not None else value)
    return model
