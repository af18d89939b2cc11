"""A synthetic source of protein-like sequences with a known entropy rate, to prove that training learns.

Sequences are drawn from a hidden Markov model whose hidden states are helix-, strand- and coil-like
segments, each with its own residue distribution and persistence. These sequences are synthetic,
not proteins: they exist only so that a test can compare a trained model's loss with the best any
model can do (the entropy rate) and with what residue frequencies alone give (the unigram entropy).
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy.stats import entropy

from ankh3.data.fasta import Record

STANDARD_RESIDUES = "ACDEFGHIKLMNPQRSTVWY"


@dataclasses.dataclass(frozen=True)
class HiddenMarkovModel:
    """States emit residues of `alphabet`: transitions [S, S] and emissions [S, A], rows summing to 1.
    The first state is drawn from the stationary distribution, so the sequence is stationary."""

    transitions: np.ndarray
    emissions: np.ndarray
    alphabet: str = STANDARD_RESIDUES
    state_names: tuple[str, ...] = ()

    def __post_init__(self):
        t, e = np.asarray(self.transitions, np.float64), np.asarray(self.emissions, np.float64)
        if t.shape != (len(e), len(e)) or e.shape[1] != len(self.alphabet):
            raise ValueError(f"transitions {t.shape} and emissions {e.shape} do not match {len(self.alphabet)} residues")
        if not (np.allclose(t.sum(1), 1) and np.allclose(e.sum(1), 1) and (t >= 0).all() and (e >= 0).all()):
            raise ValueError("every row of transitions and emissions must be a probability distribution")
        object.__setattr__(self, "transitions", t)
        object.__setattr__(self, "emissions", e)

    @property
    def stationary(self) -> np.ndarray:
        """[S] the state distribution left unchanged by one transition (eigenvector of eigenvalue 1)."""
        values, vectors = np.linalg.eig(self.transitions.T)
        v = np.real(vectors[:, np.argmin(np.abs(values - 1.0))])
        return v / v.sum()

    def unigram_entropy(self) -> float:
        """Entropy (nats) of the stationary residue frequencies: the loss of a frequency-only predictor."""
        return float(entropy(self.stationary @ self.emissions))

    def sample(self, length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(states, residues) int64 [length]: indices into the states and into `alphabet`."""
        states = np.empty(length, np.int64)
        states[0] = rng.choice(len(self.emissions), p=self.stationary)
        steps = rng.random(length)
        cumulative = np.cumsum(self.transitions, axis=1)
        for t in range(1, length):  # a Markov chain is sequential; lengths here are hundreds
            states[t] = min(np.searchsorted(cumulative[states[t - 1]], steps[t], side="right"), len(cumulative) - 1)
        cumulative = np.cumsum(self.emissions, axis=1)
        picks = (rng.random(length)[:, None] > cumulative[states]).sum(axis=1)
        return states, np.minimum(picks, len(self.alphabet) - 1)

    def conditional_log_probs(self, residues: np.ndarray) -> np.ndarray:
        """log p(x_t | x_<t) for every t of residues int [..., T] (the forward algorithm, normalised
        at each step); summing over t gives the log-likelihood of the whole sequence."""
        residues = np.asarray(residues)
        belief = np.broadcast_to(self.stationary, (*residues.shape[:-1], len(self.emissions)))
        out = np.empty(residues.shape, np.float64)
        for t in range(residues.shape[-1]):
            joint = belief * self.emissions[:, residues[..., t]].T  # p(state, x_t | x_<t)
            p = joint.sum(-1)
            out[..., t] = np.log(p)
            belief = (joint / p[..., None]) @ self.transitions
        return out

    def entropy_rate(self, num_sequences: int = 400, length: int = 500, burn_in: int = 100, seed: int = 0) -> float:
        """Entropy rate (nats per residue), Monte Carlo: -mean log p(x_t | x_<t) over sampled sequences,
        positions past `burn_in` (the conditional entropy has converged there). Error ~1e-2 at defaults."""
        rng = np.random.default_rng(seed)
        residues = np.stack([self.sample(length, rng)[1] for _ in range(num_sequences)])
        return float(-self.conditional_log_probs(residues)[:, burn_in:].mean())

    def to_text(self, residues: np.ndarray) -> str:
        return "".join(np.array(list(self.alphabet))[residues])


def _emissions(favoured: dict[str, float], share: float) -> np.ndarray:
    """A residue distribution: `share` over the favoured residues (by weight), the rest uniform over all 20."""
    row = np.full(len(STANDARD_RESIDUES), (1.0 - share) / len(STANDARD_RESIDUES))
    total = sum(favoured.values())
    for residue, weight in favoured.items():
        row[STANDARD_RESIDUES.index(residue)] += share * weight / total
    return row


def protein_like_hmm(share: float = 0.95) -> HiddenMarkovModel:
    """Helix-, strand- and coil-like states with residue preferences after Chou-Fasman propensities
    and segment lengths of ~12, ~6 and ~7 residues. `share` is each state's mass on its own residues."""
    helix = _emissions({"A": 3, "L": 3, "E": 3, "K": 2, "M": 1, "Q": 1, "R": 1}, share)
    strand = _emissions({"V": 3, "I": 3, "Y": 2, "F": 2, "W": 1, "T": 2, "C": 1}, share)
    coil = _emissions({"G": 3, "P": 3, "N": 2, "D": 2, "S": 2, "H": 1}, share)
    transitions = np.array([[0.92, 0.02, 0.06],
                            [0.03, 0.83, 0.14],
                            [0.08, 0.06, 0.86]])
    return HiddenMarkovModel(transitions, np.stack([helix, strand, coil]), STANDARD_RESIDUES,
                             ("helix", "strand", "coil"))


@dataclasses.dataclass(frozen=True)
class SyntheticSource:
    """Random-access synthetic records (like ankh3.data.sources): record i is a pure function of
    (seed, i), its length uniform in [min_length, max_length], its name 'synthetic-i'."""

    hmm: HiddenMarkovModel
    num_records: int
    min_length: int = 64
    max_length: int = 64
    seed: int = 0

    def __len__(self) -> int:
        return self.num_records

    def __getitem__(self, index: int) -> Record:
        if not 0 <= index < self.num_records:
            raise IndexError(f"synthetic record {index} of {self.num_records}")
        rng = np.random.default_rng([self.seed, index])
        length = int(rng.integers(self.min_length, self.max_length + 1))
        return Record(f"synthetic-{index}", self.hmm.to_text(self.hmm.sample(length, rng)[1]), "")
