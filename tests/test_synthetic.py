"""The synthetic source: the HMM samples what it says, its forward algorithm and entropy rate are right."""
import itertools

import numpy as np
import pytest
from scipy.stats import entropy

from ankh3.data.synthetic import HiddenMarkovModel, SyntheticSource, protein_like_hmm

SMALL = HiddenMarkovModel(np.array([[0.8, 0.2], [0.3, 0.7]]),
                          np.array([[0.6, 0.3, 0.05, 0.05], [0.1, 0.1, 0.4, 0.4]]), "ACDE")


def brute_force_probability(hmm, residues):
    """p(x) as the sum over every hidden state path: independent of the forward algorithm."""
    total = 0.0
    for path in itertools.product(range(len(hmm.emissions)), repeat=len(residues)):
        p = hmm.stationary[path[0]] * hmm.emissions[path[0], residues[0]]
        for t in range(1, len(residues)):
            p *= hmm.transitions[path[t - 1], path[t]] * hmm.emissions[path[t], residues[t]]
        total += p
    return total


def test_forward_algorithm_matches_the_sum_over_state_paths_and_normalises():
    sequences = np.array(list(itertools.product(range(4), repeat=4)))  # all 256 sequences of 4 residues
    forward = np.exp(SMALL.conditional_log_probs(sequences).sum(axis=1))
    assert forward.sum() == pytest.approx(1.0, abs=1e-12)
    for index in (0, 17, 100, 255):
        assert forward[index] == pytest.approx(brute_force_probability(SMALL, sequences[index]), rel=1e-12)


def test_samples_follow_the_probabilities_of_the_forward_algorithm():
    rng = np.random.default_rng(0)
    samples = np.stack([SMALL.sample(3, rng)[1] for _ in range(20_000)])
    codes = samples @ np.array([16, 4, 1])
    observed = np.bincount(codes, minlength=64) / len(codes)
    everything = np.array(list(itertools.product(range(4), repeat=3)))
    expected = np.exp(SMALL.conditional_log_probs(everything).sum(axis=1))
    assert 0.5 * np.abs(observed - expected).sum() < 0.03  # total variation; ~0.02 expected from sampling alone


def test_sampled_states_persist_and_emit_as_specified():
    hmm = protein_like_hmm()
    states, residues = hmm.sample(100_000, np.random.default_rng(1))
    stay = [np.mean(states[1:][states[:-1] == s] == s) for s in range(3)]
    np.testing.assert_allclose(stay, np.diag(hmm.transitions), atol=0.01)
    helix = np.bincount(residues[states == 0], minlength=20) / np.sum(states == 0)
    np.testing.assert_allclose(helix, hmm.emissions[0], atol=0.01)
    np.testing.assert_allclose(np.bincount(states, minlength=3) / len(states), hmm.stationary, atol=0.02)


def test_entropy_rate_matches_closed_forms():
    transitions = np.array([[0.9, 0.1], [0.2, 0.8]])
    same = np.tile([0.5, 0.25, 0.125, 0.125], (2, 1))  # states invisible: residues are i.i.d.
    assert HiddenMarkovModel(transitions, same, "ACDE").entropy_rate() == pytest.approx(entropy(same[0]), abs=0.02)
    disjoint = np.array([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.25, 0.75]])  # each residue reveals its state
    hmm = HiddenMarkovModel(transitions, disjoint, "ACDE")
    pi = hmm.stationary
    exact = pi @ entropy(transitions, axis=1) + pi @ entropy(disjoint, axis=1)
    assert hmm.entropy_rate() == pytest.approx(exact, abs=0.02)


def test_protein_like_entropy_rate_is_far_below_the_unigram_entropy_and_reproducible():
    hmm = protein_like_hmm()
    rate = hmm.entropy_rate()
    assert rate == pytest.approx(hmm.entropy_rate(seed=1), abs=0.02)  # Monte Carlo error is small
    assert rate < hmm.unigram_entropy() - 0.4
    # the state-aware predictor is bounded below by the residue entropy given the state
    assert rate > hmm.stationary @ entropy(hmm.emissions, axis=1)


def test_source_records_are_a_pure_function_of_seed_and_index():
    source = SyntheticSource(protein_like_hmm(), 50, min_length=20, max_length=40, seed=3)
    assert len(source) == 50 and source[7] == source[7] and source[7] != source[8]
    assert source[7] != SyntheticSource(protein_like_hmm(), 50, 20, 40, seed=4)[7]
    assert all(20 <= len(source[i].sequence) <= 40 and source[i].name == f"synthetic-{i}" for i in range(50))
    with pytest.raises(IndexError):
        source[50]
