"""Tracking: params/metrics/child runs land in MLflow; an unreachable store loses nothing."""
import json
import os

import numpy as np
import pytest

from ankh3 import tracking


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    return "sqlite:///" + str(root / "mlflow.db")


def _client(uri):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_flatten_and_param_values_follow_mlflow_limits():
    flat = tracking.flatten({"a": {"b": 1, "c": {"d": (0.15, 0.3)}}, "e": {}, "f": "x" * 7000})
    assert flat == {"a.b": 1, "a.c.d": (0.15, 0.3), "e": {}, "f": "x" * 7000}
    values = tracking.param_values(flat)
    assert values["a.c.d"] == "[0.15, 0.3]"
    assert len(values["f"]) == tracking.MAX_PARAM_LENGTH
    assert tracking.clean_key("train/[NLU]/loss") == "train/_NLU_/loss"


def test_an_experiment_created_by_another_process_between_check_and_create_is_reused(store):
    """Sweep workers and grid jobs start together: the ones that lose the race to create the
    experiment use the winner's, rather than failing their trial."""
    client = _client(store)

    class LateToTheRace:  # sees no experiment, then another process creates it before ours does
        tracking_uri = store

        def __init__(self):
            self.looked = 0

        def get_experiment_by_name(self, name):
            self.looked += 1
            if self.looked == 1:
                client.create_experiment(name)
                return None
            return client.get_experiment_by_name(name)

        def create_experiment(self, name, artifact_location=None):
            return client.create_experiment(name, artifact_location=artifact_location)

    winner = tracking.experiment_id(LateToTheRace(), "raced")
    assert winner == client.get_experiment_by_name("raced").experiment_id
    assert tracking.experiment_id(client, "raced") == winner


def test_run_logs_params_metrics_children_and_artifacts(store, tmp_path):
    params = {f"p{i}": i for i in range(250)}  # more than one log_batch of params
    tracker = tracking.Tracker(store, "fam", "v-s0", str(tmp_path / "w"), tags={"family": "fam"}).start()
    tracker.log_params(params)
    for step in range(1, 6):
        tracker.log_metrics(step, {"train/s2s/loss": 1.0 / step, "train/NLU/acc": 0.1 * step})
    art = tmp_path / "summary.json"
    art.write_text("{}")
    tracker.log_artifact(str(art))
    tracker.log_child("ssp3", params={"epochs": 2}, metrics={"test/acc": 0.5}, tags={"task": "ssp3"})
    assert tracker.end()

    client = _client(store)
    run = client.get_run(tracker.run_id)
    assert run.info.run_name == "v-s0" and run.info.status == "FINISHED"
    assert run.data.params["p249"] == "249" and len(run.data.params) == 250
    assert run.data.tags["family"] == "fam"
    history = client.get_metric_history(tracker.run_id, "train/s2s/loss")
    assert [m.step for m in history] == [1, 2, 3, 4, 5]
    assert history[-1].value == pytest.approx(0.2)
    assert [a.path for a in client.list_artifacts(tracker.run_id)] == ["summary.json"]
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.artifact_location.endswith("/mlruns/fam")
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{tracker.run_id}'")
    assert [c.info.run_name for c in children] == ["ssp3"]
    assert children[0].data.metrics["test/acc"] == 0.5 and children[0].data.params["epochs"] == "2"


def test_same_workdir_resumes_the_same_run(store, tmp_path):
    workdir = str(tmp_path / "w")
    first = tracking.Tracker(store, "fam", "resume-s0", workdir).start()
    first.log_metrics(1, {"loss": 2.0})
    first.flush()
    second = tracking.Tracker(store, "fam", "resume-s0", workdir).start()
    second.log_metrics(2, {"loss": 1.0})
    second.end()
    assert second.run_id == first.run_id
    steps = [m.step for m in _client(store).get_metric_history(first.run_id, "loss")]
    assert steps == [1, 2]


