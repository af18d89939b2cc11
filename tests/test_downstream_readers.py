"""Readers of the published downstream formats, on small files written from the real bundled chains."""
import json
import pickle

import pytest

from ankh3.downstream import readers
from ankh3.downstream.readers import REDUCE_8_TO_3, SSP3, SSP8, TaskDataError
from ankh3.downstream.tasks import load_task


@pytest.fixture(scope="module")
def chains():
    """Three real chains (name, sequence, DSSP 8-state string) from the bundle."""
    data = load_task("ssp8", max_per_split=3)
    return [(ex.name, ex.sequence, "".join(SSP8[i] for i in ex.label)) for ex in data.splits["test"]]


@pytest.fixture(scope="module")
def variants():
    """Six real GB1 variants (sequence, fitness)."""
    data = load_task("gb1", max_per_split=2)
    return [(ex.sequence, ex.label) for split in ("train", "valid", "test") for ex in data.splits[split]]


def spaced(text):
    return " ".join(text)


def to3(dssp8):
    return "".join(REDUCE_8_TO_3[c] for c in dssp8)


def write_netsurfp(path, chains, header="input,dssp3,dssp8,disorder,cb513_mask", disorder=None):
    lines = [header]
    for k, (_, seq, ss8) in enumerate(chains):
        dis = disorder[k] if disorder else ["1.0"] * len(seq)
        mask = " ".join(["1.0"] * len(seq))
        lines.append(",".join([spaced(seq), spaced(to3(ss8)), spaced(ss8), " ".join(dis), mask]))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def write_fasta(path, records):
    path.write_text("".join(f">{name}\n{seq}\n{labels}\n" for name, seq, labels in records))
    return str(path)


# ---- NetSurfP-2.0 / ProtTrans CSV ----------------------------------------------------------------
def test_netsurfp_parses_both_label_sets(chains, tmp_path):
    disorder = [["1.0"] * len(seq) for _, seq, _ in chains]
    disorder[0][:3] = ["0.0"] * 3
    path = write_netsurfp(tmp_path / "CB513.csv", chains, header="input, dssp3, dssp8, disorder, cb513_mask",
                          disorder=disorder)
    q3 = readers.read_netsurfp_csv(path, states=3)
    q8 = readers.read_netsurfp_csv(path, states=8)
    assert [ex.sequence for ex in q3] == [seq for _, seq, _ in chains]
    assert "".join(SSP3[i] for i in q3[1].label) == to3(chains[1][2])
    assert "".join(SSP8[i] for i in q8[1].label) == chains[1][2]
    assert (q3[0].label[:3] == -1).all() and (q3[0].label[3:] >= 0).all()  # disorder 0 -> not scored


def test_netsurfp_cb513_mask_is_optional(chains, tmp_path):
    _, seq, ss8 = chains[0]
    mask = ["0.0"] + ["1.0"] * (len(seq) - 1)
    row = ",".join([spaced(seq), spaced(to3(ss8)), spaced(ss8), " ".join(["1.0"] * len(seq)), " ".join(mask)])
    path = tmp_path / "cb513.csv"
    path.write_text("input,dssp3,dssp8,disorder,cb513_mask\n" + row + "\n")
    assert readers.read_netsurfp_csv(str(path))[0].label[0] >= 0
    assert readers.read_netsurfp_csv(str(path), use_cb513_mask=True)[0].label[0] == -1


def test_netsurfp_length_mismatch_names_line(chains, tmp_path):
    _, seq, ss8 = chains[1]
    path = write_netsurfp(tmp_path / "bad.csv", [chains[0], ("x", seq, ss8[:-1])])  # one label short
    with pytest.raises(TaskDataError, match=rf"bad\.csv:3: dssp3 has {len(seq) - 1} labels for {len(seq)} residues"):
        readers.read_netsurfp_csv(path)


