"""Objectives: exact round trips, T5's lengths and span statistics, determinism, mixtures."""
import collections
import math

import numpy as np
import pytest

from ankh3.objectives import Completion, Mixture, ObjectiveError, SpanCorruption, count_spans, mixture_name
from ankh3.tokenizer import Tokenizer
from experiments.common import UL2_X_DENOISERS

TOKENIZER = Tokenizer.default()
RESIDUE_IDS = np.array([TOKENIZER.encode(c)[0] for c in "ACDEFGHIKLMNPQRSTVWY"], np.int32)


def random_batch(rng, rows, lo, hi):
    """Zero-padded random residue ids [rows, max length] and their lengths."""
    lengths = rng.integers(lo, hi + 1, rows)
    tokens = np.zeros((rows, lengths.max()), np.int32)
    for row, size in enumerate(lengths):
        tokens[row, :size] = rng.choice(RESIDUE_IDS, size)
    return tokens, lengths


def split_row(row):
    """A padded output row -> its tokens up to and including EOS (asserting EOS is there)."""
    ids = row.tolist()
    end = ids.index(TOKENIZER.eos_id)
    assert all(i == 0 for i in ids[end + 1:]), "padding after EOS must be 0"
    return ids[:end]


def rebuild_span_corruption(inputs, targets, tokenizer=TOKENIZER):
    """The original residues from (inputs, targets), checking the sentinel order on the way."""
    sentinel_index = {int(s): k for k, s in enumerate(tokenizer.sentinel_ids)}
    body, answer = split_row(inputs)[1:], split_row(targets)
    spans, current = {}, None
    for token in answer:
        if token in sentinel_index:
            current = sentinel_index[token]
            assert current == len(spans), "targets must list sentinels 0, 1, 2, ... in order"
            spans[current] = []
        else:
            spans[current].append(token)
    used = [sentinel_index[t] for t in body if t in sentinel_index]
    assert used == list(range(len(spans))), "inputs must use the same sentinels, in order"
    assert all(spans.values()), "every span holds at least one residue"
    out = []
    for token in body:
        out.extend(spans[sentinel_index[token]] if token in sentinel_index else [token])
    return np.array(out, np.int32), len(spans)


def t5_counts(length, density, mean_span):
    """T5's random_spans_noise_mask counts, written out independently (Python's round is half-to-even too)."""
    noise = min(max(round(length * density), 1), length - 1)
    return noise, max(round(noise / mean_span), 1)


# ---- span corruption ----------------------------------------------------------------------------------
def test_span_corruption_round_trips_thousands_of_sequences_and_lengths_match_formula():
    rng = np.random.default_rng(0)
    checked = 0
    for trial in range(60):
        density = float(rng.choice([0.05, 0.15, 0.3, 0.5, 0.8]))
        mean_span = float(rng.choice([1, 2, 3, 8, 32, 64]))
        objective = SpanCorruption(density, mean_span, task_token=str(rng.choice(["[NLU]", "[NLG]"])))
        tokens, lengths = random_batch(rng, 64, 2, 400)
        ins, outs = objective.lengths(lengths, TOKENIZER.num_sentinels)
        inputs, targets = objective.apply(tokens, lengths, rng, TOKENIZER, int(ins.max()) + 3, int(outs.max()) + 2)
        assert inputs.shape == (64, ins.max() + 3) and targets.shape == (64, outs.max() + 2)
        assert inputs.dtype == targets.dtype == np.int32
        for row in range(64):
            original, spans = rebuild_span_corruption(inputs[row], targets[row])
            np.testing.assert_array_equal(original, tokens[row, :lengths[row]])
            assert inputs[row, 0] == TOKENIZER.task_id(objective.task_token)
            assert len(split_row(inputs[row])) + 1 == ins[row] and len(split_row(targets[row])) + 1 == outs[row]
            assert spans == min(t5_counts(lengths[row], density, mean_span)[1], lengths[row] -
                                t5_counts(lengths[row], density, mean_span)[0], TOKENIZER.num_sentinels)
            checked += 1
    assert checked == 3840


