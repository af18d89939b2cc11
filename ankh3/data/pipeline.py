"""Grain input pipeline: records -> tokens -> objective mixture -> fixed-shape batches.

The iterator's state is a JSON-able dict (orbax / `grain.checkpoint` can save it), so a resumed run
sees exactly the batches it would have seen. Batch k of a process is a pure function of (seed,
process, worker, k) and the records it reads; sharding across hosts is by `process_index`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import grain
import numpy as np

from ankh3.errors import UserError
from ankh3.objectives import Mixture

BATCH_KEYS = ("encoder_tokens", "decoder_inputs", "decoder_targets", "decoder_weights", "task")
# How a sequence longer than max_residues is cut. 'random' (the default) takes a uniformly placed window:
# over epochs every part of a long protein is seen, where 'start' would never show the residues past
# max_residues and would over-represent N-termini (signal peptides); the paper does not say which.
CROPS = ("random", "start")
_DROPPED = "_dropped_short"  # per-batch count travelling from the batcher to `BatchIterator`; popped there


class PipelineError(UserError, ValueError):
    """The input pipeline is misconfigured (sizes, seed, sharding, crop mode)."""


# ---- one batch, pure numpy ----------------------------------------------------------------------------
def crop_windows(lengths: np.ndarray, max_residues: int, crop: str, rng: np.random.Generator):
    """(start, kept length) per sequence: longer ones keep a random window ('random', the default: see
    CROPS for why) or their start ('start')."""
    kept = np.minimum(lengths, max_residues)
    if crop == "random":
        return rng.integers(0, lengths - kept + 1), kept
    return np.zeros_like(kept), kept


def pack_rows(sequences: Sequence[np.ndarray], starts: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """int32 [B, max kept] holding each sequence's window, zero-padded."""
    tokens = np.zeros((len(sequences), max(int(kept.max()), 1)), np.int32)
    for row, (sequence, start, size) in enumerate(zip(sequences, starts.tolist(), kept.tolist())):
        tokens[row, :size] = sequence[start:start + size]
    return tokens


def build_batch(sequences: Sequence[np.ndarray], mixture: Mixture, tokenizer, max_residues: int, *,
                encoder_length: int, decoder_length: int, rng: np.random.Generator, crop: str = "random") -> dict:
    """Tokenised sequences -> the batch dict of docs/interfaces.md (fixed shapes [B, Le] / [B, Ld]).

    Each sequence is first cut to `max_residues` (`crop`), whatever its objective; the objective then
    applies to the cut sequence, so (Le, Ld) must hold `mixture.needed_lengths(max_residues, ...)`.
    """
    tasks = mixture.draw_tasks(len(sequences), rng)
    lengths = np.fromiter((len(s) for s in sequences), np.int64, len(sequences))
    starts, kept = crop_windows(lengths, max_residues, crop, rng)
    tokens = pack_rows(sequences, starts, kept)
    inputs, targets = mixture.apply(tokens, kept, tasks, rng, tokenizer, encoder_length, decoder_length)
    decoder_inputs = np.zeros_like(targets)
    decoder_inputs[:, 1:] = targets[:, :-1]  # T5 starts decoding from the pad id
    return {"encoder_tokens": inputs, "decoder_inputs": decoder_inputs, "decoder_targets": targets,
            "decoder_weights": (targets != 0).astype(np.float32), "task": tasks}


# ---- Grain plumbing ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Tokenize:
    """Record -> int32 ids; picklable so that worker processes can run it."""

    tokenizer: Any
    on_invalid: str

    def __call__(self, record) -> np.ndarray:
        name = getattr(record, "name", "?")
        return self.tokenizer.encode(getattr(record, "sequence", record), name, self.on_invalid)


@dataclasses.dataclass(frozen=True)
class _BatchPlan:
    """Everything a batch needs besides its sequences and generator."""

    mixture: Mixture
    tokenizer: Any
    max_residues: int
    batch_size: int
    encoder_length: int
    decoder_length: int
    min_residues: int
    crop: str
    seed: int
    process_index: int
    shard_records: int = 0  # records this process reads per epoch: that many short ones in a row means all are
    source_name: str = ""


