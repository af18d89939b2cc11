"""Tests for ankh3/data/sources.py, and for the bundled pretraining corpus in data/pretrain/."""
import os

import grain
import pytest

from ankh3.data.arrayrecord import convert_fasta
from ankh3.data.fasta import Record
from ankh3.data.sources import (
    ArrayRecordSource, FastaSource, SourceError, decode_record, encode_record, open_source,
)
from ankh3.tokenizer import Tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLE = os.path.join(REPO, "data", "pretrain")
RECORDS = [Record("A", "MKV"), Record("B", "ACDEFG", "a\tdescription with tab"), Record("C", "W")]


@pytest.fixture
def fasta(tmp_path):
    path = tmp_path / "small.fa"
    path.write_text(">A\nMKV\n>B a\tdescription with tab\nACD\nEFG\n>C\nW\n")
    return path


def test_fasta_source_random_access(fasta):
    source = FastaSource(fasta)
    assert len(source) == 3
    assert [source[i] for i in range(3)] == RECORDS
    assert source[-1] == RECORDS[-1]


def test_open_source_chooses_by_path(fasta, tmp_path):
    assert isinstance(open_source(fasta), FastaSource)
    convert_fasta(fasta, tmp_path / "shards", num_shards=2)
    shards = open_source(tmp_path / "shards")
    assert isinstance(shards, ArrayRecordSource)
    assert sorted(shards[i] for i in range(len(shards))) == RECORDS


def test_sources_feed_grain(fasta, tmp_path):
    convert_fasta(fasta, tmp_path / "shards", num_shards=2)
    for source in (FastaSource(fasta), ArrayRecordSource(tmp_path / "shards")):
        dataset = grain.MapDataset.source(source).shuffle(seed=3)
        assert sorted(dataset) == RECORDS


def test_record_serialisation_round_trip():
    for record in RECORDS:
        assert decode_record(encode_record(record)) == record


def test_missing_path_names_it(tmp_path):
    with pytest.raises(SourceError, match=f"{tmp_path / 'nope.fa'} does not exist"):
        open_source(tmp_path / "nope.fa")


def test_directory_without_metadata_is_refused(tmp_path):
    (tmp_path / "x.array_record").write_bytes(b"")
    with pytest.raises(SourceError, match="not a finished conversion.*ankh3.data.arrayrecord"):
        open_source(tmp_path)


def test_missing_shard_is_named(tmp_path):
    with pytest.raises(SourceError, match="gone.array_record"):
        ArrayRecordSource([tmp_path / "gone.array_record"])


def test_empty_fasta_is_refused(tmp_path):
    (tmp_path / "empty.fa").write_text("\n")
    with pytest.raises(SourceError, match="holds no records"):
        FastaSource(tmp_path / "empty.fa")


# The counts documented in data/README.md.
BUNDLE_COUNTS = {"train": (29_078, 9_853_787), "valid": (1_490, 503_289)}


def test_bundle_parses_with_documented_counts_and_disjoint_splits():
    names = {}
    tokenizer = Tokenizer.default()
    for split, (count, residues) in BUNDLE_COUNTS.items():
        source = open_source(os.path.join(BUNDLE, f"{split}.fasta.xz"))
        records = [source[i] for i in range(len(source))]
        assert len(records) == count
        assert sum(len(r.sequence) for r in records) == residues
        assert all(30 <= len(r.sequence) <= 1000 for r in records)
        for r in records:
            tokenizer.encode(r.sequence, r.name)  # every residue is in the default vocabulary
        names[split] = {r.name for r in records}
        assert len(names[split]) == count
    assert not names["train"] & names["valid"]