def test_unreachable_store_journals_and_sync_sends_everything(store, tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the store's folder should be")
    dead = f"sqlite:///{blocker}/mlflow.db"
    workdir = str(tmp_path / "w")
    tracker = tracking.Tracker(dead, "offline", "v-s1", workdir, tags={"seed": "1"}).start()
    tracker.log_params({"a": 1})
    for step in range(1, 4):
        tracker.log_metrics(step, {"loss": float(step)})
    tracker.log_child("fitness", metrics={"spearman": 0.3})
    assert not tracker.end()  # training went on; nothing was sent
    assert tracker.offline
    kinds = [json.loads(line)["kind"] for line in open(os.path.join(workdir, tracking.JOURNAL))]
    assert kinds == ["start", "params", "metrics", "metrics", "metrics", "child", "end"]

    assert tracking.sync_workdir(workdir, uri=store) == 0
    assert not os.path.exists(os.path.join(workdir, tracking.JOURNAL))
    client = _client(store)
    run_id = json.load(open(os.path.join(workdir, tracking.RUN_FILE)))["run_id"]
    run = client.get_run(run_id)
    assert run.data.params == {"a": "1"} and run.data.tags["seed"] == "1"
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [1.0, 2.0, 3.0]
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    assert children[0].data.metrics == {"spearman": 0.3}


def test_loss_plots_one_png_per_objective(tmp_path):
    curves = {"NLU": {"train": [(1, 3.0), (2, 2.5)], "eval": [(2, 2.7)]}, "S2S": {"train": [(1, 3.1)]}}
    paths = tracking.write_loss_plots(curves, str(tmp_path))
    assert sorted(os.path.basename(p) for p in paths) == ["loss_NLU.png", "loss_S2S.png"]
    assert all(open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_loss_plots_draw_the_unigram_floor_as_a_line(tmp_path):
    from matplotlib.image import imread

    curves = {"s2s": {"train": [(1, 3.0), (9, 2.0)], "eval": [(9, 2.2)]}}
    plain = imread(tracking.write_loss_plots(curves, str(tmp_path / "plain"))[0])
    curves["s2s"]["unigram floor"] = [(1, 2.9)]
    floored = imread(tracking.write_loss_plots(curves, str(tmp_path / "floor"))[0])
    grey = np.all(np.abs(floored[..., :3] - 0.5) < 0.02, axis=-1)  # matplotlib's 'grey' is (0.5, 0.5, 0.5)
    assert grey.sum(axis=1).max() > floored.shape[1] // 3  # a long grey row: the horizontal floor
    assert np.all(np.abs(plain[..., :3] - 0.5) < 0.02, axis=-1).sum(axis=1).max() < plain.shape[1] // 3


def test_ui_command_names_the_store():
    assert tracking.ui_command("sqlite:////x/mlflow.db") == "mlflow ui --backend-store-uri sqlite:////x/mlflow.db"


def test_tags_set_during_a_run_reach_the_store(store, tmp_path):
    tracker = tracking.Tracker(store, "fam", "tags-s0", str(tmp_path / "w")).start()
    tracker.set_tags({"health": "training loss at chance"})
    assert tracker.end()
    assert _client(store).get_run(tracker.run_id).data.tags["health"] == "training loss at chance"


def test_sync_goes_to_the_recorded_store_unless_told(store, tmp_path):
    recorded = f"sqlite:///{tmp_path / 'recorded.db'}"
    workdir = str(tmp_path / "w")
    tracker = tracking.Tracker(recorded, "fam", "sync-s0", workdir)
    tracker.uri = None  # the store was down for the whole run: everything is journaled
    tracker.start().log_metrics(1, {"loss": 1.0})
    tracker.end()
    assert tracking.sync_workdir(workdir, fallback_uri=store) == 0  # the fallback serves only runs without a store
    run_id = json.load(open(os.path.join(workdir, tracking.RUN_FILE)))["run_id"]
    assert _client(recorded).get_run(run_id).data.metrics == {"loss": 1.0}