class _ObjectiveBatches(grain.IterDataset):
    """Groups tokenised sequences into batches, skipping (and counting) those below min_residues."""

    def __init__(self, parent: grain.IterDataset, plan: _BatchPlan):
        super().__init__(parent)
        self._plan = plan

    def __iter__(self) -> grain.DatasetIterator:
        return _ObjectiveBatchIterator(self._parent.__iter__(), self._plan)

    def __str__(self) -> str:
        return f"ObjectiveBatches(batch_size={self._plan.batch_size})"


class _ObjectiveBatchIterator(grain.DatasetIterator):
    """State: the record iterator's and the batch counter (which seeds each batch's generator)."""

    def __init__(self, parent: grain.DatasetIterator, plan: _BatchPlan):
        super().__init__(parent)
        self._plan = plan
        self._step = 0
        self.pending_dropped = 0  # skipped since the last batch; read once the records run out
        self._short_in_a_row = 0

    def __next__(self) -> dict:
        plan, sequences = self._plan, []
        self.pending_dropped = 0
        while len(sequences) < plan.batch_size:
            tokens = next(self._parent)  # at the end of finite epochs a partial batch is discarded
            if len(tokens) < plan.min_residues:
                self.pending_dropped += 1
                self._short_in_a_row += 1
                if plan.shard_records and self._short_in_a_row >= plan.shard_records:  # else: an endless search
                    raise PipelineError(f"no record of {plan.source_name} (process {plan.process_index}'s "
                                        f"{plan.shard_records}) has at least min_residues={plan.min_residues} residues; lower "
                                        "config.data.min_residues or point the data at longer sequences")
            else:
                sequences.append(tokens)
                self._short_in_a_row = 0
        # Worker processes each run a copy of this iterator on their own slice: the worker index keeps
        # their generators apart.
        worker = self._ctx.mp_context.process_index or 0
        rng = np.random.default_rng([plan.seed, plan.process_index, worker, self._step])
        self._step += 1
        batch = build_batch(sequences, plan.mixture, plan.tokenizer, plan.max_residues, encoder_length=plan.encoder_length,
                            decoder_length=plan.decoder_length, rng=rng, crop=plan.crop)
        batch[_DROPPED] = self.pending_dropped
        self.pending_dropped = 0
        return batch

    def get_state(self) -> dict:
        return {"records": self._parent.get_state(), "batches": self._step}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["records"])
        self._step = int(state["batches"])


class BatchIterator(grain.DatasetIterator):
    """The training iterator: yields batch dicts; `get_state`/`set_state` (JSON-able) resume it exactly.

    `stats` counts batches, examples and sequences skipped for being shorter than min_residues.
    """

    def __init__(self, parent: grain.DatasetIterator):
        super().__init__(parent)
        self._stats = {"batches": 0, "examples": 0, "dropped_short": 0}

    def __next__(self) -> dict:
        try:
            batch = dict(next(self._parent))
        except StopIteration:
            # Skips after the last full batch ride on no batch; an in-process batcher still holds them
            # (with worker processes they go uncounted).
            if isinstance(self._parent, _ObjectiveBatchIterator):
                self._stats["dropped_short"] += self._parent.pending_dropped
                self._parent.pending_dropped = 0
            raise
        self._stats["dropped_short"] += int(batch.pop(_DROPPED))
        self._stats["batches"] += 1
        self._stats["examples"] += len(batch["task"])
        return batch

    @property
    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    def get_state(self) -> dict:
        return {"pipeline": self._parent.get_state(), "stats": dict(self._stats)}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["pipeline"])
        self._stats = {k: int(v) for k, v in state["stats"].items()}

    def __str__(self) -> str:
        return "BatchIterator"


def _check_settings(batch_size, encoder_length, decoder_length, seed, crop, min_residues, max_residues, on_invalid,
                    process_index, process_count, num_epochs):
    if batch_size < 1 or encoder_length < 3 or decoder_length < 2:
        raise PipelineError(f"batch_size={batch_size}, encoder_length={encoder_length}, "
                            f"decoder_length={decoder_length}: need at least 1, 3 and 2")
    if not 0 <= seed < 2**32:
        raise PipelineError(f"seed={seed} must lie in [0, 2**32) (Grain's shuffle takes 32-bit seeds)")
    if crop not in CROPS:
        raise PipelineError(f"crop={crop!r} must be one of {CROPS}")
    if min_residues < 2:
        raise PipelineError(f"min_residues={min_residues} must be >= 2 (objectives split a sequence in two)")
    if max_residues is not None and max_residues < min_residues:
        raise PipelineError(f"max_residues={max_residues} must be >= min_residues={min_residues}")
    if on_invalid not in ("error", "x"):
        raise PipelineError(f"on_invalid={on_invalid!r} must be 'error' or 'x'")
    if not 0 <= process_index < process_count:
        raise PipelineError(f"process_index={process_index} must lie in [0, process_count={process_count})")
    if num_epochs is not None and num_epochs < 1:
        raise PipelineError(f"num_epochs={num_epochs} must be >= 1, or None to repeat forever")


