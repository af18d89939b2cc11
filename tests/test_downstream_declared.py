"""Downstream tasks declared in the config: formats sniffed or set, published formats end to end from
launch/run.py, and one-line errors for bad structure bundles. Every file is cut from the bundled data."""
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from ankh3 import config as config_lib
from ankh3.downstream.readers import REDUCE_8_TO_3, SSP8, TaskDataError
from ankh3.downstream.tasks import BUNDLE_DIR, load_task, sniff_format

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PER_SPLIT = 6


# ---- files in the published formats, from the bundle -------------------------------------------------
def netsurfp_dir(folder):
    """NetSurfP-2.0 / ProtTrans CSVs (input,dssp3,dssp8,disorder,cb513_mask) of bundled chains."""
    ssp8 = load_task("ssp8", max_per_split=PER_SPLIT)
    os.makedirs(folder, exist_ok=True)
    for split, examples in ssp8.splits.items():
        rows = ["input,dssp3,dssp8,disorder,cb513_mask"]
        for ex in examples:
            letters = [SSP8[i] for i in ex.label]
            rows.append(",".join([" ".join(ex.sequence), " ".join(REDUCE_8_TO_3[c] for c in letters),
                                  " ".join(letters), " ".join("1" * len(letters)), " ".join("1" * len(letters))]))
        (folder / f"hhblits_{split}.csv").write_text("\n".join(rows) + "\n")
    return folder


def flip_csv(path):
    """FLIP's sequence,target,set,validation from the bundled GB1 splits."""
    gb1 = load_task("gb1", max_per_split=PER_SPLIT)
    rows = ["sequence,target,set,validation"]
    for split, examples in gb1.splits.items():
        for ex in examples:
            rows.append(f"{ex.sequence},{ex.label},{'test' if split == 'test' else 'train'},{split == 'valid'}")
    path.write_text("\n".join(rows) + "\n")
    return path


def tape_jsons(folder):
    """TAPE's fluorescence_{split}.json records from the bundled GB1 splits."""
    gb1 = load_task("gb1", max_per_split=PER_SPLIT)
    os.makedirs(folder, exist_ok=True)
    for split, examples in gb1.splits.items():
        records = [{"primary": ex.sequence, "log_fluorescence": [ex.label], "id": i} for i, ex in enumerate(examples)]
        (folder / f"fluorescence_{split}.json").write_text(json.dumps(records))
    return folder


def test_formats_are_sniffed_from_files_folders_and_headers(tmp_path):
    assert sniff_format(netsurfp_dir(tmp_path / "nsp")) == "netsurfp"
    assert sniff_format(flip_csv(tmp_path / "flip.csv")) == "flip"
    assert sniff_format(tape_jsons(tmp_path / "tape") / "fluorescence_train.json") == "tape"
    assert sniff_format(os.path.join(BUNDLE_DIR, "gb1.csv")) == "csv"
    assert sniff_format(os.path.join(BUNDLE_DIR, "structures.npz")) == "structures"
    (tmp_path / "odd.txt").write_text("x")
    with pytest.raises(TaskDataError, match=r"odd\.txt.*formats\.mine"):
        sniff_format(tmp_path / "odd.txt", "mine")


def test_a_bundled_task_reads_a_published_format_given_as_its_path(tmp_path):
    ssp3 = load_task("ssp3", path=str(netsurfp_dir(tmp_path / "nsp")))
    bundled = load_task("ssp3", max_per_split=PER_SPLIT)
    assert ssp3.counts() == bundled.counts() == {"train": PER_SPLIT, "valid": PER_SPLIT, "test": PER_SPLIT}
    assert (ssp3.splits["test"][1].label == bundled.splits["test"][1].label).all()
    gb1 = load_task("gb1", path=str(tape_jsons(tmp_path / "tape") / "fluorescence_valid.json"))  # siblings found
    assert gb1.counts() == {"train": PER_SPLIT, "valid": PER_SPLIT, "test": PER_SPLIT}
    with pytest.raises(TaskDataError, match="a flip file holds regression labels, not contact"):
        load_task("contact", path=str(flip_csv(tmp_path / "flip.csv")))


def test_config_declares_a_new_task_in_one_call_and_rejects_undeclared_ones(tmp_path):
    from experiments.base import get_config

    c = get_config()
    config_lib.declare_task(c, "fluorescence", "regression", str(tape_jsons(tmp_path / "tape")))
    decls = config_lib.downstream_tasks(c.downstream)
    assert [d.name for d in decls] == ["ssp3", "contact", "gb1", "fluorescence"]
    assert decls[-1].format == "tape" and decls[-1].kind == "regression"
    c.downstream.tasks = ("ssp4",)
    with pytest.raises(config_lib.ConfigError, match="'ssp4' is not declared.*declare_task"):
        config_lib.downstream_tasks(c.downstream)