def test_netsurfp_unknown_letter_and_missing_column(chains, tmp_path):
    _, seq, ss8 = chains[0]
    labels = "X" + to3(ss8)[1:]
    path = tmp_path / "letters.csv"
    path.write_text("input,dssp3,dssp8,disorder\n" + ",".join([spaced(seq), spaced(labels), spaced(ss8),
                                                               " ".join(["1"] * len(seq))]) + "\n")
    with pytest.raises(TaskDataError, match=r"letters\.csv:2: unknown label letter 'X'"):
        readers.read_netsurfp_csv(str(path))
    path.write_text("input,dssp8\n" + spaced(seq) + "," + spaced(ss8) + "\n")
    with pytest.raises(TaskDataError, match=r"letters\.csv:1: missing column\(s\) dssp3, disorder"):
        readers.read_netsurfp_csv(str(path))


# ---- TAPE ----------------------------------------------------------------------------------------
def tape_records(variants):
    return [{"primary": seq, "protein_length": len(seq), "log_fluorescence": [y], "num_mutations": 2, "id": str(i)}
            for i, (seq, y) in enumerate(variants)]


def test_tape_json(variants, tmp_path):
    path = tmp_path / "fluorescence_test.json"
    path.write_text(json.dumps(tape_records(variants), indent=1))
    examples = readers.read_tape(str(path))
    assert [(ex.sequence, ex.label) for ex in examples] == [(s, pytest.approx(y)) for s, y in variants]
    assert examples[2].name == "2"


def test_tape_json_non_numeric_target_names_line(variants, tmp_path):
    records = tape_records(variants)
    records[3]["log_fluorescence"] = ["bright"]
    path = tmp_path / "fluorescence_valid.json"
    text = json.dumps(records, indent=1)
    path.write_text(text)
    line = [i for i, t in enumerate(text.splitlines(), start=1) if t.strip() == "{"][3]  # 4th record opens here
    with pytest.raises(TaskDataError, match=rf"fluorescence_valid\.json:{line}: target 'bright' is not a number"):
        readers.read_tape(str(path))


def test_tape_lmdb(variants, tmp_path):
    lmdb = pytest.importorskip("lmdb")
    path = tmp_path / "fluorescence_train.lmdb"
    env = lmdb.open(str(path), map_size=1 << 20)
    with env.begin(write=True) as txn:  # TAPE's layout: pickled records under '0'..'n-1'
        records = tape_records(variants)
        for i, record in enumerate(records):
            txn.put(str(i).encode(), pickle.dumps(record))
        txn.put(b"num_examples", pickle.dumps(len(records)))
    env.close()
    examples = readers.read_tape(str(path))
    assert [ex.sequence for ex in examples] == [s for s, _ in variants]
    assert examples[-1].label == pytest.approx(variants[-1][1])


def test_tape_lmdb_without_package_is_clear(monkeypatch, tmp_path):
    import builtins
    real_import = builtins.__import__

    def no_lmdb(name, *args, **kwargs):
        if name == "lmdb":
            raise ImportError("no lmdb")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lmdb)
    (tmp_path / "x_train.lmdb").mkdir()
    with pytest.raises(TaskDataError, match=r"x_train\.lmdb: reading TAPE \.lmdb needs the lmdb package"):
        readers.read_tape(str(tmp_path / "x_train.lmdb"))


# ---- FLIP ----------------------------------------------------------------------------------------
def test_flip_validation_column(variants, tmp_path):
    rows = ["sequence,target,set,validation"]
    flags = [("train", ""), ("train", "True"), ("train", "False"), ("test", ""), ("train", "True"), ("test", "")]
    rows += [f"{seq},{y},{s},{v}" for (seq, y), (s, v) in zip(variants, flags)]
    path = tmp_path / "four_mutations_sampled.csv"
    path.write_text("\n".join(rows) + "\n")
    splits = readers.read_flip_csv(str(path))
    assert [len(splits[k]) for k in ("train", "valid", "test")] == [2, 2, 2]
    assert splits["valid"][0].sequence == variants[1][0]
    assert splits["test"][1].label == pytest.approx(variants[5][1])


