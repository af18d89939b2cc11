"""Frozen-encoder embeddings for downstream probes: bucketed, jitted per bucket, cached on disk.

Inputs look like pretraining, `[TASK] residues </s>`; per-residue outputs drop the task token
and EOS so that row i is residue i. Controls (one-hot residues, a random encoder) go through
the same path so every probe number has a baseline beside it.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import zipfile
import zlib
from collections.abc import Callable, Sequence

import jax
import numpy as np
from flax import nnx

from ankh3.errors import UserError
from ankh3.downstream.progress import Progress
from ankh3.tokenizer import RESIDUES, TASK_TOKENS, Tokenizer

EncodeFn = Callable[[np.ndarray, np.ndarray], "np.ndarray"]  # (tokens [B,L], mask [B,L]) -> [B,L,D]
PREFIXES = TASK_TOKENS  # any task token the tokenizer knows may lead a sequence being embedded
POOLINGS = ("none", "mean", "max")
_CACHE_VERSION = 1  # bump when the layout of inputs or of cache files changes


class EmbedError(UserError, ValueError):
    """Embedding extraction was asked for something it cannot do."""


# ---- inputs ---------------------------------------------------------------------------
def build_inputs(tokenizer: Tokenizer, sequences: Sequence[str], prefix: str) -> list[np.ndarray]:
    """`[TASK] residues </s>` ids per sequence (the layout the encoder saw in pretraining)."""
    if prefix not in PREFIXES:
        raise EmbedError(f"prefix must be one of {PREFIXES}, got {prefix!r}")
    task, eos = tokenizer.task_id(prefix), tokenizer.eos_id
    return [np.concatenate([[task], tokenizer.encode(s, record=f"#{i}", on_invalid="x"), [eos]]).astype(np.int32)
            for i, s in enumerate(sequences)]


def bucket_length(length: int, multiple: int = 64) -> int:
    """Padded length of a bucket: multiples of `multiple`, then powers of two beyond 8x it,
    so a corpus compiles for a handful of shapes rather than one per length."""
    if length <= 8 * multiple:
        return max(multiple, -(-length // multiple) * multiple)
    return 1 << (length - 1).bit_length()


def plan_batches(lengths: Sequence[int], token_budget: int = 16384, multiple: int = 64):
    """Groups of indices sorted by length, each with its padded (batch, length) shape.

    Every batch of one bucket has the same shape (the last one is filled with dummy rows),
    so jit compiles once per bucket.
    """
    order = np.argsort(np.asarray(lengths), kind="stable")
    buckets: dict[int, list[int]] = {}
    for i in order.tolist():
        buckets.setdefault(bucket_length(int(lengths[i]), multiple), []).append(i)
    plan = []
    for padded, members in sorted(buckets.items()):
        batch = max(1, token_budget // padded)
        batch = min(batch, 1 << (len(members) - 1).bit_length())  # small buckets: no huge dummy fill
        for start in range(0, len(members), batch):
            plan.append((members[start:start + batch], (batch, padded)))
    return plan


def _pad_batch(inputs: list[np.ndarray], rows: list[int], shape: tuple[int, int], filler: np.ndarray):
    tokens = np.zeros(shape, np.int32)
    for r in range(shape[0]):
        ids = inputs[rows[r]] if r < len(rows) else filler  # dummy rows are a real, tiny input
        tokens[r, :len(ids)] = ids
    return tokens, tokens != 0


# ---- extraction -----------------------------------------------------------------------
def extract_embeddings(encode_fn: EncodeFn, tokenizer: Tokenizer, sequences: Sequence[str], prefix: str = "[NLU]",
                       *, pooling: str = "none", token_budget: int = 16384, multiple: int = 64,
                       dtype=np.float32, progress: bool = True, desc: str = "embed"):
    """Embeddings in the original order: per residue (list of [L_i, D]) or pooled ([N, D])."""
    if pooling not in POOLINGS:
        raise EmbedError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    inputs = build_inputs(tokenizer, sequences, prefix)
    filler = inputs[0][[0, -1]] if inputs else None
    plan = plan_batches([len(x) for x in inputs], token_budget, multiple)
    out: list = [None] * len(inputs)
    bar = Progress(len(inputs), f"embedding {desc}", unit="seq", enabled=progress)
    for rows, shape in plan:
        tokens, mask = _pad_batch(inputs, rows, shape, filler)
        hidden = np.asarray(encode_fn(tokens, mask))
        for r, i in enumerate(rows):
            per_residue = hidden[r, 1:len(inputs[i]) - 1]  # drop task token and EOS
            out[i] = _pool(per_residue.astype(np.float32), pooling).astype(dtype)
        bar.update(len(rows))
    bar.close()
    return out if pooling == "none" else np.stack(out) if out else np.zeros((0, 0), dtype)


def _pool(per_residue: np.ndarray, pooling: str) -> np.ndarray:
    if pooling == "mean":
        return per_residue.mean(axis=0)
    if pooling == "max":
        return per_residue.max(axis=0)
    return per_residue


# ---- encoders -------------------------------------------------------------------------
def make_model_encode_fn(model) -> EncodeFn:
    """A jitted `encode_fn` for an NNX model with `.encode(tokens, mask)`.

    The parameters are passed as an argument rather than captured, so XLA does not fold a
    copy of the weights into each compiled bucket shape, and models of one shape (a checkpoint
    and its random control) share the compiled programs.
    """
    graphdef, state = nnx.split(model)
    return lambda tokens, mask: _encode(state, tokens, mask, graphdef=graphdef)


@functools.partial(jax.jit, static_argnames="graphdef")
def _encode(state, tokens, mask, *, graphdef):
    return nnx.merge(graphdef, state).encode(tokens, mask, deterministic=True)


def make_random_encode_fn(cfg, seed: int = 0) -> EncodeFn:
    """The control encoder: a freshly initialised T5 of the same shape as the model under test."""
    from ankh3.model import T5  # imported here: embeddings of foreign encoders need no T5

    return make_model_encode_fn(T5(cfg, rngs=nnx.Rngs(seed)))


RANDOM_CONTROL_SEED_OFFSET = 10_000  # the control's init seed is the run's seed + this, never the model's own


def random_control(cfg, shape: str, run_seed: int) -> tuple[EncodeFn, str]:
    """(encode_fn, embedding-cache id) of a run's random-encoder control: every probe of one run, and
    every checkpoint of it (analysis/learning_curve.py), compares against the same random encoder."""
    seed = int(run_seed) + RANDOM_CONTROL_SEED_OFFSET
    return make_random_encode_fn(cfg, seed=seed), f"random:{shape}:{seed}"


ONEHOT_DIM = 28  # 25 residue letters, padded so ConvBERT's head split (dim % 4 == 0) holds


def onehot_embeddings(sequences: Sequence[str], dtype=np.float32) -> list[np.ndarray]:
    """The TAPE/FLIP baseline: one-hot residue letters [L_i, 28] instead of learned embeddings."""
    lut = np.full(256, RESIDUES.index("X"), np.int64)
    for k, letter in enumerate(RESIDUES):
        lut[ord(letter)] = lut[ord(letter.lower())] = k
    eye = np.eye(ONEHOT_DIM, dtype=dtype)
    return [eye[lut[np.frombuffer(s.encode("ascii", "replace"), np.uint8)]] for s in sequences]


# ---- cache ----------------------------------------------------------------------------
def sequences_digest(sequences: Sequence[str]) -> str:
    """Identity of a dataset by content, so renamed or re-split data never hits a stale cache."""
    h = hashlib.sha1()
    for s in sequences:
        h.update(s.encode())
        h.update(b"\n")
    return h.hexdigest()


def cache_path(cache_dir: str, encoder_id: str, prefix: str, dataset_id: str, pooling: str, dtype) -> str:
    key = json.dumps({"encoder": encoder_id, "prefix": prefix, "dataset": dataset_id, "pooling": pooling,
                      "dtype": np.dtype(dtype).name, "version": _CACHE_VERSION}, sort_keys=True)
    return os.path.join(cache_dir, f"emb-{hashlib.sha1(key.encode()).hexdigest()}.npz")


def save_embeddings(path: str, embeddings) -> None:
    """Per-residue lists are stored flat with offsets; written to a temp file then renamed so a
    crash never leaves a half-written cache entry."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if isinstance(embeddings, np.ndarray):
        arrays = {"pooled": embeddings}
    else:
        lengths = np.array([len(e) for e in embeddings], np.int64)
        flat = np.concatenate(embeddings) if embeddings else np.zeros((0, 0), np.float32)
        arrays = {"flat": flat, "offsets": np.concatenate([[0], np.cumsum(lengths)])}
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_embeddings(path: str):
    """A cache entry, or None when it cannot be read (truncated, foreign): it is then recomputed."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if "pooled" in f:
                return f["pooled"]
            flat, offsets = f["flat"], f["offsets"]
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        logging.warning("embedding cache %s unreadable (%s); recomputing it", path, type(e).__name__)
        return None
    return [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def cached_embeddings(encode_fn: EncodeFn, tokenizer: Tokenizer, sequences: Sequence[str], prefix: str, *,
                      cache_dir: str | None, encoder_id: str | None, dataset_id: str = "",
                      pooling: str = "none", dtype=np.float32, **kwargs):
    """`extract_embeddings` behind an on-disk cache keyed by (encoder, prefix, dataset, pooling).

    `encoder_id` names the weights (checkpoint path + step, or 'random:<shape>:<seed>'); the
    dataset key is `dataset_id` plus a digest of the sequences themselves.
    """
    if cache_dir is None:
        return extract_embeddings(encode_fn, tokenizer, sequences, prefix, pooling=pooling, dtype=dtype, **kwargs)
    if not encoder_id:
        raise EmbedError("embedding cache: cache_dir is set but encoder_id is empty; pass encoder_id naming the "
                         "weights (e.g. checkpoint path and step) or set cache_dir=None")
    path = cache_path(cache_dir, encoder_id, prefix, f"{dataset_id}:{sequences_digest(sequences)}", pooling, dtype)
    cached = load_embeddings(path) if os.path.exists(path) else None
    if cached is not None:
        return cached
    embeddings = extract_embeddings(encode_fn, tokenizer, sequences, prefix, pooling=pooling, dtype=dtype, **kwargs)
    save_embeddings(path, embeddings)
    return embeddings
