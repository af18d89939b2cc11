"""Import published HF T5 checkpoints (Ankh, Ankh3) into our T5, and export ours back.

`import_hf` reads config.json, the weights (safetensors, sharded or not, or
pytorch_model.bin when torch is installed) and the tokenizer of a HF directory;
`save_pretrained_dir` / `load_pretrained_dir` keep the result as an orbax directory the
runner starts from; `export_hf` writes a directory that `transformers` loads, and `export_run`
does so for a run trained here (its workdir), with a model card.

    python -m ankh3.hf_checkpoint --hf_dir=HF_DIR --out=DIR
    python -m ankh3.hf_checkpoint --to_hf --ckpt=WORKDIR [--step=N] --out=HF_DIR   # a trained run, with a model card
    python -m ankh3.hf_checkpoint --to_hf --ckpt=DIR --out=HF_DIR                  # an imported checkpoint
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import struct
import sys

import numpy as np

from ankh3 import names
from ankh3.errors import UserError
from ankh3.tokenizer import TokenizeError, Tokenizer

# Files that make up a HF tokenizer; whichever exist are copied along with the weights.
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json")
MODEL_CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
log = logging.getLogger(__name__)

# HF tensors that duplicate `shared` or that HF itself never uses.
_IGNORED = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
            "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight")
_EMBEDDING_ALIASES = ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


class ConversionError(UserError, ValueError):
    """A checkpoint cannot be converted; the message says what, where and how to fix it."""


# ---- config ----------------------------------------------------------------------------
def read_hf_config(hf_dir: str) -> dict:
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isdir(hf_dir):
        raise ConversionError(f"{hf_dir}: no such directory; pass a HF T5 checkpoint directory")
    if not os.path.exists(path):
        raise ConversionError(f"{hf_dir}: no config.json; pass a HF T5 checkpoint directory")
    try:
        with open(path) as f:
            hf = json.load(f)
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None
    archs = hf.get("architectures") or []
    if hf.get("model_type") != "t5" or any(a != "T5ForConditionalGeneration" for a in archs):
        raise ConversionError(
            f"{path}: model_type {hf.get('model_type')!r}, architectures {archs}; "
            "only T5ForConditionalGeneration (model_type 't5') checkpoints can be converted")
    return hf


def scales_decoder_output(hf: dict) -> bool:
    """Whether HF multiplies the decoder output by d_model**-0.5 before the head.

    transformers 4 ties that to `tie_word_embeddings`; transformers 5 always ties the
    weights in memory and records the scaling in `scale_decoder_outputs`.
    """
    if "scale_decoder_outputs" in hf:
        return bool(hf["scale_decoder_outputs"])
    return hf.get("tie_word_embeddings", True) is not False


def model_config_from_hf(hf: dict):
    """HF config.json -> ModelConfig, with the head tying that HF actually computes."""
    from ankh3.model import ModelConfig, ModelConfigError

    try:
        return ModelConfig.from_hf_config(hf, tie_embeddings=scales_decoder_output(hf))
    except KeyError as e:
        raise ConversionError(f"config.json: missing {e.args[0]!r}; a T5 config needs it") from None
    except (ModelConfigError, TypeError, ValueError) as e:
        raise ConversionError(f"config.json: {e}") from None


def hf_config_from_model(cfg, tokenizer: Tokenizer | None) -> dict:
    """ModelConfig -> HF config.json contents, with the tokenizer's special ids."""
    hf = cfg.to_hf_config()
    # transformers 5 reads the head scaling from this key when present (see scales_decoder_output).
    hf["scale_decoder_outputs"] = bool(cfg.tie_embeddings)
    if tokenizer is not None:
        hf.update(pad_token_id=tokenizer.pad_id, eos_token_id=tokenizer.eos_id,
                  decoder_start_token_id=tokenizer.pad_id)
    return hf


