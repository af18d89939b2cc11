"""The unigram floor: residue counts and their entropy over a bounded sample of a source."""
import numpy as np
import pytest

from ankh3.data.frequencies import residue_counts, unigram_entropy
from ankh3.data.sources import open_source
from ankh3.data.synthetic import SyntheticSource, protein_like_hmm
from ankh3.tokenizer import Tokenizer

TOKENIZER = Tokenizer.default()


def test_unigram_entropy_of_a_synthetic_source_is_its_stationary_residue_entropy():
    hmm = protein_like_hmm()
    source = SyntheticSource(hmm, 1_000, 200, 200, seed=0)
    assert unigram_entropy(source, TOKENIZER) == pytest.approx(hmm.unigram_entropy(), abs=0.01)


def test_counts_cover_every_residue_of_a_small_source_and_a_bounded_sample_of_a_large_one():
    source = SyntheticSource(protein_like_hmm(), 30, 10, 50, seed=1)
    counts = residue_counts(source, TOKENIZER)
    assert counts.sum() == sum(len(source[i].sequence) for i in range(30))
    sample = residue_counts(source, TOKENIZER, max_records=10, seed=2)
    assert sample.sum() < counts.sum() and np.array_equal(sample, residue_counts(source, TOKENIZER, max_records=10,
                                                                                  seed=2))


def test_the_bundled_training_data_sits_just_below_uniform_over_20_residues():
    entropy = unigram_entropy(open_source("data/pretrain/valid.fasta.xz"), TOKENIZER, max_records=500)
    assert 2.8 < entropy < np.log(20)  # Swiss-Prot's composition is ~0.1 nats from uniform