def test_single_sequence_call_matches_the_t5_counts_and_starts_with_non_noise():
    rng = np.random.default_rng(1)
    for length in (2, 3, 7, 100, 511):
        sequence = rng.choice(RESIDUE_IDS, length).astype(np.int32)
        inputs, targets = SpanCorruption(0.15, 3.0)(sequence, rng, TOKENIZER)
        noise, spans = t5_counts(length, 0.15, 3.0)
        spans = min(spans, length - noise)
        assert len(targets) == noise + spans + 1 and len(inputs) == length - noise + spans + 2
        # T5 interleaves non-noise first and ends on a noise span
        assert inputs[1] in RESIDUE_IDS and inputs[-2] in TOKENIZER.sentinel_ids
        assert targets[0] == TOKENIZER.sentinel_ids[0]
        np.testing.assert_array_equal(rebuild_span_corruption(np.append(inputs, 0), np.append(targets, 0))[0], sequence)


def test_count_spans_is_t5s_formula_with_documented_caps():
    lengths = np.arange(2, 700)
    for density in (0.15, 0.3, 0.5):
        for mean_span in (1.0, 3.0, 32.0):
            noise, clean, spans = count_spans(lengths, density, mean_span, num_sentinels=10**6)
            for length, n, c, k in zip(lengths, noise, clean, spans):
                t5_noise, t5_spans = t5_counts(int(length), density, mean_span)
                assert (n, c, k) == (t5_noise, length - t5_noise, min(t5_spans, length - t5_noise))


def runs_between_sentinels(tokens, leading_sentinel):
    """Lengths of the runs separated by sentinels: targets start with one, inputs end with one."""
    sentinels = set(TOKENIZER.sentinel_ids.tolist())
    runs, current = [], 0
    for t in tokens:
        if t in sentinels:
            runs.append(current)
            current = 0
        else:
            current += 1
    runs.append(current)
    return runs[1:] if leading_sentinel else runs[:-1]


def test_noise_fraction_and_span_lengths_follow_the_settings():
    rng = np.random.default_rng(2)
    for density, mean_span in ((0.15, 3.0), (0.3, 1.0), (0.5, 32.0)):
        tokens, lengths = random_batch(rng, 512, 200, 600)
        _, targets = SpanCorruption(density, mean_span).apply(tokens, lengths, rng, TOKENIZER, 700, 700)
        spans = [runs_between_sentinels(split_row(t), leading_sentinel=True) for t in targets]
        noise = sum(sum(r) for r in spans)
        assert abs(noise / lengths.sum() - density) < 0.005
        assert abs(noise / sum(len(r) for r in spans) - mean_span) / mean_span < 0.05


def test_span_lengths_are_uniform_compositions():
    """Composition of n into k parts uniformly: P(a part has j items) = C(n-j-1, k-2) / C(n-1, k-1)."""
    rng = np.random.default_rng(3)
    length, density, mean_span = 200, 0.15, 3.0  # 30 noise residues in 10 spans, 170 others in 10 runs
    tokens, lengths = random_batch(rng, 3000, length, length)
    inputs, targets = SpanCorruption(density, mean_span).apply(tokens, lengths, rng, TOKENIZER, 200, 60)
    noise_runs = sum((runs_between_sentinels(split_row(t), True) for t in targets), [])
    clean_runs = sum((runs_between_sentinels(split_row(i)[1:], False) for i in inputs), [])
    for observed, (n, k) in ((noise_runs, (30, 10)), (clean_runs, (170, 10))):
        assert len(observed) == 3000 * k and min(observed) >= 1
        frequency = np.bincount(observed, minlength=n + 1) / len(observed)
        expected = np.array([math.comb(n - j - 1, k - 2) / math.comb(n - 1, k - 1) if 1 <= j <= n - k + 1 else 0.0
                             for j in range(n + 1)])
        assert np.abs(frequency[:n + 1] - expected).max() < 0.01
        assert abs(np.mean(observed) - n / k) < 1e-9  # every composition sums to n


@pytest.mark.parametrize("length, density, mean_span, parts", [
    (30, 0.3, 3.0, 3),  # 9 noise residues in 3 spans, 21 others in 3 runs: few cuts among many gaps
    (20, 0.5, 2.0, 5),  # 10 and 10 in 5 parts each: many cuts among few gaps
])
def test_every_composition_is_equally_likely(length, density, mean_span, parts):
    rng = np.random.default_rng(15)
    tokens, lengths = random_batch(rng, 30000, length, length)
    inputs, targets = SpanCorruption(density, mean_span).apply(tokens, lengths, rng, TOKENIZER, 40, 40)
    noise = round(length * density)
    for runs, total in ((
            [tuple(runs_between_sentinels(split_row(t), True)) for t in targets], noise),
            ([tuple(runs_between_sentinels(split_row(i)[1:], False)) for i in inputs], length - noise)):
        outcomes = math.comb(total - 1, parts - 1)
        counts = np.array(list(collections.Counter(runs).values()))
        assert len(counts) == outcomes and all(len(r) == parts and sum(r) == total for r in set(runs))
        expected = len(runs) / outcomes
        chi2 = ((counts - expected) ** 2 / expected).sum()
        assert chi2 < outcomes + 6 * math.sqrt(2 * outcomes)  # mean df, sd sqrt(2 df)


