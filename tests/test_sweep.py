"""launch/sweep.py: 2 worker processes share one journal-file study; failures are recorded, not fatal."""
import math
import os
import subprocess
import sys
import textwrap

import pytest

from test_grid import COMPILE_CACHE, ROOT, TINY, run_cli

# The masking search space, with trial 1 pointed at a missing data file (its run fails) and trial 4
# failing inside the search space itself (an exception before any run starts).
SWEEP_FILE = '''
"""Test sweep over experiments/sweep_masking.py with two failures on purpose."""
from experiments import sweep_masking

OBJECTIVE = ("eval/s2s/loss", "minimize")
PRUNE_ON = "eval/s2s/loss"
PRUNER = "none"
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
    assert "/nonexistent/missing.fasta" in failed.user_attrs["fail_reason"]  # run.py's own one-line error
    assert all(math.isfinite(t.value) for t in trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4  # every trial sampled its own recipe
    # Two workers: some trials ran at the same time.
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))
    assert "4 trials (3 COMPLETE, 1 FAIL)" in result.stdout


def test_each_trial_is_a_nested_mlflow_run_with_params_and_objective(sweep):
    from mlflow import MlflowClient

    tmp, _ = sweep
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    experiment = client.get_experiment_by_name("sweep_masking")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("sweep.role") == "parent")
    assert parent.data.tags["optuna.study"] == "test" and parent.info.status == "FINISHED"
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.params["optuna.trial_number"] for r in trials) == ["0", "1", "2", "3"]
    values = {t.number: t.value for t in load_study(tmp).trials}
    for run in trials:
        number = int(run.data.params["optuna.trial_number"])
        assert any(k.startswith("optuna.params.") for k in run.data.params)
        if number == 1:
            assert run.info.status == "FAILED" and "/nonexistent/missing.fasta" in run.data.tags["optuna.fail_reason"]
        else:
            assert run.data.metrics["objective"] == pytest.approx(values[number])


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


def test_pruning_reads_the_runs_held_out_loss_and_stops_it(tmp_path):
    import optuna

    from launch.sweep import SweepContext, SweepSpec, watch

    writer = textwrap.dedent(f"""
        import json, signal, sys, time
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
        for step in range(1, 1000):
            with open({str(tmp_path / 'history.jsonl')!r}, 'a') as f:
                f.write(json.dumps({{"step": step, "eval/s2s/loss": 5.0 / step}}) + "\\n")
            time.sleep(0.2)
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer])
    pruner = type("Pruner", (optuna.pruners.BasePruner,), {"prune": AlwaysPrune.prune})()
    study = optuna.create_study(pruner=pruner)
    trial = study.ask()
    spec = SweepSpec("", None, None, "eval/s2s/loss", "minimize", "eval/s2s/loss", "median")
    ctx = SweepContext(spec, "s", "parent", None, [], str(tmp_path), "pretrain", 0)
    with pytest.raises(optuna.TrialPruned):
        watch(proc, trial, ctx, str(tmp_path))
    assert proc.poll() == 143  # stopped with SIGTERM, as run.py is (it saves a checkpoint first)
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {1: 5.0}


def test_bad_storage_and_objective_are_one_line_errors(tmp_path):
    (tmp_path / "sweep_test.py").write_text(SWEEP_FILE)
    result = run_cli("launch/sweep.py", f"--config={tmp_path}/sweep_test.py", "--study=x", "--n_trials=1",
                     "--storage=nowhere", f"--tracking_uri=sqlite:///{tmp_path}/m.db")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --storage=nowhere: give sqlite:///PATH, a database URL (postgresql://...) or journal:PATH"]


def test_trial_counts_are_shared_exactly_between_workers():
    from launch.sweep import shares

    assert shares(5, 2) == [3, 2] and shares(4, 2) == [2, 2] and shares(1, 3) == [1, 0, 0]
    assert shares(None, 2) == [None, None]


def test_sampled_tuples_reach_the_config_as_tuples():
    from launch.grid import load_config
    from launch.sweep import format_override

    path = os.path.join(ROOT, "experiments", "sweep_masking.py")
    config = load_config(path, None, [format_override("objectives.nlu.noise_density", (0.15, 0.15, 0.3)),
                                      format_override("objectives.s2s.fraction", (0.4, 0.4)),
                                      format_override("objectives.nlg.weight", 0.25)])
    assert config.objectives.nlu.noise_density == (0.15, 0.15, 0.3)
    assert config.objectives.s2s.fraction == (0.4, 0.4)
    assert config.objectives.nlg.weight == 0.25