def test_flip_bad_split_and_target(variants, tmp_path):
    (seq, y) = variants[0]
    path = tmp_path / "flip.csv"
    path.write_text(f"sequence,target,set,validation\n{seq},{y},train,\n{seq},{y},holdout,\n")
    with pytest.raises(TaskDataError, match=r"flip\.csv:3: unknown split 'holdout'"):
        readers.read_flip_csv(str(path))
    path.write_text(f"sequence,target,set,validation\n{seq},,train,\n")
    with pytest.raises(TaskDataError, match=r"flip\.csv:2: target '' is not a number"):
        readers.read_flip_csv(str(path))


# ---- plain formats -------------------------------------------------------------------------------
def test_split_csv_gzip(variants, tmp_path):
    import gzip
    path = tmp_path / "gb1.csv.gz"
    splits = ["train", "train", "valid", "valid", "test", "test"]
    with gzip.open(path, "wt") as f:
        f.write("sequence,target,split\n" + "".join(f"{s},{y},{k}\n" for (s, y), k in zip(variants, splits)))
    out = readers.read_split_csv(str(path))
    assert {k: len(v) for k, v in out.items()} == {"train": 2, "valid": 2, "test": 2}
    assert out["valid"][1].label == pytest.approx(variants[3][1])


def test_split_csv_non_numeric_target(variants, tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("sequence,target,split\n" + "".join(f"{s},{y},train\n" for s, y in variants[:2])
                    + f"{variants[2][0]},n/a,test\n")
    with pytest.raises(TaskDataError, match=r"t\.csv:4: target 'n/a' is not a number"):
        readers.read_split_csv(str(path))


def test_labeled_fasta(chains, tmp_path):
    path = write_fasta(tmp_path / "ss.fasta", chains)
    q8 = readers.read_labeled_fasta(path, states=8)
    q3 = readers.read_labeled_fasta(path, states=3)  # 8-state letters reduce to 3 on the way
    assert [ex.name for ex in q8] == [name for name, _, _ in chains]
    assert "".join(SSP8[i] for i in q8[2].label) == chains[2][2]
    assert "".join(SSP3[i] for i in q3[2].label) == to3(chains[2][2])


def test_labeled_fasta_errors(chains, tmp_path):
    name, seq, ss8 = chains[1]
    path = write_fasta(tmp_path / "short.fasta", [chains[0], (name, seq, ss8[:-2])])
    message = rf"short\.fasta:6: label string has {len(seq) - 2} letters for {len(seq)}"
    with pytest.raises(TaskDataError, match=message):
        readers.read_labeled_fasta(path)
    path = write_fasta(tmp_path / "letter.fasta", [(name, seq, "Q" + ss8[1:])])
    with pytest.raises(TaskDataError, match=r"letter\.fasta:3: unknown label letter 'Q'"):
        readers.read_labeled_fasta(path, states=8)
    (tmp_path / "cut.fasta").write_text(f">{name}\n{seq}\n")
    with pytest.raises(TaskDataError, match=r"cut\.fasta:2: incomplete record"):
        readers.read_labeled_fasta(str(tmp_path / "cut.fasta"))


def test_bad_sequence_and_empty_file(chains, tmp_path):
    name, seq, ss8 = chains[0]
    path = write_fasta(tmp_path / "seq.fasta", [(name, seq[:5] + "*" + seq[6:], ss8)])
    with pytest.raises(TaskDataError, match=r"seq\.fasta:2: sequence holds '\*'"):
        readers.read_labeled_fasta(path)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(TaskDataError, match=r"empty\.csv: empty file"):
        readers.read_split_csv(str(tmp_path / "empty.csv"))
    with pytest.raises(TaskDataError, match=r"nope\.json: file not found"):
        readers.read_tape(str(tmp_path / "nope.json"))
