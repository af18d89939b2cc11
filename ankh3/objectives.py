"""Pretraining objectives as pure numpy functions of (tokens, generator): T5 span corruption,
UL2 X-denoising, sequence completion, and weighted mixtures of them.

Every objective works on a whole batch at once (`apply`): a padded int32 token array [B, W] with the
true residue counts per row, producing fixed-shape (inputs [B, Le], targets [B, Ld]) padded with 0.
Inputs are task token + ... + EOS, targets are ... + EOS. Lengths are a pure function of the residue
count (and the drawn setting), so `max_residues` tells in advance how long a sequence may be to fit.
"""
from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

import numpy as np

from ankh3.errors import UserError

_POS_BITS = 16  # residue positions inside a sort key; sequences up to 65,535 residues
_POS_MASK = np.uint64((1 << _POS_BITS) - 1)
_FAR = 1 << 40  # pads absent cuts; sorts after any real one
_BEYOND = 1 << 30  # a jump that sends every later slot to the trailing 0


class ObjectiveError(UserError, ValueError):
    """An objective is misconfigured, or a sequence does not fit the requested shapes."""


class Tokens(Protocol):
    """What objectives need from `ankh3.tokenizer.Tokenizer`."""

    eos_id: int
    sentinel_ids: np.ndarray

    def task_id(self, token: str) -> int: ...


def _task_name(token: str) -> str:
    return token.strip("[]<>").lower()


# ---- span corruption ------------------------------------------------------------------------------
def count_spans(num_residues, noise_density, mean_span_length, num_sentinels: int):
    """(noise, non-noise, spans) per sequence, following T5's `random_spans_noise_mask`.

    noise = round(L*r) clipped to [1, L-1]; spans = max(1, round(noise/mu)). Beyond T5, spans are
    capped at the number of non-noise tokens (each span needs a non-noise token before it) and at
    `num_sentinels` (one sentinel per span): capped sequences get longer spans, not fewer noise tokens.
    Rounding is half-to-even, as numpy and TF do.
    """
    length = np.asarray(num_residues, np.int64)
    noise = np.clip(np.rint(length * np.asarray(noise_density, np.float64)), 1, length - 1).astype(np.int64)
    clean = length - noise
    spans = np.maximum(np.rint(noise / mean_span_length), 1).astype(np.int64)
    spans = np.minimum(np.minimum(spans, clean), num_sentinels)
    return noise, clean, spans


def span_corruption_lengths(num_residues, noise_density, mean_span_length: float, num_sentinels: int):
    """T5's length formula: (inputs, targets) lengths including task token and EOS."""
    noise, clean, spans = count_spans(num_residues, noise_density, mean_span_length, num_sentinels)
    return clean + spans + 2, noise + spans + 1


def _largest_fitting(lengths_fn, encoder_length: int, decoder_length: int, what: str) -> int:
    """Longest raw length L such that every length 2..L fits (Le, Ld); lengths need not be monotone."""
    candidates = np.arange(2, encoder_length + decoder_length + 1)
    ins, outs = lengths_fn(candidates)
    misfit = np.flatnonzero((ins > encoder_length) | (outs > decoder_length))
    if misfit.size and misfit[0] == 0:
        raise ObjectiveError(
            f"{what}: encoder_length={encoder_length}, decoder_length={decoder_length} cannot hold even a "
            f"2-residue sequence; raise the lengths")
    return int(candidates[misfit[0] - 1]) if misfit.size else int(candidates[-1])


def _random_cuts(rng: np.random.Generator, items: np.ndarray, parts: np.ndarray) -> np.ndarray:
    """Cut positions of a uniformly random composition of `items[b]` into `parts[b]` positive parts.

    A composition of n items into k parts is a uniform (k-1)-subset of the n-1 gaps between items.
    Returns int64 [B, max(parts)-1]: row b's cuts (a part ends after item `cut`) ascending, then padding.
    """
    gaps, picks = items - 1, parts - 1
    most = max(int(picks.max()), 1)
    if (picks == gaps).all():  # every gap is cut (single-residue spans): nothing to draw
        cuts = np.tile(np.arange(most, dtype=np.int64), (len(gaps), 1))
        np.putmask(cuts, cuts >= picks[:, None], _FAR)
        return cuts
    if (8 * picks <= gaps).all():  # measured crossover: redrawing beats sorting every gap below ~1/7
        return _sparse_subsets(rng, gaps, picks, most)
    return _dense_subsets(rng, gaps, picks, most)