# ---- bad structure bundles end in one line naming the file and the fix --------------------------------
def structures(path, **change):
    with np.load(os.path.join(BUNDLE_DIR, "structures.npz")) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays.update(change)
    for key in [k for k, v in change.items() if v is None]:
        del arrays[key]
    np.savez(path, **arrays)
    return str(path)


def test_bad_structure_bundles_are_one_line_errors(tmp_path):
    whole = structures(tmp_path / "whole.npz")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(open(whole, "rb").read()[:5000])
    with pytest.raises(TaskDataError, match=r"truncated\.npz: unreadable structures \.npz.*build_downstream") as e:
        load_task("ssp3", path=str(truncated))
    assert "\n" not in str(e.value)
    with pytest.raises(TaskDataError, match=r"keyless\.npz: structures bundle lacks array\(s\) dssp8"):
        load_task("ssp3", path=structures(tmp_path / "keyless.npz", dssp8=None))
    with np.load(whole) as npz:
        split = npz["split"].astype(object)
    split[3] = "holdout"
    split = split.astype(str)
    with pytest.raises(TaskDataError, match=r"split\.npz: unknown split\(s\) holdout"):
        load_task("contact", path=structures(tmp_path / "split.npz", split=split))
    (tmp_path / "zip.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(TaskDataError, match=r"zip\.npz: unreadable"):
        load_task("ssp3", path=str(tmp_path / "zip.npz"))
    assert zipfile.is_zipfile(whole)


# ---- published formats end to end from launch/run.py --------------------------------------------------
@pytest.fixture(scope="module")
def published(tmp_path_factory):
    from ankh3 import convert
    from ankh3.model import ModelConfig

    root = tmp_path_factory.mktemp("published")
    cfg = ModelConfig(vocab_size=48, d_model=8, d_ff=12, num_heads=2, d_kv=4, num_encoder_layers=1,
                      num_decoder_layers=1, activation="silu", relative_buckets=8, relative_max_distance=16)
    rng = np.random.default_rng(0)
    tensors = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in convert.hf_shapes(cfg).items()}
    convert.save_pretrained_dir(str(root / "ckpt"), cfg, convert.hf_to_flat(cfg, tensors))
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{root}/mlflow.db")
    env.pop("XLA_FLAGS", None)
    args = ["--mode=downstream", f"--config.init_from={root / 'ckpt'}", "--config.downstream.max_per_split=0",
            "--config.downstream.epochs=1", "--config.downstream.seeds=(0,)", "--config.downstream.controls=()"]
    return root, args, env


def run(args, env):
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch", "run.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def child_metrics(env, experiment):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return {r.info.run_name: r.data.metrics for r in runs if "mlflow.parentRunId" in r.data.tags}


def test_netsurfp_folder_and_flip_csv_run_from_the_command_line(published):
    root, args, env = published
    done = run(["--config=experiments/base.py", *args, f"--workdir={root / 'w1'}",
                "--config.downstream.tasks=('ssp3', 'gb1')", f"--config.downstream.paths.ssp3={netsurfp_dir(root / 'nsp')}",
                f"--config.downstream.paths.gb1={flip_csv(root / 'flip.csv')}", "--config.downstream.formats.gb1=flip"],
               env)
    assert done.returncode == 0, done.stderr[-3000:]
    probes = child_metrics(env, "base")
    assert np.isfinite(probes["ssp3/model"]["test/q3_mean"]) and np.isfinite(probes["gb1/model"]["test/spearman_mean"])
    assert "probing ssp3/model (1 seed): " in done.stderr  # progress lines without a terminal


def test_a_tape_task_declared_in_an_experiments_file_runs_from_the_command_line(published, tmp_path):
    root, args, env = published
    family = tmp_path / "my_tasks.py"
    family.write_text(
        "from ankh3.config import declare_task\nfrom experiments.base import get_config as base\n\n\n"
        "def get_config(arg=None):\n    c = base(arg)\n    c.downstream.tasks = ()\n"
        f"    declare_task(c, 'fluorescence', 'regression', {str(tape_jsons(root / 'tape'))!r}, 'tape')\n"
        "    return c\n")
    done = run([f"--config={family}", *args, f"--workdir={root / 'w2'}"], env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert np.isfinite(child_metrics(env, "base")["fluorescence/model"]["test/spearman_mean"])
    bad = run(["--config=experiments/base.py", *args, f"--workdir={root / 'w3'}",
               f"--config.downstream.paths.contact={flip_csv(root / 'flip.csv')}"], env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("error: config.downstream (task 'contact'): ")