def check_fits(mixture: Mixture, max_residues: int | None, encoder_length: int, decoder_length: int,
               num_sentinels: int, where: str = "") -> int:
    """The cut length: max_residues if every objective fits it into (Le, Ld), else one line naming the
    lengths it needs; None -> the longest cut that fits every objective."""
    if max_residues is None:
        return int(mixture.max_residues(encoder_length, decoder_length, num_sentinels).min())
    need_in, need_out = mixture.needed_lengths(max_residues, num_sentinels)
    if need_in > encoder_length or need_out > decoder_length:
        raise PipelineError(
            f"{where}max_residues={max_residues} needs encoder_length >= {need_in} and decoder_length >= {need_out} "
            f"for objectives {', '.join(mixture.task_names)}, got {encoder_length} and {decoder_length}; "
            "raise the lengths or lower max_residues")
    return int(max_residues)


def make_dataset(source, tokenizer, mixture: Mixture, *, batch_size: int, encoder_length: int, decoder_length: int,
                 seed: int, shuffle: bool = True, num_epochs: int | None = None, crop: str = "random",
                 max_residues: int | None = None, min_residues: int = 2, on_invalid: str = "error", process_index: int = 0, process_count: int = 1,
                 read_threads: int = 0) -> grain.IterDataset:
    """The batch dataset over a source (random access: `len` and `source[i]` -> record with `.sequence`,
    or a path for `ankh3.data.sources.open_source`).

    Each process reads records process_index, process_index + process_count, ...; with `shuffle`,
    each epoch visits its shard in a new seeded order. Sequences shorter than min_residues are skipped;
    longer than max_residues ones are cut to it (a window placed by `crop`, see CROPS) before the
    objective sees them. max_residues=None takes the longest cut that every objective fits into
    (encoder_length, decoder_length). Elements carry an internal drop count: iterate through
    `make_iterator` (which removes it and keeps statistics).

    read_threads > 0 prefetches records in threads: worth it when reading waits on storage (ArrayRecord
    on network disks); for in-memory FASTA the GIL makes threads slower (16k vs 5k records/s here).
    """
    _check_settings(batch_size, encoder_length, decoder_length, seed, crop, min_residues, max_residues, on_invalid,
                    process_index, process_count, num_epochs)
    if isinstance(source, (str, os.PathLike)):
        from ankh3.data.sources import open_source  # only when given a path

        source = open_source(source)
    if len(source) < process_count:
        raise PipelineError(f"the source holds {len(source)} records, fewer than process_count={process_count}")
    max_residues = check_fits(mixture, max_residues, encoder_length, decoder_length, tokenizer.num_sentinels)
    records = grain.MapDataset.source(source)[process_index::process_count]
    plan = _BatchPlan(mixture, tokenizer, max_residues, batch_size, encoder_length, decoder_length, min_residues, crop,
                      seed, process_index, len(records), str(source))
    if shuffle:
        records = records.shuffle(seed)
    records = records.repeat(num_epochs).map(_Tokenize(tokenizer, on_invalid))
    sequences = records.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=256))
    return _ObjectiveBatches(sequences, plan)


def make_iterator(source, tokenizer, mixture: Mixture, *, worker_count: int = 0, worker_buffer_size: int = 2,
                  **settings) -> BatchIterator:
    """A resumable batch iterator (see `make_dataset` for the settings).

    worker_count > 0 builds batches in that many Grain worker processes (each on a slice of the
    records, so the batch order depends on worker_count). Grain reads absl flags in workers: the
    program must have parsed them (absl.app.run does).
    """
    dataset = make_dataset(source, tokenizer, mixture, **settings)
    if worker_count > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():
            raise PipelineError("worker_count > 0 needs absl flags parsed: start the program with absl.app.run, "
                                "or set worker_count=0")
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(worker_count, worker_buffer_size))
    return BatchIterator(dataset.__iter__())
