"""Bundled downstream tasks and the loader: counts, leakage-free splits, label shapes, user files."""
import json

import numpy as np
import pytest

from ankh3.downstream.readers import REDUCE_8_TO_3, SSP3, SSP8
from ankh3.downstream.tasks import BUNDLE_DIR, TaskDataError, contact_map, load_task
from data.build_downstream import assign_clusters

STRUCTURE_COUNTS = {"train": 1500, "valid": 200, "test": 300}  # data/downstream/README.md
GB1_COUNTS = {"train": 2000, "valid": 500, "test": 1000}


@pytest.fixture(scope="module")
def ssp8():
    return load_task("ssp8")


def test_bundle_has_documented_counts(ssp8):
    assert ssp8.counts() == STRUCTURE_COUNTS
    assert load_task("ssp3").counts() == STRUCTURE_COUNTS
    assert load_task("contact").counts() == STRUCTURE_COUNTS
    gb1 = load_task("gb1")
    assert gb1.counts() == GB1_COUNTS
    assert all(isinstance(ex.label, float) and len(ex.sequence) == 55 for ex in gb1.splits["test"])


def test_no_cluster_or_chain_in_two_splits():
    with np.load(f"{BUNDLE_DIR}/structures.npz") as z:
        clusters, names, split = z["cluster40"], z["names"], z["split"]
    for a, b in [("train", "valid"), ("train", "test"), ("valid", "test")]:
        assert not set(clusters[split == a]) & set(clusters[split == b])
        assert not set(names[split == a]) & set(names[split == b])


def test_assign_clusters_keeps_multi_chain_clusters_together():
    # The shared source has one chain per cluster; a larger source need not, so check the rule itself.
    rng = np.random.default_rng(0)
    clusters = np.array([f"c{k}" for k in rng.integers(0, 40, 300)])
    eligible = rng.random(300) < 0.9
    split = assign_clusters(clusters, eligible, {"train": 150, "valid": 30, "test": 40}, seed=1)
    assert (split[~eligible] == "").all()
    for c in set(clusters):
        assert len(set(split[(clusters == c) & eligible])) <= 1
    assert (split == "test").sum() >= 40 and (split == "valid").sum() >= 30 and (split == "train").sum() >= 150


def test_labels_match_sequences_and_3_state_reduction(ssp8):
    ssp3 = load_task("ssp3")
    for split in ("train", "test"):
        for e8, e3 in zip(ssp8.splits[split], ssp3.splits[split]):
            assert e8.name == e3.name and len(e8.label) == len(e8.sequence) == len(e3.label)
            assert e8.label.min() >= 0 and e8.label.max() < 8
            reduced = "".join(REDUCE_8_TO_3[SSP8[i]] for i in e8.label)
            assert reduced == "".join(SSP3[i] for i in e3.label)
    assert ssp3.spec.num_classes == 3 and ssp3.spec.primary_metric == "q3"
    assert ssp8.spec.classes == SSP8


def test_contact_labels_give_symmetric_maps():
    data = load_task("contact", max_per_split=2)
    ex = data.splits["valid"][1]
    assert ex.label.shape == (len(ex.sequence), 3) and ex.label.dtype == np.float32
    target = contact_map(ex.label)
    assert (target == target.T).all() and (np.diag(target) == 1).all()
    # Consecutive CB atoms are ~4-7 Å apart: every i, i+1 pair is a contact in a continuous chain.
    assert (np.diag(target, 1) == 1).mean() > 0.95
    coords = ex.label.copy()
    coords[4] = np.nan
    unresolved = contact_map(coords)
    assert (unresolved[4] == -1).all() and (unresolved[:, 4] == -1).all() and (unresolved[5, 6] >= 0)


def test_max_per_split_and_unknown_name():
    data = load_task("gb1", max_per_split=7)
    assert data.counts() == {"train": 7, "valid": 7, "test": 7}
    with pytest.raises(TaskDataError, match="unknown task 'ssp4'.*give a path"):
        load_task("ssp4")
    with pytest.raises(TaskDataError, match="unknown task 'mine'.*give a path"):
        load_task("mine", format="csv")
    with pytest.raises(TaskDataError, match="unknown format 'xml'"):
        load_task("mine", path="x.xml", format="xml")


# ---- user files through load_task -----------------------------------------------------------------
def write_fasta(path, examples, alphabet):
    path.write_text("".join(f">{ex.name}\n{ex.sequence}\n{''.join(alphabet[i] for i in ex.label)}\n"
                            for ex in examples))
    return str(path)


def test_user_fasta_task_carves_validation(ssp8, tmp_path):
    train = write_fasta(tmp_path / "train.fa", ssp8.splits["train"][:20], SSP8)
    test = write_fasta(tmp_path / "test.fa", ssp8.splits["test"][:5], SSP8)
    data = load_task("my_ssp", path={"train": train, "test": test}, format="fasta", states=3, seed=3)
    assert data.counts() == {"train": 18, "valid": 2, "test": 5}
    assert data.spec.kind == "residue_classification" and data.spec.num_classes == 3
    again = load_task("my_ssp", path={"train": train, "test": test}, format="fasta", states=3, seed=3)
    assert [ex.name for ex in again.splits["valid"]] == [ex.name for ex in data.splits["valid"]]
    names = {ex.name for ex in data.splits["train"]} | {ex.name for ex in data.splits["valid"]}
    assert names == {ex.name for ex in ssp8.splits["train"][:20]}


def test_user_files_from_a_config_dict(ssp8, tmp_path):
    import ml_collections
    files = ml_collections.ConfigDict({split: write_fasta(tmp_path / f"{split}.fa", ssp8.splits[split][:3], SSP8)
                                       for split in ("train", "valid", "test")})
    data = load_task("my_ssp8", path=files, format="fasta", states=8)
    assert data.counts() == {"train": 3, "valid": 3, "test": 3}
    assert (data.splits["valid"][2].label == ssp8.splits["valid"][2].label).all()


def test_user_tape_folder(tmp_path):
    gb1 = load_task("gb1", max_per_split=4)
    for split in ("train", "valid", "test"):
        records = [{"primary": ex.sequence, "log_fluorescence": [ex.label]} for ex in gb1.splits[split]]
        (tmp_path / f"fluorescence_{split}.json").write_text(json.dumps(records))
    data = load_task("fluorescence", path=str(tmp_path), format="tape")
    assert data.counts() == {"train": 4, "valid": 4, "test": 4}
    assert data.splits["test"][3].label == pytest.approx(gb1.splits["test"][3].label)
    assert data.spec.primary_metric == "spearman"


def test_user_task_with_empty_split_is_an_error(tmp_path):
    gb1 = load_task("gb1", max_per_split=3)
    path = tmp_path / "only_train.csv"
    path.write_text("sequence,target,split\n" + "".join(f"{ex.sequence},{ex.label},train\n"
                                                         for ex in gb1.splits["train"]))
    with pytest.raises(TaskDataError, match=r"only_train\.csv\): split 'test' is empty"):
        load_task("mine", path=str(path), format="csv")