def test_same_generator_state_gives_same_corruption_and_another_differs():
    tokens, lengths = random_batch(np.random.default_rng(4), 32, 50, 300)
    objective = SpanCorruption((0.15, 0.2, 0.3), 3.0)
    first = objective.apply(tokens, lengths, np.random.default_rng([7, 1]), TOKENIZER, 400, 300)
    again = objective.apply(tokens, lengths, np.random.default_rng([7, 1]), TOKENIZER, 400, 300)
    other = objective.apply(tokens, lengths, np.random.default_rng([7, 2]), TOKENIZER, 400, 300)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])


def test_density_is_drawn_per_batch_or_per_example():
    rng = np.random.default_rng(5)
    tokens, lengths = random_batch(rng, 64, 100, 100)  # 100 residues: noise counts 15, 20 or 30
    for granularity, expect_mixed in (("batch", False), ("example", True)):
        objective = SpanCorruption((0.15, 0.2, 0.3), 1.0, density_granularity=granularity)
        seen_per_batch = []
        for _ in range(20):
            _, targets = objective.apply(tokens, lengths, rng, TOKENIZER, 200, 200)
            noise = {len(split_row(t)) // 2 for t in targets}  # mu=1: a sentinel and one residue per span
            assert noise <= {15, 20, 30}
            seen_per_batch.append(noise)
        assert any(len(s) > 1 for s in seen_per_batch) == expect_mixed
        assert set().union(*seen_per_batch) == {15, 20, 30}


def test_spans_are_capped_at_the_number_of_sentinels():
    small = Tokenizer.default(40)  # 9 sentinels
    rng = np.random.default_rng(6)
    tokens, lengths = random_batch(rng, 16, 150, 200)
    objective = SpanCorruption(0.3, 1.0)
    ins, outs = objective.lengths(lengths, small.num_sentinels)
    inputs, targets = objective.apply(tokens, lengths, rng, small, int(ins.max()), int(outs.max()))
    for row in range(16):
        original, spans = rebuild_span_corruption(inputs[row], targets[row], small)
        np.testing.assert_array_equal(original, tokens[row, :lengths[row]])
        assert spans == small.num_sentinels == 9


def test_sentinels_that_do_not_count_down_are_used_by_index():
    base = Tokenizer.default()
    pieces = dict(enumerate(base.pieces))
    ids = base.sentinel_ids.copy()
    order = np.random.default_rng(0).permutation(len(ids))
    for k, i in enumerate(ids):  # move <extra_id_k> to a shuffled slot
        pieces[int(ids[order[k]])] = f"<extra_id_{k}>"
    shuffled = Tokenizer.from_pieces(pieces)
    assert not np.array_equal(np.diff(shuffled.sentinel_ids), -np.ones(len(ids) - 1))
    rng = np.random.default_rng(7)
    tokens, lengths = random_batch(rng, 32, 20, 300)
    inputs, targets = SpanCorruption(0.3, 2.0).apply(tokens, lengths, rng, shuffled, 400, 400)
    for row in range(32):
        np.testing.assert_array_equal(rebuild_span_corruption(inputs[row], targets[row], shuffled)[0],
                                      tokens[row, :lengths[row]])


def x_denoiser(settings=UL2_X_DENOISERS, **kwargs):
    densities, spans = zip(*settings)
    return SpanCorruption(densities, spans, "[NLG]", density_granularity="example", **kwargs)


def test_x_denoiser_draws_one_paired_setting_per_sequence():
    objective = x_denoiser()
    assert objective.task_name == "nlg" and objective.settings == UL2_X_DENOISERS
    rng = np.random.default_rng(8)
    tokens, lengths = random_batch(rng, 400, 512, 512)
    inputs, targets = objective.apply(tokens, lengths, rng, TOKENIZER, 600, 600)
    assert (inputs[:, 0] == TOKENIZER.task_id("[NLG]")).all()
    # each row's (noise, spans) is one of the four UL2 settings' counts, never a density with another's span
    expected = {tuple(int(v) for v in count_spans(512, r, mu, TOKENIZER.num_sentinels)[::2]) for r, mu in UL2_X_DENOISERS}
    seen = collections.Counter()
    for row in range(len(tokens)):
        target = split_row(targets[row])
        spans = int(np.isin(target, TOKENIZER.sentinel_ids).sum())
        seen[(len(target) - spans, spans)] += 1
    assert set(seen) == expected and min(seen.values()) > 60  # all four, each ~100 of 400


def test_span_lengths_must_pair_with_densities():
    with pytest.raises(ObjectiveError, match="one per density"):
        SpanCorruption((0.5, 0.15), (3.0, 8.0, 64.0))


@pytest.mark.parametrize("objective", [SpanCorruption((0.15, 0.3), 3.0), SpanCorruption(0.15, 1.0),
                                       x_denoiser(), Completion(0.5), Completion((0.2, 0.8))])
def test_max_residues_is_the_longest_length_that_always_fits(objective):
    enc, dec = 128, 64
    longest = objective.max_residues(enc, dec, TOKENIZER.num_sentinels)
    settings = objective.settings if isinstance(objective, SpanCorruption) else [(f,) for f in objective.fraction_bounds]

    def fits(length):
        sizes = [objective.lengths(length, TOKENIZER.num_sentinels, *s) for s in settings]
        return all(i <= enc and o <= dec for i, o in sizes)
    assert all(fits(n) for n in range(2, longest + 1)) and not fits(longest + 1)
    rng = np.random.default_rng(9)
    tokens, lengths = random_batch(rng, 8, longest, longest)
    objective.apply(tokens, lengths, rng, TOKENIZER, enc, dec)  # sequences that long always fit
    too_long, lengths = random_batch(rng, 8, 2 * longest, 2 * longest)
    with pytest.raises(ObjectiveError, match="crop sequences"):
        objective.apply(too_long, lengths, rng, TOKENIZER, enc, dec)


# ---- completion -----------------------------------------------------------------------------------------
def test_completion_splits_the_sequence_at_the_fraction():
    rng = np.random.default_rng(10)
    sequence = rng.choice(RESIDUE_IDS, 101).astype(np.int32)
    inputs, targets = Completion(0.5)(sequence, rng, TOKENIZER)
    tail = 50  # int(101 * 0.5): the encoder gets the larger half, as the Ankh3 model card cuts
    np.testing.assert_array_equal(inputs, np.r_[TOKENIZER.task_id("[S2S]"), sequence[:101 - tail], TOKENIZER.eos_id])
    np.testing.assert_array_equal(targets, np.r_[sequence[101 - tail:], TOKENIZER.eos_id])


@pytest.mark.parametrize("length,fraction,head,tail", [(512, 0.5, 256, 256), (103, 0.5, 52, 51), (101, 0.25, 76, 25),
                                                      (10, 0.75, 3, 7), (2, 0.5, 1, 1), (3, 0.1, 2, 1)])
def test_completion_gives_the_decoder_int_of_the_fraction(length, fraction, head, tail):
    sequence = np.random.default_rng(length).choice(RESIDUE_IDS, length).astype(np.int32)
    inputs, targets = Completion(fraction)(sequence, np.random.default_rng(0), TOKENIZER)
    assert (len(inputs) - 2, len(targets) - 1) == (head, tail)
    assert Completion(fraction).needed_lengths(length) == (head + 2, tail + 1)


def test_needed_lengths_hold_every_shorter_sequence():
    for objective in (SpanCorruption((0.15, 0.3)), x_denoiser(), Completion((0.25, 0.75))):
        need_in, need_out = objective.needed_lengths(200, TOKENIZER.num_sentinels)
        assert objective.max_residues(need_in, need_out, TOKENIZER.num_sentinels) >= 200
        # one token fewer on either side no longer holds every sequence up to 200 residues
        assert objective.max_residues(need_in - 1, need_out, TOKENIZER.num_sentinels) < 200
        assert objective.max_residues(need_in, need_out - 1, TOKENIZER.num_sentinels) < 200


def test_completion_with_a_range_draws_the_fraction_per_sequence():
    rng = np.random.default_rng(11)
    tokens, lengths = random_batch(rng, 2000, 100, 300)
    objective = Completion((0.2, 0.8))
    inputs, targets = objective.apply(tokens, lengths, rng, TOKENIZER, 400, 400)
    fractions = []
    for row in range(len(tokens)):
        head, tail = split_row(inputs[row])[1:], split_row(targets[row])
        np.testing.assert_array_equal(np.r_[head, tail], tokens[row, :lengths[row]])
        fractions.append(len(tail) / lengths[row])
    fractions = np.array(fractions)
    assert fractions.min() >= 0.2 - 0.01 and fractions.max() <= 0.8 + 0.01
    assert abs(fractions.mean() - 0.5) < 0.02 and abs(np.mean(fractions < 0.35) - 0.25) < 0.04


# ---- mixtures -------------------------------------------------------------------------------------------------
def test_mixture_draws_objectives_per_example_in_proportion_to_weights():
    mixture = Mixture(((Completion(0.5), 1.0), (SpanCorruption(0.15), 3.0)), granularity="example")
    tasks = mixture.draw_tasks(20000, np.random.default_rng(12))
    assert abs(np.mean(tasks == 1) - 0.75) < 0.015
    np.testing.assert_allclose(mixture.probabilities, [0.25, 0.75])


def test_mixture_per_batch_gives_every_example_of_a_batch_the_same_objective():
    mixture = Mixture(((Completion(0.5), 1.0), (SpanCorruption(0.15), 1.0), (x_denoiser(), 2.0)), granularity="batch")
    rng = np.random.default_rng(13)
    draws = [mixture.draw_tasks(16, rng) for _ in range(4000)]
    assert all(len(set(d.tolist())) == 1 for d in draws)
    share = np.bincount([d[0] for d in draws], minlength=3) / len(draws)
    np.testing.assert_allclose(share, [0.25, 0.25, 0.5], atol=0.025)


def test_mixture_apply_routes_rows_to_their_objective_and_names_tasks():
    mixture = Mixture(((Completion(0.5), 0.5), (SpanCorruption((0.15, 0.2, 0.3), 3.0), 0.5)))
    assert mixture.task_names == ("s2s", "nlu") and mixture.name == "mix_s2s_nlu"
    rng = np.random.default_rng(14)
    tokens, lengths = random_batch(rng, 64, 20, 120)
    tasks = mixture.draw_tasks(64, rng)
    inputs, targets = mixture.apply(tokens, lengths, tasks, rng, TOKENIZER, 130, 130)
    for row in range(64):
        token = inputs[row, 0]
        if tasks[row] == 0:
            assert token == TOKENIZER.task_id("[S2S]")
            restored = np.r_[split_row(inputs[row])[1:], split_row(targets[row])]
        else:
            assert token == TOKENIZER.task_id("[NLU]")
            restored = rebuild_span_corruption(inputs[row], targets[row])[0]
        np.testing.assert_array_equal(restored, tokens[row, :lengths[row]])


def test_entries_sharing_a_task_token_get_distinct_names():
    mixture = Mixture(((SpanCorruption(0.15), 1.0), (SpanCorruption(0.5, 32.0), 1.0), (Completion(), 1.0)))
    assert mixture.task_names == ("nlu_0", "nlu_1", "s2s")
    named = Mixture(((SpanCorruption(0.15, name="mlm"), 1.0), (x_denoiser(name="xden"), 1.0)))
    assert named.task_names == ("mlm", "xden")
    assert mixture_name(("s2s",)) == "s2s"  # one objective: its own name, no second copy of its metrics


@pytest.mark.parametrize("make", [
    lambda: SpanCorruption(0.0), lambda: SpanCorruption(1.0), lambda: SpanCorruption(0.15, 0.5),
    lambda: SpanCorruption(0.15, density_granularity="step"), lambda: Completion(1.0), lambda: Completion((0.8, 0.2)),
    lambda: Mixture(()), lambda: Mixture(((Completion(), -1.0),)), lambda: Mixture(((Completion(), 1.0),), "epoch"),
])
def test_bad_settings_raise_objective_error(make):
    with pytest.raises(ObjectiveError):
        make()


def test_lengths_too_small_for_any_sequence_are_reported():
    with pytest.raises(ObjectiveError, match="cannot hold"):
        SpanCorruption(0.15).max_residues(3, 1, TOKENIZER.num_sentinels)
