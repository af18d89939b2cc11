"""launch/grid.py: a 2-variant x 2-seed matrix of the tiny model, skipping and resuming, and its table."""
import csv
import os
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A model and run small enough that one run.py process takes seconds (mostly imports and compiling).
TINY = ("--config.train.steps=4", "--config.train.eval_every=2", "--config.train.log_every=1",
        "--config.train.checkpoint_every=2", "--config.train.eval_batches=1", "--config.data.batch_size=4",
        "--config.data.encoder_length=32", "--config.data.decoder_length=32", "--config.data.max_residues=28",
        "--config.model.d_model=32",
        "--config.model.d_ff=64", "--config.model.num_heads=2", "--config.model.d_kv=16",
        "--config.model.num_encoder_layers=1", "--config.model.num_decoder_layers=1")
# Compiled steps are kept between test runs (and test files): most of a tiny run's time is compiling.
COMPILE_CACHE = os.path.join(tempfile.gettempdir(), "ankh3-tests-jax-cache")


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def grid_command(tmp, uri, *extra):
    return ("launch/grid.py", "--config=experiments/ablate_tasks.py", "--mode=pretrain", f"--tracking_uri={uri}",
            f"--workdir_root={tmp}/runs", f"--compile_cache={COMPILE_CACHE}", *TINY, *extra)


