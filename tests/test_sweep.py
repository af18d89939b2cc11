"""launch/sweep.py: 2 worker processes share one journal-file study; failures are recorded, not fatal;
on the team stack (PostgreSQL), 4 independent workers run exactly the queued grid, and a worker killed
with kill -9 leaves a trial that is failed and run again while the others go on."""
import math
import os
import subprocess
import sys
import textwrap

import pytest

from experiments import sweep_masking
from test_grid import COMPILE_CACHE, ROOT, TINY, run_cli

# The masking search space, with trial 1 pointed at a missing data file (its run fails) and trial 4
# failing inside the search space itself (an exception before any run starts).
SWEEP_FILE = '''
"""Test sweep over experiments/sweep_masking.py with two failures on purpose."""
from experiments import sweep_masking

OBJECTIVE = ("eval/s2s/loss", "minimize")
PRUNE_ON = "eval/s2s/loss"
PRUNER = "none"
LABELS = sweep_masking.LABELS
get_config = sweep_masking.get_config


def search_space(trial):
    if trial.number == 4:
        raise ValueError("bad search space on purpose")
    space = sweep_masking.search_space(trial)
    if trial.number == 1:
        space["data.train"] = "/nonexistent/missing.fasta"
    return space
'''


def sweep_command(tmp, n_trials, workers):
    return ("launch/sweep.py", f"--config={tmp}/sweep_test.py", "--study=test", f"--n_trials={n_trials}",
            f"--workers={workers}", f"--storage=journal:{tmp}/optuna.log", f"--tracking_uri=sqlite:///{tmp}/mlflow.db",
            f"--workdir_root={tmp}/runs", f"--compile_cache={COMPILE_CACHE}", *TINY)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    (tmp / "sweep_test.py").write_text(SWEEP_FILE)
    result = run_cli(*sweep_command(tmp, 4, 2))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return tmp, result


def load_study(tmp):
    import optuna

    from ankh3.studies import open_storage

    return optuna.load_study(study_name="test", storage=open_storage(f"journal:{tmp}/optuna.log"))


def test_two_workers_run_four_distinct_trials_one_failing_without_stopping_the_study(sweep):
    import optuna

    tmp, result = sweep
    trials = load_study(tmp).trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    states = {t.number: t.state for t in trials}
    assert states[1] == optuna.trial.TrialState.FAIL
    assert [states[n] for n in (0, 2, 3)] == [optuna.trial.TrialState.COMPLETE] * 3
    failed = next(t for t in trials if t.number == 1)
    assert "/nonexistent/missing.fasta" in failed.user_attrs["fail_reason"]  # the runner's own one-line error
    assert all(math.isfinite(t.value) for t in trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4  # every trial sampled its own recipe
    # Two workers: some trials ran at the same time.
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))
    assert "4 trials (3 COMPLETE, 1 FAIL)" in result.stdout
    assert all(t.user_attrs["name"].startswith("nlu=") for t in trials if t.number != 4)
    assert "[4/4] trial" in result.stdout  # progress lines: N/M done, with an ETA while trials are left
    assert any(line.startswith("[") and "ETA" in line for line in result.stdout.splitlines())


def test_each_trial_is_a_nested_mlflow_run_with_params_and_objective(sweep):
    from mlflow import MlflowClient

    tmp, _ = sweep
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    experiment = client.get_experiment_by_name("sweep_masking")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("sweep.role") == "parent")
    assert parent.data.tags["optuna.study"] == "test" and parent.info.status == "FINISHED"
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    # trial 1's config was refused before any run started: it has no MLflow run, its reason is in the study
    assert sorted(r.data.params["optuna.trial_number"] for r in trials) == ["0", "2", "3"]
    study_trials = {t.number: t for t in load_study(tmp).trials}
    for run in trials:
        trial = study_trials[int(run.data.params["optuna.trial_number"])]
        assert run.data.params["optuna.params.nlg.share"] == str(trial.params["nlg.share"])
        assert run.info.run_name == trial.user_attrs["name"] + "-s0" and run.info.run_name.startswith("nlu=")
        assert run.data.metrics["objective"] == pytest.approx(trial.value)
        assert run.data.tags["optuna.state"] == "COMPLETE"


