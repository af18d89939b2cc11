"""The team stack (launch/services.sh): runs, child runs, artifacts and the analysis through the MLflow
server on PostgreSQL, Optuna on PostgreSQL, and one-line errors for storage and tracking URLs that
cannot work."""
import os
import subprocess
import sys

import pytest

from ankh3 import tracking
from ankh3.studies import StorageError, open_storage
from test_analysis import make_runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVICES = os.path.join(ROOT, "launch", "services.sh")


def _client(uri):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_services_script_says_what_runs_and_takes_one_action(tmp_path):
    empty = subprocess.run([SERVICES, "status"], capture_output=True, text=True,
                           env={**os.environ, "ANKH3_SERVICES_DIR": str(tmp_path / "stack")})
    assert empty.returncode == 3 and empty.stdout.splitlines() == ["postgres: stopped", "mlflow: stopped"]
    bad = subprocess.run([SERVICES, "start"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: unknown action 'start'; usage: launch/services.sh up|down|status"


def test_running_stack_reports_both_servers(team_stack):
    if not os.environ.get("ANKH3_SERVICES_DIR"):
        pytest.skip("the stack's directory is known only when ./test.sh started it (ANKH3_SERVICES_DIR)")
    status = subprocess.run([SERVICES, "status"], capture_output=True, text=True)
    assert status.returncode == 0, status.stdout
    lines = status.stdout.splitlines()
    assert lines[0].startswith("postgres: running (postgresql://")
    assert lines[1].startswith(f"mlflow: running at {team_stack.tracking_uri} ")


def test_run_children_and_artifacts_go_through_the_server(tracking_server_uri, unique_name, tmp_path):
    tracker = tracking.Tracker(tracking_server_uri, unique_name, "v-s0", str(tmp_path / "w"),
                               tags={"family": "fam"}).start()
    tracker.log_params({"train.steps": 8})
    for step in range(1, 5):
        tracker.log_metrics(step, {"train/loss": 4.0 / step})
    plots = tracking.write_loss_plots({"NLU": {"train": [(1, 4.0), (2, 2.0)]}}, str(tmp_path / "plots"))
    for path in plots:
        tracker.log_artifact(path, "plots")
    summary = tmp_path / "summary.json"
    summary.write_text('{"eval/loss": 2.0}')
    tracker.log_artifact(str(summary))
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "predictions.csv").write_text("index,label\n0,H\n")
    tracker.log_child("ssp3/model", metrics={"test/q3_mean": 0.6}, artifacts=[str(probe), plots[0]])
    assert tracker.end()

    client = _client(tracking_server_uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"train.steps": "8"}
    assert [m.value for m in client.get_metric_history(tracker.run_id, "train/loss")] == [4.0, 2.0, 4 / 3, 1.0]
    # proxied artifacts: the server stores them; this client only talks HTTP
    assert client.get_experiment(run.info.experiment_id).artifact_location.startswith("mlflow-artifacts:")
    assert sorted(a.path for a in client.list_artifacts(tracker.run_id)) == ["plots", "summary.json"]
    fetched = client.download_artifacts(tracker.run_id, "plots/loss_NLU.png", str(tmp_path / "back"))
    assert open(fetched, "rb").read() == open(plots[0], "rb").read()
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{tracker.run_id}'")
    assert [c.info.run_name for c in children] == ["ssp3/model"]
    assert children[0].data.metrics == {"test/q3_mean": 0.6}
    assert sorted(a.path for a in client.list_artifacts(children[0].info.run_id)) == ["loss_NLU.png", "probe"]


def test_analysis_goes_through_the_server(tracking_server_uri, unique_name, tmp_path):
    from analysis import aggregate

    make_runs(tracking_server_uri, family=unique_name)
    client = aggregate.connect(tracking_server_uri)
    report = aggregate.analyse_family(client, unique_name, out_dir=str(tmp_path / "out"), baseline="base",
                                      patterns=("eval/mix_nlu_s2s/loss",))
    assert "| eval/mix_nlu_s2s/loss | alt | 4 |" in report.markdown
    logged = {os.path.basename(a.path) for a in client.list_artifacts(report.summary_run_id, "summary")}
    assert {"summary.html", "summary.csv"} <= logged and any(name.endswith(".png") for name in logged)


def test_optuna_study_on_postgres_is_shared_across_connections(postgres_storage, unique_name):
    import optuna

    study = optuna.create_study(study_name=unique_name, storage=open_storage(postgres_storage))
    study.optimize(lambda trial: trial.suggest_float("x", -1.0, 1.0) ** 2, n_trials=3)
    again = optuna.load_study(study_name=unique_name, storage=open_storage(postgres_storage))
    assert [t.state.name for t in again.trials] == ["COMPLETE"] * 3
    assert again.best_value == min(t.value for t in study.trials)


@pytest.mark.parametrize("url,says", [
    ("postgresql://127.0.0.1:9/x", "cannot open the database (connection failed:"),
    ("foo://bar", "not a database URL SQLAlchemy knows"),
    ("sqlite:///{tmp}/missing/optuna.db", "the folder {tmp}/missing does not exist"),
    ("journal:{tmp}/missing/optuna.log", "the folder {tmp}/missing does not exist"),
])
def test_bad_storage_url_is_one_line_and_writes_nothing(tmp_path, url, says):
    url, says = url.format(tmp=tmp_path), says.format(tmp=tmp_path)
    with pytest.raises(StorageError) as raised:
        open_storage(url)
    message = str(raised.value)
    assert message.startswith(f"--storage={url}: {says}") and "\n" not in message
    assert os.listdir(tmp_path) == []


def test_sweep_with_an_unreachable_database_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "launch/sweep.py", "--config=experiments/sweep_masking.py",
                             "--study=s", "--n_trials=1", "--storage=postgresql://127.0.0.1:9/x",
                             f"--tracking_uri=sqlite:///{tmp_path}/m.db"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --storage=postgresql://127.0.0.1:9/x: cannot open the database (connection failed: connection to "
        'server at "127.0.0.1", port 9 failed: Connection refused); is the server running and the URL right?']


def test_tracking_uri_with_an_unknown_scheme_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(tracking.TrackingError) as raised:
        tracking.Tracker("foo://bar", "fam", "v-s0", str(tmp_path / "w"))
    assert str(raised.value).startswith("tracking URI foo://bar: unknown scheme 'foo'; give http://HOST:PORT")
    assert os.listdir(tmp_path) == []
    for fine in ("http://127.0.0.1:5000", "sqlite:///x.db", "postgresql+psycopg://u@h/db", "mlruns"):
        assert tracking.check_uri(fine) == fine
