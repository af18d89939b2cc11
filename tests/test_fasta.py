"""Tests for ankh3/data/fasta.py: the streaming FASTA reader."""
import collections
import gzip
import inspect
import lzma

import pytest

from ankh3.data.fasta import FastaError, Record, read_fasta

TEXT = """>sp|P1 first protein OS=Homo sapiens
MKTAYIAKQR
QISFVKSHFS

>P2
ACDEFGHIKLMNPQRSTVWY
>P3\tdesc with tab
XUBZO
"""
EXPECTED = [
    Record("sp|P1", "MKTAYIAKQRQISFVKSHFS", "first protein OS=Homo sapiens"),
    Record("P2", "ACDEFGHIKLMNPQRSTVWY", ""),
    Record("P3", "XUBZO", "desc with tab"),
]
OPENERS = {"plain.fasta": open, "gz.fasta.gz": gzip.open, "xz.fasta.xz": lzma.open}


def write(path, text, opener=open):
    with opener(path, "wt") as f:
        f.write(text)
    return path


@pytest.mark.parametrize("filename", sorted(OPENERS))
def test_reads_plain_gzip_and_xz(tmp_path, filename):
    path = write(tmp_path / filename, TEXT, OPENERS[filename])
    assert list(read_fasta(path)) == EXPECTED


def test_compression_is_told_by_content_not_suffix(tmp_path):
    path = write(tmp_path / "no_suffix.fa", TEXT, gzip.open)
    assert list(read_fasta(path)) == EXPECTED


def test_windows_line_endings(tmp_path):
    path = tmp_path / "crlf.fa"
    path.write_bytes(TEXT.replace("\n", "\r\n").encode())
    assert list(read_fasta(path)) == EXPECTED


@pytest.mark.parametrize(
    "text, line, words",
    [
        (">A\nMK\n>B\n>C\nMK\n", 3, ["'B'", "no residues"]),  # empty record in the middle
        (">A\nMK\n>LAST\n\n", 3, ["'LAST'", "no residues"]),  # empty record at the end
        ("MKV\n>A\nMK\n", 1, ["before the first header"]),  # residues with no header
        (">A\nMK\n>  \nMK\n", 3, ["empty FASTA header"]),
        (">ok\nMKV\n>bad\nMKV1#Q\n", 4, ["record 'bad'", "'1' at residue 4", "not an amino-acid letter"]),
        (">gap\nMKV\nQR-ST\n", 3, ["record 'gap'", "'-' at residue 6"]),  # position counts earlier lines
        (">mid\nMK*VL\n", 2, ["record 'mid'", "'*' at residue 3"]),
        (">mid\nMKV*\nLLL\n", 2, ["record 'mid'", "'*' at residue 4, before its end"]),
        (">dot\nMK.VL\n", 2, ["'.' at residue 3"]),
        (">utf\nMKÅV\n", 2, ["'Å' at residue 3"]),
    ],
)
def test_bad_fasta_names_file_line_and_record(tmp_path, text, line, words):
    path = write(tmp_path / "bad.fa", text)
    with pytest.raises(FastaError) as err:
        list(read_fasta(path))
    message = str(err.value)
    assert f"{path}:{line}:" in message
    for w in words:
        assert w in message
    assert "\n" not in message


def test_missing_file(tmp_path):
    with pytest.raises(FastaError, match="cannot open FASTA file .*missing.fa"):
        list(read_fasta(tmp_path / "missing.fa"))


def test_truncated_xz_is_a_fasta_error(tmp_path):
    data = lzma.compress((">A\n" + "MK" * 50_000 + "\n").encode())
    path = tmp_path / "cut.fa.xz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FastaError, match="corrupt or truncated"):
        list(read_fasta(path))


def test_reader_streams_records_before_reaching_a_later_defect(tmp_path):
    # A large file whose defect is at the very end: the first records must come out before it is reached.
    good = "".join(f">R{i}\n{'ACDEFGHIKL' * 30}\n" for i in range(20_000))  # ~6.5 MB, far beyond any buffer
    path = write(tmp_path / "big.fa", good + ">BROKEN\n")
    records = read_fasta(path)
    assert inspect.isgenerator(records)
    first = next(records)
    assert first == Record("R0", "ACDEFGHIKL" * 30)
    assert sum(1 for _ in zip(range(19_999), records)) == 19_999
    with pytest.raises(FastaError, match="'BROKEN'"):
        next(records)


def test_long_sequence_over_many_lines(tmp_path):
    sequence = "ACDEFGHIKLMNPQRSTVWY" * 10_000
    lines = "\n".join(sequence[i : i + 60] for i in range(0, len(sequence), 60))
    path = write(tmp_path / "long.fa.xz", f">L\n{lines}\n", lzma.open)
    assert list(read_fasta(path)) == [Record("L", sequence)]


def test_terminal_stop_is_stripped_and_letters_of_any_case_kept(tmp_path):
    path = write(tmp_path / "stop.fa", ">A\nMKV\nLQ*\n>B\nmkv*\n>C grouped\nMKV LLQ\n")
    assert list(read_fasta(path)) == [Record("A", "MKVLQ"), Record("B", "mkv"), Record("C", "MKVLLQ", "grouped")]


def test_nonstandard_residues_are_counted_by_letter(tmp_path):
    path = write(tmp_path / "odd.fa", TEXT + ">P4\nMKXXbJ\n")
    counts = collections.Counter()
    assert len(list(read_fasta(path, counts))) == 4
    assert counts == {"X": 3, "U": 1, "B": 2, "Z": 1, "O": 1, "J": 1}


def test_bundled_pretraining_data_reads():
    counts = collections.Counter()
    assert sum(1 for _ in read_fasta("data/pretrain/valid.fasta.xz", counts)) == 1490
    assert set(counts) <= set("XBZUOJ") and counts["X"] > 0
