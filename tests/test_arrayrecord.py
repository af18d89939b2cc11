"""Tests for ankh3/data/arrayrecord.py: FASTA -> ArrayRecord shards, library and command line."""
import gzip
import json
import lzma
import os
import subprocess
import sys

import numpy as np
import pytest

from ankh3.data.arrayrecord import convert_fasta
from ankh3.data.fasta import FastaError, Record
from ankh3.data.sources import ArrayRecordSource, SourceError, open_source

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_records(n, seed=0):
    rng = np.random.default_rng(seed)
    letters = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    return [
        Record(f"P{i:05d}", "".join(rng.choice(letters, rng.integers(5, 200))), "some desc" if i % 3 == 0 else "")
        for i in range(n)
    ]


def write_fasta(path, records, opener=open):
    with opener(path, "wt") as f:
        for r in records:
            header = f"{r.name} {r.description}" if r.description else r.name
            seq = "\n".join(r.sequence[i : i + 60] for i in range(0, len(r.sequence), 60))
            f.write(f">{header}\n{seq}\n")
    return path


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "ankh3.data.arrayrecord", *args],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )


def test_round_trip_gives_same_records_and_counts(tmp_path):
    records = random_records(1000)
    fasta = write_fasta(tmp_path / "in.fa.gz", records, gzip.open)
    meta = convert_fasta(fasta, tmp_path / "out", num_shards=7)

    source = ArrayRecordSource(tmp_path / "out")
    assert len(source) == 1000
    assert sorted(source[i] for i in range(len(source))) == sorted(records)
    with open(tmp_path / "out" / "metadata.json") as f:
        assert json.load(f) == meta
    assert meta["count"] == 1000
    assert meta["residues"] == sum(len(r.sequence) for r in records)
    # Shards are balanced: equal shares within one record.
    sizes = [len(ArrayRecordSource([tmp_path / "out" / s])) for s in meta["shards"]]
    assert len(sizes) == 7 and max(sizes) - min(sizes) <= 1 and sum(sizes) == 1000


def test_more_shards_than_records(tmp_path):
    records = random_records(3)
    convert_fasta(write_fasta(tmp_path / "in.fa", records), tmp_path / "out", num_shards=5)
    source = open_source(tmp_path / "out")
    assert sorted(source[i] for i in range(len(source))) == sorted(records)


def test_refuses_a_directory_that_already_holds_shards(tmp_path):
    fasta = write_fasta(tmp_path / "in.fa", random_records(10))
    convert_fasta(fasta, tmp_path / "out", num_shards=2)
    with pytest.raises(SourceError, match="already holds shards"):
        convert_fasta(fasta, tmp_path / "out", num_shards=2)


def test_bad_input_is_found_before_anything_is_written(tmp_path):
    fasta = tmp_path / "bad.fa"
    write_fasta(fasta, random_records(50))
    with open(fasta, "a") as f:
        f.write(">EMPTY\n")
    with pytest.raises(FastaError, match="'EMPTY'"):
        convert_fasta(fasta, tmp_path / "out", num_shards=3)
    assert not os.path.exists(tmp_path / "out")


def test_interrupted_conversion_leaves_nothing_that_looks_complete(tmp_path):
    fasta = write_fasta(tmp_path / "in.fa", random_records(100))

    def interrupt_while_writing(message):
        if message.startswith("wrote"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert_fasta(fasta, tmp_path / "out", num_shards=3, progress=interrupt_while_writing, progress_every=40)
    assert os.listdir(tmp_path / "out") == []
    with pytest.raises(SourceError, match="not a finished conversion"):
        open_source(tmp_path / "out")
    convert_fasta(fasta, tmp_path / "out", num_shards=3)  # a rerun into the same directory works
    assert len(open_source(tmp_path / "out")) == 100


def test_cli_converts_and_prints_a_summary(tmp_path):
    fasta = write_fasta(tmp_path / "in.fa.xz", random_records(20), lzma.open)
    result = run_cli(f"--fasta={fasta}", f"--out={tmp_path / 'out'}", "--shards=2")
    assert result.returncode == 0, result.stderr
    assert "wrote 20 records" in result.stdout
    assert len(open_source(tmp_path / "out")) == 20


@pytest.mark.parametrize("content", [">A\nMK\n>B\n", "MKV\n", ">bad\nMKV1#Q\n", None])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, content):
    fasta = tmp_path / "bad.fa"
    if content is not None:
        fasta.write_text(content)
    result = run_cli(f"--fasta={fasta}", f"--out={tmp_path / 'out'}", "--shards=2")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert str(fasta) in lines[0]
    assert not os.path.exists(tmp_path / "out" / "metadata.json")


@pytest.mark.parametrize("args, message", [
    (["--out=o"], "the following arguments are required: --fasta"),
    (["--fasta=x.fa", "--out=o", "--shards=many"], "argument --shards: invalid int value: 'many'"),
    (["--fasta=x.fa", "--out=o", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_cli_bad_usage_exits_2_with_one_line(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {message}; see python -m ankh3.data.arrayrecord --help"]


def test_cli_help_lists_flags_and_an_example():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "--fasta" in result.stdout and "--shards" in result.stdout
    assert "examples:\n  python -m ankh3.data.arrayrecord --fasta=" in result.stdout


def test_nonstandard_residues_are_reported(tmp_path):
    fasta = write_fasta(tmp_path / "in.fa", [Record("A", "MKXXVU"), Record("B", "BZO*")])
    result = run_cli(f"--fasta={fasta}", f"--out={tmp_path / 'out'}", "--shards=1")
    assert result.returncode == 0, result.stderr
    assert "non-standard: B 1, O 1, U 1, X 2, Z 1" in result.stdout
    with open(tmp_path / "out" / "metadata.json") as f:
        assert json.load(f)["nonstandard_residues"] == {"B": 1, "O": 1, "U": 1, "X": 2, "Z": 1}
    source = open_source(tmp_path / "out")
    assert sorted(source[i].sequence for i in range(len(source))) == ["BZO", "MKXXVU"]  # the stop stripped