def _dense_subsets(rng, gaps, picks, most):
    """The gaps with the k-1 smallest random keys. Keys are 48 random bits above 16 bits of gap position,
    so one integer sort per batch orders them (ties need equal 48-bit draws: ~1e-9 per row at L=512)."""
    rows, width = len(gaps), max(int(gaps.max()), 1)
    keys = rng.bit_generator.random_raw((rows, width))
    keys <<= np.uint64(_POS_BITS)
    keys |= np.arange(width, dtype=np.uint64)
    if (gaps < width).any():  # rows with fewer gaps: their absent gaps sort last
        np.putmask(keys, np.arange(width)[None, :] >= gaps[:, None], np.iinfo(np.uint64).max)
    keys.sort(axis=1)
    cuts = (keys[:, :most] & _POS_MASK).astype(np.int64)
    if (picks < most).any():
        np.putmask(cuts, np.arange(most)[None, :] >= picks[:, None], _FAR)
    cuts.sort(axis=1)
    return cuts


def _sparse_subsets(rng, gaps, picks, most):
    """Few picks among many gaps: draw uniformly, redraw repeats until all are distinct.

    The procedure treats every gap alike, so the final set is a uniform subset; with at most an
    eighth of the gaps picked it settles in a few rounds and never touches every gap.
    """
    rows = len(gaps)
    cuts = _uniform_below(rng, gaps[:, None], (rows, most))
    np.putmask(cuts, np.arange(most)[None, :] >= picks[:, None], _FAR)
    while True:
        cuts.sort(axis=1)
        repeat = np.zeros(cuts.shape, bool)
        repeat[:, 1:] = (cuts[:, 1:] == cuts[:, :-1]) & (cuts[:, 1:] != _FAR)
        if not repeat.any():
            return cuts
        redraw = gaps[np.nonzero(repeat)[0]]
        cuts[repeat] = _uniform_below(rng, redraw, redraw.shape)


def _uniform_below(rng, bounds, shape):
    """int64 uniform in [0, bound): floor(u * bound) with 53-bit u (bias < 1e-11 for bounds < 65,536);
    5x faster than Generator.integers with array bounds."""
    return (rng.random(shape) * bounds).astype(np.int64)