# ---- name mapping ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Entry:
    """One canonical parameter and the HF tensor(s) it comes from."""
    name: str                 # canonical flat name
    hf: str                   # HF name; '{i}' is the layer index for stacked entries
    layers: int = 0           # 0: a single tensor; n: n per-layer tensors stacked on axis 0
    transpose: bool = False   # HF Linear stores (out, in); ours is (in, out)


def _layer_entries(stack: str, ours: str, hf_layer: str, kind: str, n: int) -> list[_Entry]:
    prefix = f"{stack}.block.{{i}}.layer.{hf_layer}"
    if kind == "attn":
        attn = "SelfAttention" if hf_layer == "0" else "EncDecAttention"
        return [_Entry(f"{stack}.{ours}.{p}", f"{prefix}.{attn}.{p}.weight", n, True) for p in "qkvo"] + [
            _Entry(f"{stack}.{ours}_norm", f"{prefix}.layer_norm.weight", n)]
    return [_Entry(f"{stack}.mlp.{p}", f"{prefix}.DenseReluDense.{p}.weight", n, True)
            for p in ("wi_0", "wi_1", "wo")] + [_Entry(f"{stack}.mlp_norm", f"{prefix}.layer_norm.weight", n)]


def name_table(cfg) -> list[_Entry]:
    """Every canonical parameter of `cfg` with its HF source."""
    ne, nd = cfg.num_encoder_layers, cfg.num_decoder_layers
    rel = "block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    table = [
        _Entry("shared", "shared.weight"),
        _Entry("encoder.relative_bias", f"encoder.{rel}"),
        _Entry("encoder.final_norm", "encoder.final_layer_norm.weight"),
        _Entry("decoder.relative_bias", f"decoder.{rel}"),
        _Entry("decoder.final_norm", "decoder.final_layer_norm.weight"),
        *_layer_entries("encoder", "attn", "0", "attn", ne),
        *_layer_entries("encoder", "mlp", "1", "mlp", ne),
        *_layer_entries("decoder", "self_attn", "0", "attn", nd),
        *_layer_entries("decoder", "cross_attn", "1", "attn", nd),
        *_layer_entries("decoder", "mlp", "2", "mlp", nd),
    ]
    if not cfg.tie_embeddings:
        table.append(_Entry("lm_head", "lm_head.weight", transpose=True))
    return table


def hf_shapes(cfg) -> dict[str, tuple[int, ...]]:
    """Expected shape of every HF tensor for `cfg` (HF layout)."""
    d, f, v, hk = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.num_heads * cfg.d_kv
    by_leaf = {"q": (hk, d), "k": (hk, d), "v": (hk, d), "o": (d, hk), "wi_0": (f, d), "wi_1": (f, d),
               "wo": (d, f), "layer_norm": (d,), "final_layer_norm": (d,), "shared": (v, d), "lm_head": (v, d),
               "relative_attention_bias": (cfg.relative_buckets, cfg.num_heads)}
    shapes = {}
    for e in name_table(cfg):
        leaf = e.hf.split(".")[-2]  # 'encoder.block.{i}.layer.1.DenseReluDense.wo.weight' -> 'wo'
        for i in range(max(e.layers, 1)):
            shapes[e.hf.format(i=i)] = by_leaf[leaf]
    return shapes