def top_level_runs(uri):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("ablate_tasks")
    runs = client.search_runs([experiment.experiment_id])
    return [r for r in runs if "mlflow.parentRunId" not in r.data.tags and "family" in r.data.tags]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grid")
    uri = f"sqlite:///{tmp}/mlflow.db"
    result = run_cli(*grid_command(tmp, uri, "--variants=mlm_only,both", "--seeds=2", "--jobs=2"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return tmp, uri, result


def test_matrix_runs_every_variant_and_seed_as_tagged_mlflow_runs(matrix):
    _, uri, result = matrix
    runs = top_level_runs(uri)
    assert sorted((r.data.tags["variant"], r.data.tags["seed"]) for r in runs) == [
        ("both", "0"), ("both", "1"), ("mlm_only", "0"), ("mlm_only", "1")]
    assert all(r.info.status == "FINISHED" and r.data.tags["family"] == "ablate_tasks" for r in runs)
    hashes = {r.data.tags["variant"]: set() for r in runs}
    for r in runs:
        hashes[r.data.tags["variant"]].add(r.data.tags["config_hash"])
    assert all(len(h) == 1 for h in hashes.values())  # the seed is not part of the hash
    assert hashes["both"] != hashes["mlm_only"]
    assert "4 finished, 0 skipped" in result.stdout
    assert "[1/4] done" in result.stdout and "ETA" in result.stdout and "[4/4] done" in result.stdout  # progress


def test_rerun_starts_nothing_new(matrix):
    tmp, uri, _ = matrix
    before = {r.info.run_id for r in top_level_runs(uri)}
    again = run_cli(*grid_command(tmp, uri, "--variants=mlm_only,both", "--seeds=2", "--jobs=2"))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "0 finished, 4 skipped" in again.stdout, again.stdout  # (a config hash changes if the recipe is edited)
    assert {r.info.run_id for r in top_level_runs(uri)} == before


def test_unfinished_run_resumes_from_its_checkpoint_into_the_same_run(matrix):
    from mlflow import MlflowClient

    tmp, uri, _ = matrix
    target = next(r for r in top_level_runs(uri) if r.data.tags["variant"] == "mlm_only" and r.data.tags["seed"] == "0")
    MlflowClient(tracking_uri=uri).set_terminated(target.info.run_id, "FAILED")  # as if it had crashed
    again = run_cli(*grid_command(tmp, uri, "--variants=mlm_only", "--seeds=1"))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "1 finished, 0 skipped" in again.stdout, again.stdout
    runs = top_level_runs(uri)
    assert len(runs) == 4
    resumed = next(r for r in runs if r.info.run_id == target.info.run_id)
    assert resumed.info.status == "FINISHED"
    workdir = next(d for d in os.listdir(f"{tmp}/runs/ablate_tasks") if d.startswith("mlm_only-s0-"))
    with open(f"{tmp}/runs/ablate_tasks/{workdir}/launch.log") as f:
        assert "resumed from" in f.read()


def test_aggregate_table_has_n_seeds_and_paired_ci(matrix):
    tmp, uri, _ = matrix
    out = tmp / "analysis"
    result = run_cli("analysis/aggregate.py", "--experiment=ablate_tasks", f"--tracking_uri={uri}", f"--out={out}",
                     "--metrics=eval/nlu/loss")
    assert result.returncode == 0, result.stderr[-2000:]
    row = next(line for line in result.stdout.splitlines() if line.startswith("| eval/nlu/loss | mlm_only |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "2"
    low, high = (float(x) for x in cells[4].split("[")[1].rstrip("]").split(","))
    assert low <= float(cells[4].split()[0]) <= high
    with open(out / "summary.csv") as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    assert rows["mlm_only"]["n"] == "2" and rows["both"]["n"] == "2"
    for name in ("summary.html", "summary.md", "curves_nlu.png"):
        assert (out / name).stat().st_size > 0


def test_bad_variant_is_one_line_and_exit_2(tmp_path):
    result = run_cli("launch/grid.py", "--config=experiments/ablate_tasks.py", "--variants=nope",
                     f"--tracking_uri=sqlite:///{tmp_path}/m.db", "--dry_run")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: experiments/ablate_tasks.py: unknown variant 'nope'; valid: mlm_only, completion_only, both with an "
        "optional @SHAPE, SHAPE one of tiny, cpu_hour, small, ankh3_large, ankh3_xl "
        "(e.g. --config=experiments/ablate_tasks.py:mlm_only@small)"]


def test_shape_flag_runs_every_listed_variant_at_that_shape_in_its_own_experiment(tmp_path):
    from ankh3 import grid

    jobs = grid.plan("experiments/ablate_prefix.py", 2, None, [], flag_uri=f"sqlite:///{tmp_path}/m.db",
                     workdir_root=str(tmp_path), shape="small")
    assert [(j.arg, j.variant, j.seed) for j in jobs] == [("nlu@small", "nlu", 0), ("s2s@small", "s2s", 0),
                                                          ("nlu@small", "nlu", 1), ("s2s@small", "s2s", 1)]
    assert {j.experiment for j in jobs} == {"ablate_prefix@small"}
    assert all(grid.load_config(j.path, j.arg, []).model.shape == "small" for j in jobs)
    # The default shape is tiny, in the family's own experiment, and hashes differently.
    tiny = grid.plan("experiments/ablate_prefix.py", 1, ["nlu"], [], flag_uri=f"sqlite:///{tmp_path}/m.db",
                     workdir_root=str(tmp_path))
    assert tiny[0].experiment == "ablate_prefix" and tiny[0].config_hash != jobs[0].config_hash


def test_open_ended_family_runs_its_examples_or_the_named_args(tmp_path):
    from ankh3 import grid
    from experiments import ablate_masking

    kwargs = dict(flag_uri=f"sqlite:///{tmp_path}/m.db", workdir_root=str(tmp_path))
    listed = grid.plan("experiments/ablate_masking.py", 1, None, [], **kwargs)
    assert [j.variant for j in listed] == list(ablate_masking.VARIANTS)
    named = grid.plan("experiments/ablate_masking.py", 1, ["0.1,0.4/2"], [], **kwargs)
    assert [j.variant for j in named] == ["0.1,0.4/2"]


@pytest.mark.parametrize("args,message", [
    (("--config=experiments/paper.py:small",), "takes no ':ARG'"),
    (("--config=experiments/ablate_tasks.py", "--shape=huge"), "unknown shape 'huge'"),
    (("--config=experiments/ablate_tasks.py", "--variants=both@small"), "give the shape once with --shape"),
])
def test_shape_mistakes_are_one_line_and_exit_2(tmp_path, args, message):
    result = run_cli("launch/grid.py", *args, f"--tracking_uri=sqlite:///{tmp_path}/m.db", "--dry_run")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


@pytest.mark.parametrize("script", ["launch/grid.py", "launch/sweep.py"])
def test_help_prints_the_usage_and_the_flags(script):
    result = run_cli(script, "--help")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith(("Run every variant", "Optuna sweep")) and "--config:" in result.stdout