def test_resuming_the_study_by_name_adds_trials_and_survives_an_exception(sweep):
    import optuna

    tmp, _ = sweep
    result = run_cli(*sweep_command(tmp, 1, 1))
    assert result.returncode == 0, result.stderr[-2000:]
    trials = load_study(tmp).trials
    assert len(trials) == 5
    assert trials[4].state == optuna.trial.TrialState.FAIL
    assert trials[4].user_attrs["fail_reason"] == "bad search space on purpose"


def test_aggregate_sweep_writes_table_and_optuna_plots(sweep):
    import numpy as np
    from matplotlib.image import imread

    tmp, _ = sweep
    out = tmp / "analysis"
    result = run_cli("analysis/aggregate.py", "--sweep=test", f"--tracking_uri=sqlite:///{tmp}/mlflow.db", f"--out={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "COMPLETE" in line]
    assert len(rows) >= 3
    for name in ("optuna_history.png", "optuna_importances.png"):
        image = imread(out / name)
        assert image.shape[0] > 100 and float(np.var(image[..., :3])) > 1e-3
    assert (out / "summary.html").read_text().count("data:image/png;base64,") == 2


class AlwaysPrune:
    """An Optuna pruner that prunes at the first report."""

    def prune(self, study, trial):
        return True


def test_pruning_is_reported_from_the_training_loop_and_stops_at_that_evaluation(tmp_path):
    import json

    import optuna
    from mlflow import MlflowClient

    from ankh3 import sweep
    from ankh3.grid import load_config

    path = os.path.join(ROOT, "experiments", "sweep_masking.py")
    spec = sweep.SweepSpec(path, None, sweep_masking, "eval/s2s/loss", "minimize", "eval/s2s/loss", "median",
                           labels=sweep_masking.LABELS)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = load_config(path, None, [*TINY, "--config.train.steps=40", f"--config.tracking.uri={uri}"])
    pruner = type("Pruner", (optuna.pruners.BasePruner,), {"prune": AlwaysPrune.prune})()
    study = optuna.create_study(pruner=pruner)
    trial = study.ask()
    ctx = sweep.SweepContext(spec, "s", "parent", uri, config, str(tmp_path), "pretrain")
    box = {}
    with pytest.raises(optuna.TrialPruned, match="pruned at step 2"):
        sweep.run_trial(trial, ctx, box)
    assert list(trial.storage.get_trial(trial._trial_id).intermediate_values) == [2]  # the first evaluation
    workdir = trial.user_attrs["workdir"]
    steps = [json.loads(line)["step"] for line in open(os.path.join(workdir, "history.jsonl"))]
    assert max(steps) == 2  # stopped right there, not 40 steps later
    run = MlflowClient(tracking_uri=uri).get_run(box["run_id"])
    assert run.info.status == "KILLED" and run.info.run_name.startswith("nlu=")


def test_trials_are_named_by_their_parameters():
    from ankh3.sweep import trial_label

    params = {"nlu.probabilities": "0.15,0.3", "nlu.weight_0.15": 2, "nlu.mean_span_length": 3.0, "other": 0.123456}
    assert trial_label(params, sweep_masking.LABELS) == "nlu=0.15,0.3 w0.15=2 mu=3 other=0.123"


def test_bad_storage_and_objective_are_one_line_errors(tmp_path):
    (tmp_path / "sweep_test.py").write_text(SWEEP_FILE)
    result = run_cli("launch/sweep.py", f"--config={tmp_path}/sweep_test.py", "--study=x", "--n_trials=1",
                     "--storage=nowhere", f"--tracking_uri=sqlite:///{tmp_path}/m.db")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --storage=nowhere: give sqlite:///PATH, a database URL (postgresql://...) or journal:PATH"]


def test_sampled_tuples_reach_the_config_as_tuples():
    from ankh3.grid import load_config
    from ankh3.sweep import apply_overrides

    config = load_config(os.path.join(ROOT, "experiments", "sweep_masking.py"), None, [])
    apply_overrides(config, {"objectives.nlu.noise_density": (0.15, 0.15, 0.3), "objectives.s2s.fraction": (0.4, 0.4),
                             "objectives.nlg.weight": 0.25})
    assert config.objectives.nlu.noise_density == (0.15, 0.15, 0.3)
    assert config.objectives.s2s.fraction == (0.4, 0.4)
    assert config.objectives.nlg.weight == 0.25


# ---- on the team stack: independent worker processes sharing only PostgreSQL and the tracking server
GRID_FILE = '''
"""A 6-point grid over the tiny masking recipe: the span length and the masking probability."""
from experiments import sweep_masking

OBJECTIVE = ("eval/s2s/loss", "minimize")
PRUNER = "none"
GRID = {"mu": [1.0, 2.0, 3.0], "p": [0.15, 0.3]}
get_config = sweep_masking.get_config


def search_space(trial):
    return {"objectives.nlu.mean_span_length": trial.suggest_float("mu", 1.0, 4.0),
            "objectives.nlu.noise_density": (trial.suggest_float("p", 0.1, 0.4),)}
'''


def worker_command(tmp, stack, study, n_trials):
    return [sys.executable, "launch/sweep.py", f"--config={tmp}/grid_test.py", f"--study={study}",
            f"--n_trials={n_trials}", "--worker", f"--storage={stack.storage}", f"--tracking_uri={stack.tracking_uri}",
            f"--workdir_root={tmp}/runs", f"--compile_cache={COMPILE_CACHE}", "--heartbeat_s=1", *TINY]


def start_worker(tmp, stack, study, n_trials, name):
    log = open(tmp / f"{name}.log", "w")
    return subprocess.Popen(worker_command(tmp, stack, study, n_trials), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def trials_of(stack, study):
    """The study's trials; none while no worker has created it yet."""
    import optuna

    from ankh3.studies import open_storage

    try:
        return optuna.load_study(study_name=study, storage=open_storage(stack.storage)).get_trials()
    except KeyError:
        return []


def test_four_independent_workers_run_exactly_the_requested_grid_trials(team_stack, unique_name, tmp_path):
    import optuna

    (tmp_path / "grid_test.py").write_text(GRID_FILE)
    workers = [start_worker(tmp_path, team_stack, unique_name, 5, f"w{i}") for i in range(4)]
    codes = [w.wait(timeout=900) for w in workers]
    logs = "".join((tmp_path / f"w{i}.log").read_text()[-1500:] for i in range(4))
    assert codes == [0, 0, 0, 0], logs
    trials = trials_of(team_stack, unique_name)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 5, logs
    points = {(t.params["mu"], t.params["p"]) for t in complete}
    assert len(points) == 5 and points <= {(m, p) for m in (1.0, 2.0, 3.0) for p in (0.15, 0.3)}
    # a worker that asked just as the queue emptied leaves a FAIL trial that says nothing ran
    others = [t for t in trials if t.state != optuna.trial.TrialState.COMPLETE]
    assert all(t.user_attrs.get("fail_reason", "").startswith("no queued trial was left") for t in others), logs
    assert len({t.user_attrs["worker"] for t in complete}) >= 2  # the work was shared
    assert {t.user_attrs["name"] for t in complete} == {"mu=1 p=0.15", "mu=1 p=0.3", "mu=2 p=0.15", "mu=2 p=0.3",
                                                        "mu=3 p=0.15"}  # the grid's first 5 points, in order


def test_a_worker_killed_with_kill_9_leaves_a_trial_that_is_failed_and_run_again(team_stack, unique_name, tmp_path):
    import time

    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    (tmp_path / "grid_test.py").write_text(GRID_FILE)
    victim = start_worker(tmp_path, team_stack, unique_name, 3, "victim")
    deadline = time.monotonic() + 600
    while not [t for t in trials_of(team_stack, unique_name) if t.state == optuna.trial.TrialState.RUNNING
               and t.user_attrs.get("worker", "").endswith(f":{victim.pid}")]:
        assert victim.poll() is None and time.monotonic() < deadline, (tmp_path / "victim.log").read_text()[-2000:]
        time.sleep(0.5)
    survivor = start_worker(tmp_path, team_stack, unique_name, 3, "survivor")
    victim.kill()  # SIGKILL: no cleanup, no last word to the study
    victim.wait()
    assert survivor.wait(timeout=900) == 0, (tmp_path / "survivor.log").read_text()[-3000:]
    trials = trials_of(team_stack, unique_name)
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(failed) == 1 and failed[0].user_attrs["worker"].endswith(f":{victim.pid}")
    assert len(complete) == 3 and len({(t.params["mu"], t.params["p"]) for t in complete}) == 3
    retried = [t for t in complete if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == failed[0].number]
    # the retry runs the dead trial's queued point (its worker may have died before sampling anything)
    assert len(retried) == 1 and retried[0].params == failed[0].system_attrs["fixed_params"]