def _segment_starts(cuts: np.ndarray, total: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """[B, K+1] start of each part (0, cut+1, ...), with `total` at index `spans` as the end."""
    rows = len(total)
    starts = np.zeros((rows, cuts.shape[1] + 2), np.int64)
    starts[:, 1:-1] = cuts + 1
    starts[np.arange(rows), spans] = total
    return starts


def _span_starts(rng, noise, clean, spans):
    """(c, a) int64 [B, K+1]: noise (c_s) and non-noise (a_s) tokens before span s; c_k = noise, a_k = clean.

    Span s is non-noise part s followed by noise part s, as in T5 (non-noise first, noise last).
    """
    return (_segment_starts(_random_cuts(rng, noise, spans), noise, spans),
            _segment_starts(_random_cuts(rng, clean, spans), clean, spans))


def _gather_layout(flat_tokens, row_length, marks_at, offsets, live, lengths, width, labels):
    """Builds every output row by one gather; the index of each slot comes from a running sum.

    `flat_tokens` is the token array [B, row_length] flattened, then one 0. Slot `marks_at[b, s]` (s live)
    gets labels[s]; every other slot j < lengths[b] - 1 copies tokens[b, j + offsets[b, seg]] where seg
    counts the marked slots at or before j; slots from lengths[b] - 1 on read the trailing 0. The source
    index only jumps at marked slots, so it is the cumulative sum of 1s plus those jumps: no per-slot
    lookups, and flat indices keep the gather 1-D (~4x faster than 2-D fancy indexing).
    """
    rows = len(lengths)
    at_row = np.arange(rows)
    # absent spans land on a cut-off column; flat indices everywhere: 2-D fancy indexing is ~4x slower
    slots = np.where(live, marks_at, width) + (at_row * (width + 1))[:, None]
    steps = np.ones((rows, width + 1), np.int32)
    steps[:, 0] += (at_row * row_length + offsets[:, 0] - 1).astype(np.int32)
    flat_steps = steps.reshape(-1)
    flat_steps[slots] += (offsets[:, 1:] - offsets[:, :-1]).astype(np.int32)
    flat_steps[at_row * (width + 1) + lengths - 1] += _BEYOND
    source = np.cumsum(steps, axis=1, dtype=np.int32)
    np.minimum(source, len(flat_tokens) - 1, out=source)
    values = flat_tokens[source.astype(np.intp)]  # intp indices gather ~2x faster than int32 ones
    values.reshape(-1)[slots] = labels
    return values[:, :width]


def _finish(rows: np.ndarray, lengths: np.ndarray, task: int | None, eos: int) -> np.ndarray:
    """Puts EOS last in each (zero-padded) row and the task token, if any, first."""
    rows[np.arange(len(rows)), lengths - 1] = eos
    if task is not None:
        rows[:, 0] = task
    return rows


def _check_rows(tokens: np.ndarray, lengths, what: str) -> np.ndarray:
    lengths = np.asarray(lengths, np.int64)
    if tokens.ndim != 2 or len(tokens) != len(lengths) or (lengths > tokens.shape[1]).any():
        raise ObjectiveError(f"{what}: tokens {tokens.shape} do not hold {len(lengths)} rows of the given lengths")
    if (lengths < 2).any():
        raise ObjectiveError(f"{what} needs sequences of at least 2 residues; set min_residues >= 2")
    if (lengths >= 1 << _POS_BITS).any():
        raise ObjectiveError(f"{what}: sequences of {int(lengths.max())} residues exceed the {(1 << _POS_BITS) - 1} "
                             "supported; crop them first")
    return lengths


def _check_fits(ins, outs, encoder_length, decoder_length, what):
    if (ins > encoder_length).any() or (outs > decoder_length).any():
        raise ObjectiveError(
            f"{what}: a sequence needs inputs/targets of {int(ins.max())}/{int(outs.max())} tokens but the batch "
            f"holds {encoder_length}/{decoder_length}; crop sequences to max_residues() first")


def _as_choices(value, what: str) -> tuple[float, ...]:
    choices = tuple(float(v) for v in (value if isinstance(value, (tuple, list)) else (value,)))
    if not choices:
        raise ObjectiveError(f"{what}: give at least one value")
    return choices


@dataclasses.dataclass(frozen=True)
class SpanCorruption:
    """T5 span-corruption denoising; mean_span_length=1 is Ankh's single-residue masking.

    `noise_density` may be a tuple of choices, drawn once per batch (`density_granularity='batch'`,
    Ankh3) or per sequence ('example'). `mean_span_length` is one value for every choice, or a tuple
    of the same length paired with the densities: UL2's X-denoiser is such a list of (density, span)
    settings with task token '[NLG]' (experiments/common.py `x_denoiser`). Span k of a sequence is
    replaced by `sentinel_ids[k]`.
    """

    noise_density: float | tuple[float, ...] = 0.15
    mean_span_length: float | tuple[float, ...] = 1.0
    task_token: str = "[NLU]"
    density_granularity: str = "batch"
    name: str | None = None

    def __post_init__(self):
        densities = _as_choices(self.noise_density, "SpanCorruption.noise_density")
        spans = _as_choices(self.mean_span_length, "SpanCorruption.mean_span_length")
        if not all(0.0 < r < 1.0 for r in densities):
            raise ObjectiveError(f"SpanCorruption.noise_density must lie in (0, 1), got {self.noise_density}")
        if not all(mu >= 1.0 for mu in spans):
            raise ObjectiveError(f"SpanCorruption.mean_span_length must be >= 1, got {self.mean_span_length}")
        if len(spans) not in (1, len(densities)):
            raise ObjectiveError(
                f"SpanCorruption: {len(spans)} mean_span_length values for {len(densities)} noise_density values; "
                "give one span length, or one per density (paired settings)")
        if self.density_granularity not in ("batch", "example"):
            raise ObjectiveError(
                f"SpanCorruption.density_granularity must be 'batch' or 'example', got {self.density_granularity!r}")
        object.__setattr__(self, "_densities", np.array(densities))
        object.__setattr__(self, "_spans", np.broadcast_to(np.array(spans), (len(densities),)).copy())

    @property
    def task_name(self) -> str:
        return self.name or _task_name(self.task_token)

    @property
    def settings(self) -> tuple[tuple[float, float], ...]:
        """The (noise density, mean span length) choices, one drawn per batch or per sequence."""
        return tuple(zip(self._densities.tolist(), self._spans.tolist()))

    def lengths(self, num_residues, num_sentinels: int, noise_density: float | None = None,
                mean_span_length: float | None = None):
        """(inputs, targets) lengths for raw lengths at one setting (default: the first choice)."""
        r = self._densities[0] if noise_density is None else noise_density
        mu = self._spans[0] if mean_span_length is None else mean_span_length
        return span_corruption_lengths(num_residues, r, mu, num_sentinels)

    def max_residues(self, encoder_length: int, decoder_length: int, num_sentinels: int) -> int:
        """Longest raw length whose inputs and targets fit (Le, Ld) at every setting."""
        def worst(candidates):
            sizes = [self.lengths(candidates, num_sentinels, r, mu) for r, mu in self.settings]
            return np.max([s[0] for s in sizes], axis=0), np.max([s[1] for s in sizes], axis=0)
        return _largest_fitting(worst, encoder_length, decoder_length, f"SpanCorruption({self.task_name})")

    def needed_lengths(self, num_residues: int, num_sentinels: int) -> tuple[int, int]:
        """(encoder, decoder) tokens that every sequence of up to `num_residues` needs, at every setting."""
        candidates = np.arange(2, num_residues + 1)
        sizes = [self.lengths(candidates, num_sentinels, r, mu) for r, mu in self.settings]
        return int(max(s[0].max() for s in sizes)), int(max(s[1].max() for s in sizes))

    def apply(self, tokens: np.ndarray, lengths: np.ndarray, rng: np.random.Generator, tokenizer: Tokens,
              encoder_length: int, decoder_length: int):
        """Corrupts every row of tokens int32 [B, W] (lengths[b] residues each) -> (inputs, targets)."""
        lengths = _check_rows(tokens, lengths, f"SpanCorruption({self.task_name})")
        size = None if self.density_granularity == "batch" else len(lengths)
        setting = rng.integers(len(self._densities), size=size)
        sentinels = np.asarray(tokenizer.sentinel_ids, np.int32)
        noise, clean, spans = count_spans(lengths, self._densities[setting], self._spans[setting], len(sentinels))
        ins, outs = clean + spans + 2, noise + spans + 1
        _check_fits(ins, outs, encoder_length, decoder_length, f"SpanCorruption({self.task_name})")
        noise_at, clean_at = _span_starts(rng, noise, clean, spans)
        span = np.arange(noise_at.shape[1] - 1)
        live = span < spans[:, None]
        labels = sentinels[np.minimum(span, len(sentinels) - 1)]
        flat = np.zeros(tokens.size + 1, np.int32)  # the tokens, then a 0 that slots past the end read
        flat[:-1] = tokens.reshape(-1)
        row_length = tokens.shape[1]
        # inputs: task, then per span its non-noise part and its sentinel (at 1 + a_{s+1} + s);
        # a residue in non-noise part s moves left by the noise before it and right by s sentinels
        inputs = _gather_layout(flat, row_length, 1 + clean_at[:, 1:] + span,
                                noise_at - np.arange(noise_at.shape[1]) - 1, live, ins, encoder_length, labels)
        # targets: per span its sentinel (at c_s + s), then its noise residues, read from a_{s+1} onwards
        targets = _gather_layout(flat, row_length, noise_at[:, :-1] + span,
                                 clean_at - np.arange(clean_at.shape[1]), live, outs, decoder_length, labels)
        return _finish(inputs, ins, tokenizer.task_id(self.task_token), tokenizer.eos_id), \
            _finish(targets, outs, None, tokenizer.eos_id)

    def __call__(self, tokens: np.ndarray, rng: np.random.Generator, tokenizer: Tokens):
        """One sequence -> (inputs, targets) 1-D int32, unpadded."""
        return _apply_one(self, tokens, rng, tokenizer)


# ---- completion -------------------------------------------------------------------------------------
def completion_lengths(num_residues, fraction):
    """(inputs, targets) lengths: the decoder writes int(f*L) residues (rounded down, as the Ankh3 model
    card cuts at `int(L*f)`), clipped to [1, L-1]; the encoder reads the first L - int(f*L)."""
    length = np.asarray(num_residues, np.int64)
    tail = np.clip(np.floor(length * np.asarray(fraction, np.float64)), 1, length - 1).astype(np.int64)
    return length - tail + 2, tail + 1


@dataclasses.dataclass(frozen=True)
class Completion:
    """Sequence completion: the encoder reads the first 1-f of the residues, the decoder writes the rest.

    `fraction` is fixed (Ankh3: 0.5) or a range (lo, hi) drawn uniformly per sequence.
    """

    fraction: float | tuple[float, float] = 0.5
    task_token: str = "[S2S]"
    name: str | None = None

    def __post_init__(self):
        bounds = _as_choices(self.fraction, "Completion.fraction")
        if len(bounds) > 2 or not all(0.0 < f < 1.0 for f in bounds) or bounds[0] > bounds[-1]:
            raise ObjectiveError(
                f"Completion.fraction must be f or (lo, hi) with 0 < lo <= hi < 1, got {self.fraction}")
        object.__setattr__(self, "_bounds", (bounds[0], bounds[-1]))

    @property
    def task_name(self) -> str:
        return self.name or _task_name(self.task_token)

    @property
    def fraction_bounds(self) -> tuple[float, float]:
        """(lo, hi) of the completed fraction; lo == hi when it is fixed."""
        return self._bounds

    def lengths(self, num_residues, num_sentinels: int = 0, fraction: float | None = None):
        """(inputs, targets) lengths at one fraction (default: the lower bound)."""
        return completion_lengths(num_residues, self._bounds[0] if fraction is None else fraction)

    def max_residues(self, encoder_length: int, decoder_length: int, num_sentinels: int = 0) -> int:
        """Longest raw length whose inputs and targets fit (Le, Ld) at any fraction in the range."""
        lo, hi = self._bounds

        def worst(candidates):  # the encoder is longest at lo, the decoder at hi
            return completion_lengths(candidates, lo)[0], completion_lengths(candidates, hi)[1]
        return _largest_fitting(worst, encoder_length, decoder_length, f"Completion({self.task_name})")

    def needed_lengths(self, num_residues: int, num_sentinels: int = 0) -> tuple[int, int]:
        """(encoder, decoder) tokens that every sequence of up to `num_residues` needs, at any fraction."""
        lo, hi = self._bounds
        return int(completion_lengths(num_residues, lo)[0]), int(completion_lengths(num_residues, hi)[1])

    def apply(self, tokens: np.ndarray, lengths: np.ndarray, rng: np.random.Generator, tokenizer: Tokens,
              encoder_length: int, decoder_length: int):
        """Splits every row of tokens int32 [B, W] (lengths[b] residues each) -> (inputs, targets)."""
        lengths = _check_rows(tokens, lengths, f"Completion({self.task_name})")
        lo, hi = self._bounds
        fraction = lo if lo == hi else rng.uniform(lo, hi, size=len(lengths))
        ins, outs = completion_lengths(lengths, fraction)
        _check_fits(ins, outs, encoder_length, decoder_length, f"Completion({self.task_name})")
        rows, width = tokens.shape
        prefix = ins - 2
        inputs = np.zeros((rows, max(encoder_length, width + 2)), np.int32)
        inputs[:, 1:width + 1] = np.where(np.arange(width)[None, :] < prefix[:, None], tokens, 0)
        inputs[:, 0] = tokenizer.task_id(self.task_token)
        inputs[np.arange(rows), ins - 1] = tokenizer.eos_id
        col = np.arange(decoder_length)[None, :]
        tail = np.take_along_axis(tokens, np.minimum(prefix[:, None] + col, width - 1), axis=1)
        targets = np.where(col < (outs - 1)[:, None], tail, 0).astype(np.int32)
        targets[np.arange(rows), outs - 1] = tokenizer.eos_id
        return inputs[:, :encoder_length], targets

    def __call__(self, tokens: np.ndarray, rng: np.random.Generator, tokenizer: Tokens):
        return _apply_one(self, tokens, rng, tokenizer)


def _apply_one(objective, tokens, rng, tokenizer):
    tokens = np.asarray(tokens, np.int32)[None, :]
    length = tokens.shape[1]
    inputs, targets = objective.apply(tokens, np.array([length]), rng, tokenizer, length + 2, 2 * length + 1)
    return inputs[0, :np.count_nonzero(inputs[0])], targets[0, :np.count_nonzero(targets[0])]


# ---- mixtures ---------------------------------------------------------------------------------------
Objective = SpanCorruption | Completion


def mixture_name(task_names: Sequence[str]) -> str:
    """The name a mixture's pooled metrics carry: its one task's name, else 'mix_' + the task names
    ('mix_nlu_s2s'), so that a pooled loss is never compared with another mixture's under one key."""
    return task_names[0] if len(task_names) == 1 else "mix_" + "_".join(task_names)


@dataclasses.dataclass(frozen=True)
class Mixture:
    """Weighted objectives; each example's (granularity='example') or each batch's ('batch') objective is drawn.

    `task_names[i]` names entry i (from its task token, or its `name`); entries sharing a name get `_i`.
    """

    entries: tuple[tuple[Objective, float], ...]
    granularity: str = "example"

    def __post_init__(self):
        entries = tuple((obj, float(w)) for obj, w in self.entries)
        if not entries:
            raise ObjectiveError("Mixture needs at least one (objective, weight) entry")
        weights = np.array([w for _, w in entries])
        if (weights < 0).any() or weights.sum() <= 0:
            raise ObjectiveError(f"Mixture weights must be >= 0 with a positive sum, got {weights.tolist()}")
        if self.granularity not in ("example", "batch"):
            raise ObjectiveError(f"Mixture.granularity must be 'example' or 'batch', got {self.granularity!r}")
        object.__setattr__(self, "entries", entries)
        object.__setattr__(self, "_probs", weights / weights.sum())

    @property
    def objectives(self) -> tuple[Objective, ...]:
        return tuple(obj for obj, _ in self.entries)

    @property
    def probabilities(self) -> np.ndarray:
        return self._probs.copy()

    @property
    def task_names(self) -> tuple[str, ...]:
        names = [obj.task_name for obj in self.objectives]
        return tuple(n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names))

    @property
    def name(self) -> str:
        """What the whole mixture's metrics are logged under (`eval/NAME/loss`): see `mixture_name`."""
        return mixture_name(self.task_names)

    def max_residues(self, encoder_length: int, decoder_length: int, num_sentinels: int) -> np.ndarray:
        """int64 [num objectives]: the longest sequence each entry fits into a (Le, Ld) batch."""
        return np.array([obj.max_residues(encoder_length, decoder_length, num_sentinels) for obj in self.objectives])

    def needed_lengths(self, num_residues: int, num_sentinels: int) -> tuple[int, int]:
        """(encoder, decoder) tokens that every entry needs for sequences cut to `num_residues`."""
        needs = [obj.needed_lengths(num_residues, num_sentinels) for obj in self.objectives]
        return max(n[0] for n in needs), max(n[1] for n in needs)

    def draw_tasks(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """int32 [B]: the entry index of each example."""
        if self.granularity == "batch":
            return np.full(batch_size, rng.choice(len(self._probs), p=self._probs), np.int32)
        return rng.choice(len(self._probs), size=batch_size, p=self._probs).astype(np.int32)

    def apply(self, tokens: np.ndarray, lengths: np.ndarray, tasks: np.ndarray, rng: np.random.Generator,
              tokenizer: Tokens, encoder_length: int, decoder_length: int):
        """Runs each entry on its rows (vectorised per entry) -> (inputs [B, Le], targets [B, Ld])."""
        lengths = np.asarray(lengths, np.int64)
        inputs = np.zeros((len(lengths), encoder_length), np.int32)
        targets = np.zeros((len(lengths), decoder_length), np.int32)
        for index, objective in enumerate(self.objectives):
            rows = np.flatnonzero(tasks == index)
            if rows.size:
                width = max(int(lengths[rows].max()), 1)
                inputs[rows], targets[rows] = objective.apply(
                    tokens[rows, :width], lengths[rows], rng, tokenizer, encoder_length, decoder_length)
        return inputs, targets