def hf_to_flat(cfg, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """HF state dict (numpy) -> canonical flat params (float32), checking every shape."""
    tensors = dict(tensors)
    for alias in _EMBEDDING_ALIASES:  # safetensors keeps one name of a shared tensor
        if alias in tensors:
            tensors.setdefault("shared.weight", tensors[alias])
            break
    if cfg.tie_embeddings is False and "lm_head.weight" not in tensors and "shared.weight" in tensors:
        tensors["lm_head.weight"] = tensors["shared.weight"]  # transformers 5 drops a tied head
    shapes = hf_shapes(cfg)
    for name, want in shapes.items():
        if name not in tensors:
            raise ConversionError(f"weights: tensor {name!r} is missing (expected shape {want}); "
                                  "the checkpoint does not match its config.json")
        got = tuple(tensors[name].shape)
        if got != want:
            raise ConversionError(f"weights: tensor {name!r} has shape {got}, config.json implies {want}")
    unknown = sorted(set(tensors) - set(shapes) - set(_IGNORED) - {"lm_head.weight"})
    if unknown:
        raise ConversionError(f"weights: unexpected tensor {unknown[0]!r} (and {len(unknown) - 1} more); "
                              "this is not a gated T5 of the shape in config.json")
    flat = {}
    for e in name_table(cfg):
        parts = [_as_float32(tensors[e.hf.format(i=i)]) for i in range(max(e.layers, 1))]
        parts = [p.T if e.transpose else p for p in parts]
        flat[e.name] = np.ascontiguousarray(np.stack(parts) if e.layers else parts[0])
    return flat


def flat_to_hf(cfg, flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Canonical flat params -> HF state dict (numpy, HF layout)."""
    tensors = {}
    for e in name_table(cfg):
        if e.name not in flat:
            raise ConversionError(f"parameters: {e.name!r} is missing; the checkpoint does not match its model config")
        value = np.asarray(flat[e.name])
        parts = list(value) if e.layers else [value]
        for i, p in enumerate(parts):
            tensors[e.hf.format(i=i)] = np.ascontiguousarray(p.T if e.transpose else p)
    shapes = hf_shapes(cfg)
    for name, t in tensors.items():
        if tuple(t.shape) != shapes[name]:
            raise ConversionError(f"parameters: {name!r} has shape {tuple(t.shape)}, model config implies {shapes[name]}")
    return tensors


def _as_float32(x: np.ndarray) -> np.ndarray:
    return np.array(x, dtype=np.float32)  # a copy: the source may be a memory-mapped file


# ---- weight files ----------------------------------------------------------------------
_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
              "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """A .safetensors file -> numpy arrays, bfloat16 included (safetensors.numpy cannot)."""
    import ml_dtypes

    dtypes = dict(_ST_DTYPES, BF16=ml_dtypes.bfloat16)
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
    except (OSError, struct.error, ValueError) as e:
        raise ConversionError(f"{path}: not a readable safetensors file ({e})") from None
    if not isinstance(header, dict):
        raise ConversionError(f"{path}: not a readable safetensors file (its header is not a JSON object)")
    data = np.memmap(path, np.uint8, mode="r", offset=8 + n) if os.path.getsize(path) > 8 + n else np.zeros(0, np.uint8)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (lo, hi) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ConversionError(f"{path}: tensor {name!r} has no valid dtype, shape and data_offsets in the "
                                  "header; the file is corrupt") from None
        if dtype not in dtypes:
            raise ConversionError(f"{path}: tensor {name!r} has dtype {dtype}, which is not supported")
        if hi > len(data):
            raise ConversionError(f"{path}: tensor {name!r} ends at byte {hi} of the data but the file holds "
                                  f"{len(data)}; the file is truncated: copy or download it again")
        try:
            out[name] = np.frombuffer(data[lo:hi], dtypes[dtype]).reshape(shape)
        except ValueError as e:
            raise ConversionError(f"{path}: tensor {name!r} does not match its shape {list(shape)} ({e}); "
                                  "the file is corrupt") from None
    return out


def _read_torch_bin(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ConversionError(f"{path}: reading pytorch_model.bin needs torch; install it or convert the "
                              "checkpoint to model.safetensors") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- torch raises many kinds for a damaged file
        raise ConversionError(f"{path}: not a readable pytorch_model.bin ({type(e).__name__}); the file is corrupt "
                              "or truncated: copy or download it again") from None
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}


def read_hf_weights(hf_dir: str) -> dict[str, np.ndarray]:
    """All tensors of a HF directory: model.safetensors, its sharded index, or pytorch_model.bin."""
    for single, index, reader in (("model.safetensors", "model.safetensors.index.json", read_safetensors),
                                  ("pytorch_model.bin", "pytorch_model.bin.index.json", _read_torch_bin)):
        if os.path.exists(os.path.join(hf_dir, single)):
            return reader(os.path.join(hf_dir, single))
        if os.path.exists(os.path.join(hf_dir, index)):
            with open(os.path.join(hf_dir, index)) as f:
                shards = sorted(set(json.load(f).get("weight_map", {}).values()))
            tensors = {}
            for shard in shards:
                path = os.path.join(hf_dir, shard)
                if not os.path.exists(path):
                    raise ConversionError(f"{hf_dir}: shard {shard} listed in {index} is missing")
                tensors.update(reader(path))
            return tensors
    raise ConversionError(f"{hf_dir}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin; "
                          "the directory holds no weights")


def write_safetensors(path: str, tensors: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path, metadata={"format": "pt"})


# ---- tokenizer -------------------------------------------------------------------------
def read_tokenizer(hf_dir: str, vocab_size: int) -> Tokenizer:
    """The checkpoint's own tokenizer, checked against the embedding size.

    HF pads embedding tables beyond the tokenizer, so fewer tokens than rows is fine;
    the tokenizer is padded to `vocab_size` so that every model id decodes.
    """
    try:
        tok = Tokenizer.from_hf_dir(hf_dir, vocab_size)
    except TokenizeError as e:
        raise ConversionError(f"tokenizer: {e}") from None
    if len(tok) > vocab_size:
        raise ConversionError(f"{hf_dir}: tokenizer has {len(tok)} tokens but the embedding has {vocab_size} rows; "
                              "the tokenizer files do not belong to these weights")
    return tok


def copy_tokenizer_files(src_dir: str, out_dir: str) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if os.path.exists(os.path.join(src_dir, name)):
            shutil.copyfile(os.path.join(src_dir, name), os.path.join(out_dir, name))
            copied.append(name)
    return copied


def write_tokenizer_json(tok: Tokenizer, out_dir: str) -> None:
    """A per-character WordLevel tokenizer.json for a tokenizer that has no HF files."""
    vocab = {p: i for i, p in enumerate(tok.pieces) if p is not None}
    specials = [p for p in vocab if not (len(p) == 1 and p.isalpha())]
    spec = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": vocab[p], "content": p, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for p in specials],
        "normalizer": None,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "."}, "behavior": "Isolated", "invert": False},
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"Sequence": {"id": "A", "type_id": 0}},
                                      {"SpecialToken": {"id": "</s>", "type_id": 0}}],
                           "pair": [{"Sequence": {"id": "A", "type_id": 0}},
                                    {"SpecialToken": {"id": "</s>", "type_id": 0}},
                                    {"Sequence": {"id": "B", "type_id": 0}},
                                    {"SpecialToken": {"id": "</s>", "type_id": 0}}],
                           "special_tokens": {"</s>": {"id": "</s>", "ids": [tok.eos_id], "tokens": ["</s>"]}}},
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }
    with open(os.path.join(out_dir, "tokenizer.json"), "w") as f:
        json.dump(spec, f)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>", "eos_token": "</s>",
                   "unk_token": "<unk>", "model_max_length": 1_000_000}, f)


def _place_tokenizer(tokenizer_src, out_dir: str) -> None:
    if tokenizer_src is None:
        return
    if isinstance(tokenizer_src, Tokenizer):
        write_tokenizer_json(tokenizer_src, out_dir)
    elif not copy_tokenizer_files(tokenizer_src, out_dir):
        raise ConversionError(f"{tokenizer_src}: no tokenizer files ({', '.join(TOKENIZER_FILES)}) to copy")


# ---- import / export -------------------------------------------------------------------
def import_hf(hf_dir: str):
    """HF T5 directory -> (ModelConfig, canonical flat params, Tokenizer)."""
    hf = read_hf_config(hf_dir)
    tensors = read_hf_weights(hf_dir)
    scaled = scales_decoder_output(hf)
    head = tensors.get("lm_head.weight")
    shared = next((tensors[a] for a in _EMBEDDING_ALIASES if a in tensors), None)
    # A scaled head that differs from the embedding only occurs in hand-edited files: keep
    # it as an untied head with the scale folded in, which computes the same logits.
    fold_scale = scaled and head is not None and shared is not None and not np.array_equal(head, shared)
    cfg = model_config_from_hf(hf)
    if fold_scale:
        cfg = dataclasses.replace(cfg, tie_embeddings=False)
    flat = hf_to_flat(cfg, tensors)
    if fold_scale:
        flat["lm_head"] = flat["lm_head"] * np.float32(cfg.d_model ** -0.5)
    tokenizer = read_tokenizer(hf_dir, cfg.vocab_size)
    return cfg, flat, tokenizer


def export_hf(cfg, flat: dict[str, np.ndarray], out_dir: str, tokenizer_src=None) -> None:
    """Write config.json + model.safetensors (+ tokenizer files) that transformers loads."""
    os.makedirs(out_dir, exist_ok=True)
    tensors = flat_to_hf(cfg, flat)
    tok = tokenizer_src if isinstance(tokenizer_src, Tokenizer) else None
    if isinstance(tokenizer_src, str):
        tok = read_tokenizer(tokenizer_src, cfg.vocab_size)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_config_from_model(cfg, tok), f, indent=2)
    write_safetensors(os.path.join(out_dir, "model.safetensors"), tensors)
    _place_tokenizer(tokenizer_src, out_dir)


def default_tokenizer(vocab_size: int, out_dir: str) -> Tokenizer:
    """The tokenizer this repository trains with (`Tokenizer.default`), for weights saved without one."""
    try:
        tok = Tokenizer.default(vocab_size)
    except TokenizeError as e:
        raise ConversionError(f"{out_dir}: no tokenizer given and the default one does not fit ({e}); "
                              "pass tokenizer_src (a HF directory or a Tokenizer)") from None
    log.warning("%s: no tokenizer given; writing the default tokenizer of vocab_size %d (ankh3.tokenizer "
                "Tokenizer.default, the ids of models trained by launch/run.py)", out_dir, vocab_size)
    return tok


def save_pretrained_dir(out_dir: str, cfg, flat: dict[str, np.ndarray], tokenizer_src=None) -> None:
    """Orbax params + model_config.json + tokenizer files: what `--config.init_from=DIR` reads.

    Without `tokenizer_src` the default tokenizer of cfg.vocab_size is written (and a warning logged),
    so that the directory always states the ids its weights use instead of a reader guessing them.
    """
    import orbax.checkpoint as ocp

    out_dir = os.path.abspath(out_dir)
    if os.path.exists(os.path.join(out_dir, PARAMS_DIR)):
        raise ConversionError(f"{out_dir}: already holds a converted checkpoint; choose a new output directory")
    os.makedirs(out_dir, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(out_dir, PARAMS_DIR), {k: np.asarray(v) for k, v in flat.items()})
    with open(os.path.join(out_dir, MODEL_CONFIG_FILE), "w") as f:
        json.dump(dataclasses.asdict(cfg), f, indent=2)
    _place_tokenizer(tokenizer_src if tokenizer_src is not None else default_tokenizer(cfg.vocab_size, out_dir),
                     out_dir)


def read_pretrained_dir(ckpt_dir: str, **overrides):
    """Orbax directory from `save_pretrained_dir` -> (ModelConfig, flat params as numpy).

    `overrides` change run-time fields of the saved config (dtype, remat, attention, ...).
    """
    import orbax.checkpoint as ocp
    from ankh3.model import ModelConfig, ModelConfigError

    ckpt_dir = os.path.abspath(ckpt_dir)
    cfg_path = os.path.join(ckpt_dir, MODEL_CONFIG_FILE)
    if not os.path.exists(cfg_path) or not os.path.isdir(os.path.join(ckpt_dir, PARAMS_DIR)):
        raise ConversionError(f"{ckpt_dir}: no {MODEL_CONFIG_FILE} and {PARAMS_DIR}/; pass a directory written "
                              "by `python -m ankh3.hf_checkpoint --hf_dir=... --out=...`")
    with open(cfg_path) as f:
        fields = json.load(f)
    try:
        cfg = ModelConfig(**(fields | overrides))
    except (TypeError, ModelConfigError) as e:
        raise ConversionError(f"{cfg_path}: does not match this version's ModelConfig ({e})") from None
    with ocp.StandardCheckpointer() as ckptr:
        flat = ckptr.restore(os.path.join(ckpt_dir, PARAMS_DIR))
    return cfg, {k: np.asarray(v) for k, v in flat.items()}


def load_pretrained_dir(ckpt_dir: str, seed: int = 0, **overrides):
    """Orbax directory -> (ModelConfig, T5 holding the saved params, Tokenizer).

    `seed` only seeds the dropout stream; `overrides` as in `read_pretrained_dir`.
    """
    from flax import nnx
    from ankh3.model import T5, load_flat_params

    cfg, flat = read_pretrained_dir(ckpt_dir, **overrides)
    if not any(os.path.exists(os.path.join(ckpt_dir, name)) for name in TOKENIZER_FILES[:2]):
        # Not guessed: ids that differ from the training tokenizer's would feed the model wrong tokens.
        raise ConversionError(f"{os.path.abspath(ckpt_dir)}: no tokenizer.json or spiece.model (saved by an older "
                              "version without one); add the tokenizer the weights were trained with, e.g. for a "
                              "model trained here: python -c \"from ankh3.hf_checkpoint import write_tokenizer_json; "
                              f"from ankh3.tokenizer import Tokenizer; write_tokenizer_json(Tokenizer.default("
                              f"{cfg.vocab_size}), '{ckpt_dir}')\"")
    model = T5(cfg, rngs=nnx.Rngs(seed))
    load_flat_params(model, flat)
    return cfg, model, read_tokenizer(ckpt_dir, cfg.vocab_size)


# ---- a training run's workdir (launch/run.py) ------------------------------------------
# The workdir's config (JSON of the resolved ConfigDict) and orbax steps of {state: {step, params, rest,
# opt_state}, data}, as ankh3.names calls them.
RUN_CONFIG_FILE, RUN_CHECKPOINTS_DIR = names.CONFIG_FILE, names.CHECKPOINTS


@dataclasses.dataclass
class RunCheckpoint:
    """One checkpoint of a training run, read for export: what the model card and the HF files need."""

    workdir: str
    step: int              # optimizer updates (the checkpoint directory counts micro-batches)
    config: dict           # WORKDIR/config.json
    model_cfg: object      # ModelConfig
    flat: dict             # canonical flat params, numpy float32
    tokenizer: Tokenizer
    tokenizer_src: object  # what export_hf copies: the init_from directory, or the Tokenizer itself


def is_run_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, RUN_CONFIG_FILE)) and os.path.isdir(os.path.join(path, RUN_CHECKPOINTS_DIR))


def read_run_config(workdir: str) -> dict:
    path = os.path.join(workdir, RUN_CONFIG_FILE)
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: cannot read the run config ({e}); pass --ckpt=WORKDIR of a run") from None
    if not isinstance(config, dict) or not {"model", "optimizer"} <= set(config):
        raise ConversionError(f"{path}: has no model and optimizer sections, so it is not a config written by "
                              "launch/run.py; pass --ckpt=WORKDIR of a run")
    return config


def _run_manager(workdir: str):
    import orbax.checkpoint as ocp

    # PyTree (not Standard) handler: it restores a part of the saved tree, here the params alone.
    return ocp.CheckpointManager(
        os.path.join(workdir, RUN_CHECKPOINTS_DIR), options=ocp.CheckpointManagerOptions(create=False),
        item_handlers={"state": ocp.PyTreeCheckpointHandler(), "data": ocp.JsonCheckpointHandler()})


def read_run_checkpoint_steps(workdir: str) -> list[int]:
    """The optimizer steps of the checkpoints a run's workdir keeps, oldest first."""
    grad_accum = int(read_run_config(workdir)["optimizer"].get("grad_accum", 1))
    with _run_manager(workdir) as manager:
        return [s // grad_accum for s in sorted(manager.all_steps())]


def read_run_params(workdir: str, step: int | None = None, grad_accum: int = 1) -> tuple[int, dict[str, np.ndarray]]:
    """(optimizer step, canonical flat params) of a run's checkpoint at `step` (default: the latest).

    Only the parameters are read (as numpy), not the optimizer state, so no model or optimizer is built.
    """
    import jax
    import orbax.checkpoint as ocp

    with _run_manager(workdir) as manager:
        saved = sorted(manager.all_steps())
        if not saved:
            raise ConversionError(f"{workdir}/{RUN_CHECKPOINTS_DIR}: no checkpoint; train the run first "
                                  "(python launch/run.py ... --workdir=WORKDIR)")
        available = ", ".join(str(s // grad_accum) for s in saved)
        saved_step = saved[-1] if step is None else step * grad_accum
        if saved_step not in saved:
            raise ConversionError(f"{workdir}: no checkpoint at step {step}; it holds steps {available} "
                                  "(omit --step for the latest)")
        where = f"{workdir}/{RUN_CHECKPOINTS_DIR}/{saved_step}"
        try:
            params = manager.item_metadata(saved_step)["state"]["params"]
            item = {"params": jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), params)}
            restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
            restored = manager.restore(saved_step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
                item=item, restore_args=restore_args, partial_restore=True)))
        except Exception as e:  # noqa: BLE001 -- orbax and tensorstore raise many kinds for damaged files
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            others = ", ".join(str(s // grad_accum) for s in saved if s != saved_step)
            fix = f"pass --step= of another one ({others})" if others else "no other checkpoint is kept"
            raise ConversionError(f"{where}: cannot read the parameters ({type(e).__name__}: {first}); the "
                                  f"checkpoint is damaged: {fix}") from None
    flat = {".".join(str(k.key) for k in path[:-1]): np.asarray(leaf, np.float32)  # path ends in 'value'
            for path, leaf in jax.tree_util.tree_flatten_with_path(restored["state"]["params"])[0]}
    return saved_step // grad_accum, flat


def run_tokenizer(config: dict, vocab_size: int):
    """(Tokenizer, what export_hf copies) of a run: its init_from directory's tokenizer, else the default."""
    init_from = config.get("init_from") or ""
    if init_from:
        if not any(os.path.exists(os.path.join(init_from, n)) for n in TOKENIZER_FILES[:2]):
            raise ConversionError(f"the run started from {init_from}, which no longer holds its tokenizer "
                                  "(tokenizer.json or spiece.model); restore that directory to export the run")
        return read_tokenizer(init_from, vocab_size), init_from
    tok = Tokenizer.default(vocab_size)
    return tok, tok


def read_run(workdir: str, step: int | None = None) -> RunCheckpoint:
    """A run's workdir (config.json + checkpoints/) -> its checkpoint at `step` (default: the latest)."""
    from ankh3.config import model_config

    workdir = os.path.abspath(workdir)
    config = read_run_config(workdir)
    try:
        model_cfg = dataclasses.replace(model_config(config["model"]), dtype="float32")
    except UserError as e:
        raise ConversionError(f"{workdir}/{RUN_CONFIG_FILE}: {e}") from None
    grad_accum = int(config["optimizer"].get("grad_accum", 1))
    step, flat = read_run_params(workdir, step, grad_accum)
    tokenizer, tokenizer_src = run_tokenizer(config, model_cfg.vocab_size)
    return RunCheckpoint(workdir, step, config, model_cfg, flat, tokenizer, tokenizer_src)


def export_run(workdir: str, out_dir: str, step: int | None = None) -> RunCheckpoint:
    """A trained run -> a HF directory (config.json, model.safetensors, tokenizer, README.md model card)."""
    from ankh3.model_card import write_model_card

    run = read_run(workdir, step)
    check_export_dir(out_dir)
    export_hf(run.model_cfg, run.flat, out_dir, run.tokenizer_src)
    write_model_card(out_dir, run)
    return run


def check_export_dir(out_dir: str) -> None:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConversionError(f"--out={out_dir} is a file; give a directory")
    if os.path.exists(os.path.join(out_dir, "model.safetensors")):
        raise ConversionError(f"--out={out_dir} already holds an export (model.safetensors); choose a new "
                              "directory or delete it")


# ---- command line ----------------------------------------------------------------------
EXAMPLES = (
    "python -m ankh3.hf_checkpoint --hf_dir=path/to/ankh3-large --out=ckpt/ankh3_large   # HF -> orbax",
    "python -m ankh3.hf_checkpoint --to_hf --ckpt=runs/base/ankh3-s0 --out=hf/ankh3-s0   # a trained run -> HF",
    "python -m ankh3.hf_checkpoint --to_hf --ckpt=runs/base/ankh3-s0 --step=400 --out=hf/step400",
    "python -m ankh3.hf_checkpoint --to_hf --ckpt=ckpt/ankh3_large --out=hf/ankh3_large  # an import, back to HF",
)


def main(argv: list[str] | None = None) -> int:
    from ankh3.command_line import command_parser, main_guard

    parser = command_parser("python -m ankh3.hf_checkpoint", __doc__, EXAMPLES)
    parser.add_argument("--hf_dir", help="HF T5 checkpoint directory to import")
    parser.add_argument("--to_hf", action="store_true", help="export --ckpt to a HF directory instead")
    parser.add_argument("--ckpt", help="with --to_hf: a run's workdir (config.json + checkpoints/) or a "
                                       "directory written by an import")
    parser.add_argument("--step", type=int, help="with --to_hf of a run: the checkpoint's step (default: the latest)")
    parser.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args(argv)
    with main_guard():
        print(convert(args), flush=True)
    return 0


def convert(args) -> str:
    """What main does once the flags parse; returns the line to print."""
    if not args.to_hf:
        if not args.hf_dir:
            raise ConversionError("pass --hf_dir=DIR (a HF T5 checkpoint), or --to_hf --ckpt=DIR")
        cfg, flat, _ = import_hf(args.hf_dir)
        save_pretrained_dir(args.out, cfg, flat, args.hf_dir)
        return f"wrote {args.out}"
    if not args.ckpt:
        raise ConversionError("--to_hf needs --ckpt=DIR (a run's workdir or a directory written by an import)")
    if is_run_dir(args.ckpt):
        run = export_run(args.ckpt, args.out, args.step)
        return f"wrote {args.out} (step {run.step} of {run.workdir}, with README.md)"
    if args.step is not None:
        raise ConversionError(f"--step applies to a run's workdir; {args.ckpt} has no {RUN_CONFIG_FILE} and "
                              f"{RUN_CHECKPOINTS_DIR}/")
    if not os.path.isfile(os.path.join(args.ckpt, MODEL_CONFIG_FILE)):
        raise ConversionError(f"--ckpt={args.ckpt} is neither a run's workdir ({RUN_CONFIG_FILE} and "
                              f"{RUN_CHECKPOINTS_DIR}/) nor a directory written by an import ({MODEL_CONFIG_FILE} "
                              f"and {PARAMS_DIR}/)")
    cfg, flat = read_pretrained_dir(args.ckpt)
    check_export_dir(args.out)
    export_hf(cfg, flat, args.out, args.ckpt)
    return f"wrote {args.out}"


if __name__ == "__main__":
    sys.exit(main())
