"""Params name the files a run read without this machine's paths: relative inside the repo, digested outside."""
import os

from ankh3.names import REPO_ROOT
from ankh3.provenance import portable_params, portable_path


def test_a_repository_file_is_logged_relative_to_the_repository():
    path = os.path.join(REPO_ROOT, "data", "pretrain", "train.fasta.xz")
    assert portable_path(path) == os.path.join("data", "pretrain", "train.fasta.xz")


def test_an_outside_file_is_its_name_and_a_digest_of_its_contents(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for folder in (a, b, c):
        folder.mkdir()
    (a / "mine.fasta").write_text(">x\nMKV\n")
    (b / "mine.fasta").write_text(">x\nMKV\n")  # the same contents elsewhere: the same name
    (c / "mine.fasta").write_text(">x\nMKW\n")
    names = [portable_path(str(d / "mine.fasta")) for d in (a, b, c)]
    assert names[0] == names[1] != names[2] and names[0].startswith("mine.fasta@sha256:")
    assert str(tmp_path) not in names[0]


def test_a_directory_of_shards_is_digested_whole(tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "s0.array_record").write_bytes(b"0" * 10)
    before = portable_path(str(tmp_path / "shards"))
    (tmp_path / "shards" / "s1.array_record").write_bytes(b"1" * 10)
    assert before != portable_path(str(tmp_path / "shards")) and before.startswith("shards@sha256:")


def test_only_existing_absolute_paths_change(tmp_path):
    (tmp_path / "f.fasta").write_text(">x\nM\n")
    params = portable_params({"data.train": str(tmp_path / "f.fasta"), "model.shape": "tiny",
                              "data.valid": "/no/such/file", "train.steps": 3})
    assert params["data.train"].startswith("f.fasta@sha256:")
    assert params["model.shape"] == "tiny" and params["data.valid"] == "/no/such/file" and params["train.steps"] == 3
