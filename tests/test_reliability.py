"""Reliability: every bad input ends as one `error:` line with the documented exit code, no traceback,
no hang, and nothing already written lost; metrics reach MLflow exactly once across SIGKILLs.

The command-line cases run launch/run.py's main body in-process (a fresh absl FlagValues per case,
with --dry_run where the case allows), so about a hundred inputs cost seconds; a few cases run the
real command. The run prints how many bad inputs it tried (docs/commands.md lists the exit codes).
"""
from __future__ import annotations

import collections
import contextlib
import io
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ankh3 import names
from ankh3.errors import EXIT_USAGE, UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = "--config=experiments/base.py"
TRIED: collections.Counter = collections.Counter()  # kind of bad input -> how many were tried


@pytest.fixture(scope="module", autouse=True)
def report_count(request):
    yield
    line = (f"reliability: {sum(TRIED.values())} bad inputs tried "
            f"({', '.join(f'{k} {v}' for k, v in sorted(TRIED.items()))})")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print("\n" + line, flush=True)


def assert_one_line(code: int, stderr: str, expected_code: int, *expected: str) -> str:
    """The error is one `error: ...` line holding each expected text, with the expected exit code."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr and "Event loop is closed" not in stderr, stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    assert code == expected_code, (code, stderr)
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


# ---- the command line, in-process -------------------------------------------------------------------
def cli(argv: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of launch/run.py's main on `argv` (--dry_run and --sync_workdir only)."""
    from absl import flags
    from ml_collections import config_flags

    from ankh3 import experiment
    from ankh3.command_line import fail, main_guard, parse_flags

    fv = flags.FlagValues()
    config_flag = config_flags.DEFINE_config_file("config", None, "", flag_values=fv, sys_argv=["run.py", *argv])
    flags.DEFINE_string("workdir", None, "", flag_values=fv)
    flags.DEFINE_enum("mode", "all", ("pretrain", "downstream", "all"), "", flag_values=fv)
    flags.DEFINE_bool("dry_run", False, "", flag_values=fv)
    flags.DEFINE_string("sync_workdir", None, "", flag_values=fv)
    flags.DEFINE_string("sync_to", None, "", flag_values=fv)
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rest = parse_flags(fv, ["run.py", *argv])
            if len(rest) > 1:
                fail(f"unexpected arguments {' '.join(rest[1:])}; use --config=experiments/FAMILY.py:ARG")
            with main_guard():
                if fv.sync_workdir:
                    experiment.sync(fv.sync_workdir, fv.sync_to)
                    return 0, out.getvalue(), err.getvalue()
                config = config_flag.value
                if config is None:
                    fail("no --config given; e.g. --config=experiments/base.py")
                workdir = os.path.abspath(fv.workdir) if fv.workdir else None
                experiment.resolve(config, workdir)
                assert fv.dry_run, "cli() runs dry runs only"
                print(experiment.dry_run_report(config))
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


# (override, text the error line must hold); each is one bad input, refused by --dry_run.
BAD_OVERRIDES = [
    ("--config.train.steps=abc", "--config.train.steps=abc"),
    ("--config.train.steps=1.5", "--config.train.steps=1.5"),
    ("--config.train.steps=", "--config.train.steps="),
    ("--config.train.steps=0", "config.train.steps must be >= 1"),
    ("--config.train.steps=-5", "config.train.steps must be >= 1"),
    ("--config.seed=x", "--config.seed=x"),
    ("--config.seed=-1", "config.seed=-1"),
    ("--config.data.batch_size=0", "config.data.batch_size"),
    ("--config.data.batch_size=x", "--config.data.batch_size=x"),
    ("--config.data.batch_size=True", "--config.data.batch_size=True"),
    ("--config.data.encoder_length=0", "config.data.encoder_length"),
    ("--config.data.decoder_length=-1", "config.data.decoder_length"),
    ("--config.data.encoder_length=3", "needs encoder_length >="),
    ("--config.data.decoder_length=2", "needs encoder_length >="),
    ("--config.data.min_residues=1", "config.data.min_residues"),
    ("--config.data.on_invalid=drop", "config.data.on_invalid"),
    ("--config.data.worker_count=-1", "config.data.worker_count"),
    ("--config.data.train=/nowhere/train.fasta", "config.data.train: no such file"),
    ("--config.data.valid=/nowhere/valid.fasta", "config.data.valid: no such file"),
    ("--config.train.log_every=0", "config.train.log_every"),
    ("--config.train.eval_every=0", "config.train.eval_every"),
    ("--config.train.checkpoint_every=0", "config.train.checkpoint_every"),
    ("--config.train.keep_checkpoints=0", "config.train.keep_checkpoints"),
    ("--config.train.eval_batches=-1", "config.train.eval_batches"),
    ("--config.train.progress_every_s=-1", "config.train.progress_every_s"),
    ("--config.optimizer.learning_rate=abc", "--config.optimizer.learning_rate=abc"),
    ("--config.optimizer.learning_rate=0", "optimizer.learning_rate"),
    ("--config.optimizer.learning_rate=-1", "optimizer.learning_rate"),
    ("--config.optimizer.name=sgd", "optimizer.name"),
    ("--config.optimizer.schedule=cosinex", "optimizer.schedule"),
    ("--config.optimizer.warmup_steps=-1", "optimizer.warmup_steps"),
    ("--config.optimizer.grad_accum=0", "optimizer.grad_accum"),
    ("--config.optimizer.clip_norm=-1", "optimizer.clip_norm"),
    ("--config.objectives.nlu.noise_density=(1.5,)", "config.objectives.nlu"),
    ("--config.objectives.nlu.noise_density=(0.0,)", "config.objectives.nlu"),
    ("--config.objectives.nlu.noise_density=(1.0,)", "config.objectives.nlu"),
    ("--config.objectives.nlu.noise_density=(-0.1,)", "config.objectives.nlu"),
    ("--config.objectives.nlu.noise_density=(0.15,1.2)", "config.objectives.nlu"),
    ("--config.objectives.nlu.mean_span_length=0.5", "config.objectives.nlu"),
    ("--config.objectives.nlu.type=foo", "config.objectives.nlu.type"),
    ("--config.objectives.nlu.density_granularity=step", "config.objectives.nlu"),
    ("--config.objectives.nlu.task_token=[XYZ]", "config.objectives.nlu.task_token"),
    ("--config.objectives.s2s.fraction=(0.0,0.0)", "config.objectives.s2s"),
    ("--config.objectives.s2s.fraction=(1.0,1.0)", "config.objectives.s2s"),
    ("--config.objectives.s2s.fraction=(0.7,0.2)", "config.objectives.s2s"),
    ("--config.objectives.s2s.fraction=(-0.5,0.5)", "config.objectives.s2s"),
    ("--config.objectives.s2s.weight=-1", "config.objectives.s2s.weight=-1"),
    ("--config.mixture_granularity=token", "config.objectives"),
    ("--config.model.dtype=float8", "config.model.dtype"),
    ("--config.downstream.prefix=[XX]", "config.downstream.prefix"),
    ("--config.init_from=/nowhere/weights", "config.init_from"),
    ("--config.train.stepz=3", "unknown config key 'train.stepz'"),
    ("--config.nosuch.key=3", "unknown config key 'nosuch.key'"),
]


@pytest.mark.parametrize("override,expected", BAD_OVERRIDES, ids=[o for o, _ in BAD_OVERRIDES])
def test_bad_override_is_refused_by_dry_run(override, expected, tmp_path, monkeypatch):
    store = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    workdir = tmp_path / "w"
    code, _, err = cli([BASE, override, f"--workdir={workdir}", "--dry_run"])
    TRIED["config value"] += 1
    assert_one_line(code, err, EXIT_USAGE, expected)
    assert not store.exists() and not workdir.exists()  # no MLflow run, nothing written


def test_no_objective_with_a_positive_weight_is_refused(tmp_path):
    code, _, err = cli([BASE, "--config.objectives.nlu.weight=0", "--config.objectives.s2s.weight=0",
                        f"--workdir={tmp_path / 'w'}", "--dry_run"])
    TRIED["config value"] += 1
    assert_one_line(code, err, EXIT_USAGE, "no objective has a positive weight")


BAD_COMMANDS = [
    ([], "no --config given"),
    (["--config=experiments/nope.py"], "cannot load the config"),
    (["--config=experiments/ablate_tasks.py:mlm"], "unknown variant 'mlm'"),
    (["--config=experiments/ablate_tasks.py:mlm_only@huge"], "unknown shape 'huge'"),
    ([BASE, "extra_argument"], "unexpected arguments extra_argument"),
    ([BASE, "--mode=bogus"], "mode"),
    ([BASE, "--no_such_flag"], "no_such_flag"),
]


@pytest.mark.parametrize("argv,expected", BAD_COMMANDS, ids=[" ".join(a) or "empty" for a, _ in BAD_COMMANDS])
def test_bad_command_is_one_line(argv, expected):
    code, _, err = cli([*argv, "--dry_run"])
    TRIED["command"] += 1
    assert_one_line(code, err, EXIT_USAGE, expected)


# ---- workdirs ----------------------------------------------------------------------------------------
def _make(kind: str, root) -> str:
    """A workdir path that cannot be used, of the given kind."""
    root = str(root)
    if kind == "parent is a file":
        open(os.path.join(root, "file"), "w").close()
        return os.path.join(root, "file", "run")
    if kind == "is a file":
        open(os.path.join(root, "run"), "w").close()
        return os.path.join(root, "run")
    if kind in ("under /sys", "under /proc", "under /dev"):
        return f"/{kind.split('/')[1]}/ankh3-run"
    workdir = os.path.join(root, "run")
    os.makedirs(workdir)
    entry, what = kind.split(" is a ")
    path = os.path.join(workdir, entry)
    if what == "file":
        open(path, "w").close()
    else:
        os.makedirs(path)
    return workdir


BAD_WORKDIRS = {"parent is a file": "which is a file", "is a file": "is a file, not a directory",
                "under /sys": "lies under /sys", "under /proc": "lies under /proc", "under /dev": "lies under /dev",
                "checkpoints is a file": "checkpoints is a file", "plots is a file": "plots is a file",
                "downstream is a file": "downstream is a file", "config.json is a directory": "config.json is a dir",
                "history.jsonl is a directory": "history.jsonl is a dir",
                "tracking.json is a directory": "tracking.json is a dir",
                "metrics.jsonl is a directory": "metrics.jsonl is a dir"}


@pytest.mark.parametrize("kind", BAD_WORKDIRS)
def test_unusable_workdir_is_refused_by_dry_run(kind, tmp_path):
    workdir = _make(kind, tmp_path)
    before = sorted(os.listdir(tmp_path))
    code, _, err = cli([BASE, f"--workdir={workdir}", "--dry_run"])
    TRIED["workdir"] += 1
    assert_one_line(code, err, EXIT_USAGE, BAD_WORKDIRS[kind])
    assert sorted(os.listdir(tmp_path)) == before


def _config(**overrides):
    from ankh3 import experiment
    from experiments.base import get_config

    config = get_config()
    for key, value in overrides.items():
        section, field = key.split("__")
        config[section][field] = value
    experiment.resolve(config)
    return config


def _record(workdir, config) -> None:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, names.CONFIG_FILE), "w") as f:
        f.write(config.to_json_best_effort(indent=1))


CHANGED_CONFIGS = [
    ({"optimizer__learning_rate": 0.5}, ["optimizer.learning_rate (0.01 -> 0.5)"]),
    ({"data__batch_size": 8, "model__d_model": 64}, ["data.batch_size", "model.d_model"]),
    ({"train__steps": 100}, ["train.steps (1200 -> 100)"]),
    ({"data__train": "data/pretrain/valid.fasta.xz"}, ["data.train"]),
    ({"train__checkpoint_every": 7}, ["train.checkpoint_every"]),
]


@pytest.mark.parametrize("changes,expected", CHANGED_CONFIGS, ids=[",".join(c) for c, _ in CHANGED_CONFIGS])
def test_a_workdir_holds_one_config(changes, expected, tmp_path):
    from ankh3.workdir_check import check_same_config

    workdir = str(tmp_path / "w")
    _record(workdir, _config())
    with pytest.raises(UserError) as error:
        check_same_config(workdir, _config(**changes))
    TRIED["changed config"] += 1
    message = str(error.value)
    assert "\n" not in message and "pass a new --workdir to start a fresh run" in message
    for text in expected:
        assert text in message
    assert json.load(open(os.path.join(workdir, names.CONFIG_FILE)))["optimizer"]["learning_rate"] == 0.01


def test_longer_steps_downstream_and_tracking_changes_continue_the_run(tmp_path):
    from ankh3.workdir_check import check_same_config

    workdir = str(tmp_path / "w")
    _record(workdir, _config())
    check_same_config(workdir, _config(train__steps=5000, downstream__epochs=9, tracking__experiment="other"))
    check_same_config(str(tmp_path / "fresh"), _config(optimizer__learning_rate=0.5))  # no record: a new run


def test_unreadable_recorded_config_is_one_line(tmp_path):
    from ankh3.workdir_check import check_same_config

    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / names.CONFIG_FILE).write_text('{"optimizer": {"learning')
    with pytest.raises(UserError, match="cannot be read") as error:
        check_same_config(str(workdir), _config())
    TRIED["changed config"] += 1
    assert "\n" not in str(error.value) and (workdir / names.CONFIG_FILE).exists()


# ---- checkpoints -------------------------------------------------------------------------------------
def _state(scale=1.0):
    params = {"w": jnp.arange(600.0).reshape(20, 30) * scale}
    return {"step": jnp.asarray(3, jnp.int32), "params": params, "opt_state": optax.adamw(1e-3).init(params)}


def _damage(step_dir: str, kind: str) -> None:
    state = os.path.join(step_dir, "state")
    if kind in ("truncated arrays", "emptied arrays"):
        for folder, _, files in os.walk(os.path.join(state, "ocdbt.process_0", "d")):
            for name in files:
                os.truncate(os.path.join(folder, name), 10 if kind == "truncated arrays" else 0)
    elif kind == "no array metadata":
        os.remove(os.path.join(state, "_METADATA"))
    elif kind == "garbage array metadata":
        open(os.path.join(state, "_METADATA"), "w").write("{not json")
    elif kind == "truncated manifest":
        os.truncate(os.path.join(state, "manifest.ocdbt"), 10)
    elif kind == "no data item":
        shutil.rmtree(os.path.join(step_dir, "data"))
    elif kind == "garbage data item":
        for name in os.listdir(os.path.join(step_dir, "data")):
            open(os.path.join(step_dir, "data", name), "w").write("\x00garbage")
    elif kind == "no state item":
        shutil.rmtree(state)


DAMAGE = ["truncated arrays", "emptied arrays", "no array metadata", "garbage array metadata", "truncated manifest",
          "no data item", "garbage data item", "no state item"]


@pytest.fixture
def two_checkpoints(tmp_path):
    from ankh3.checkpoint import Checkpointer

    directory = str(tmp_path / "ckpt")
    checkpointer = Checkpointer(directory, keep=3)
    for step in (1, 2):
        checkpointer.save(step, _state(step), {"position": step})
    checkpointer.close()
    return directory


@pytest.mark.parametrize("kind", DAMAGE)
def test_unreadable_newest_checkpoint_falls_back_to_the_previous(kind, two_checkpoints, caplog, capfd):
    from ankh3.checkpoint import Checkpointer

    _damage(os.path.join(two_checkpoints, "2"), kind)
    checkpointer = Checkpointer(two_checkpoints)
    with caplog.at_level(logging.WARNING, "ankh3.checkpoint"):
        state, data = checkpointer.restore(None, _state(0.0))
    checkpointer.close()
    TRIED["damaged checkpoint"] += 1
    assert data == {"position": 1} and float(state["params"]["w"][0, 1]) == 1.0
    assert sorted(os.listdir(two_checkpoints)) == ["1", "unreadable-2"]  # set aside, not deleted
    assert any("unreadable-2" in r.getMessage() for r in caplog.records)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Event loop is closed" not in err


@pytest.mark.parametrize("kind", ["truncated arrays", "truncated manifest", "garbage data item"])
def test_no_readable_checkpoint_is_one_line_and_keeps_them(kind, two_checkpoints, capfd):
    from ankh3.checkpoint import CheckpointError, Checkpointer

    for step in ("1", "2"):
        _damage(os.path.join(two_checkpoints, step), kind)
    checkpointer = Checkpointer(two_checkpoints)
    with pytest.raises(CheckpointError, match="can be read") as error:
        checkpointer.restore(None, _state(0.0))
    checkpointer.close()
    TRIED["damaged checkpoint"] += 1
    assert "\n" not in str(error.value)
    assert sorted(os.listdir(two_checkpoints)) == ["1", "2"]
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Event loop is closed" not in err


def test_checkpoint_of_another_model_is_one_line_and_kept(two_checkpoints):
    from ankh3.checkpoint import CheckpointError, Checkpointer

    other = _state()
    other["params"]["w"] = jnp.zeros((4, 4))
    checkpointer = Checkpointer(two_checkpoints)
    with pytest.raises(CheckpointError, match="does not match") as error:
        checkpointer.restore(None, other)
    checkpointer.close()
    TRIED["damaged checkpoint"] += 1
    assert "\n" not in str(error.value) and sorted(os.listdir(two_checkpoints)) == ["1", "2"]


# ---- published weights (init_from) ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory):
    from ankh3 import hf_checkpoint as convert
    from flax import nnx

    from ankh3.model import T5, flat_params, get_shape

    cfg = get_shape("tiny", d_model=32, d_ff=64, num_heads=2, num_encoder_layers=1, num_decoder_layers=1)
    out = str(tmp_path_factory.mktemp("weights") / "tiny")
    convert.save_pretrained_dir(out, cfg, flat_params(T5(cfg, rngs=nnx.Rngs(0))))
    return out


INIT_FROM_DAMAGE = ["truncated arrays", "no model config", "garbage model config", "no params", "empty directory"]


@pytest.mark.parametrize("kind", INIT_FROM_DAMAGE)
def test_damaged_init_from_is_one_line(kind, pretrained_dir, tmp_path, capfd):
    from ankh3.assembly import build_model
    from experiments.base import get_config

    weights = str(tmp_path / "weights")
    shutil.copytree(pretrained_dir, weights)
    if kind == "truncated arrays":
        for folder, _, files in os.walk(weights):
            for name in files:
                if os.sep + "d" + os.sep in os.path.join(folder, name) + os.sep and "ocdbt" in folder:
                    os.truncate(os.path.join(folder, name), 10)
    elif kind == "no model config":
        os.remove(os.path.join(weights, "model_config.json"))
    elif kind == "garbage model config":
        open(os.path.join(weights, "model_config.json"), "w").write("{")
    elif kind == "no params":
        shutil.rmtree(os.path.join(weights, "params"))
    else:
        shutil.rmtree(weights)
        os.makedirs(weights)
    config = get_config()
    config.init_from = weights
    with pytest.raises(UserError) as error:
        build_model(config)
    TRIED["damaged init_from"] += 1
    assert "\n" not in str(error.value) and weights in str(error.value)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Event loop is closed" not in err


# ---- tracking ----------------------------------------------------------------------------------------
def test_sync_keeps_the_recorded_store_whatever_the_environment_says(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from ankh3 import experiment
    from ankh3.tracking import Tracker

    recorded, other = f"sqlite:///{tmp_path / 'recorded.db'}", f"sqlite:///{tmp_path / 'other.db'}"
    workdir = str(tmp_path / "w")
    tracker = Tracker(recorded, "fam", "v-s0", workdir, tags={"seed": "0"})
    tracker.uri = None  # as if the store had been down: everything goes to the journal
    tracker.start()
    tracker.log_metrics(1, {"loss": 2.0})
    tracker.end()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    experiment.sync(workdir)
    assert json.load(open(os.path.join(workdir, names.TRACKING_FILE)))["uri"] == recorded
    client = MlflowClient(tracking_uri=recorded)
    (run,) = client.search_runs([client.get_experiment_by_name("fam").experiment_id])
    assert run.data.metrics == {"loss": 2.0}
    assert not os.path.exists(str(tmp_path / "other.db"))


@pytest.mark.parametrize("content", ["", "{not json", '{"uri": null}'])
def test_sync_of_a_workdir_without_a_run_is_one_line(content, tmp_path, monkeypatch):
    workdir = tmp_path / "w"
    workdir.mkdir()
    if content:
        (workdir / names.TRACKING_FILE).write_text(content)
        (workdir / names.JOURNAL).write_text('{"kind": "start"}\n')
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, _, err = cli([f"--sync_workdir={workdir}"])
    TRIED["sync"] += 1
    assert_one_line(code, err, EXIT_USAGE, str(workdir))


def test_resumed_tracker_sends_each_metric_step_once(tmp_path):
    from mlflow import MlflowClient

    from ankh3.tracking import Tracker

    uri, workdir = f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "w")
    first = Tracker(uri, "fam", "v-s0", workdir).start()
    for step in range(1, 11):
        first.log_metrics(step, {"loss": 10.0 - step, "eval/loss": 5.0} if step % 5 == 0 else {"loss": 10.0 - step})
    first.flush()  # a crash now: steps 1-10 stored; the checkpoint was at step 5
    second = Tracker(uri, "fam", "v-s0", workdir).start()
    for step in range(6, 16):
        second.log_metrics(step, {"loss": 10.0 - step, "eval/loss": 4.0} if step % 5 == 0 else {"loss": 10.0 - step})
    assert second.end()
    client = MlflowClient(tracking_uri=uri)
    assert [m.step for m in client.get_metric_history(first.run_id, "loss")] == list(range(1, 16))
    assert sorted(m.step for m in client.get_metric_history(first.run_id, "eval/loss")) == [5, 10, 15]


def test_sigkill_at_random_moments_leaves_each_metric_step_once(tmp_path):
    """10 SIGKILLs (5 during a checkpoint write, 5 at random moments) of one run, then a resume to the end:
    every (metric, step) is in the store exactly once, and the run finishes."""
    steps, trials = 60, 10
    uri, workdir = f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "w")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "crash_child.py"), workdir, uri, str(steps),
                           str(trials), "0"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "final run exit status 0" in done.stdout, done.stdout + done.stderr[-3000:]
    TRIED["SIGKILL"] += trials
    with contextlib.closing(sqlite3.connect(tmp_path / "mlflow.db")) as db:
        counts = db.execute("SELECT key, step, COUNT(*) FROM metrics GROUP BY key, step").fetchall()
        status = db.execute("SELECT status FROM runs").fetchall()
    repeated = [(key, step, n) for key, step, n in counts if n != 1]
    assert not repeated, repeated
    logged = collections.defaultdict(set)
    for key, step, _ in counts:
        logged[key].add(step)
    assert logged["train/t/loss"] == set(range(1, steps + 1))  # none lost
    assert status == [("FINISHED",)]


# ---- training health ---------------------------------------------------------------------------------
@pytest.mark.parametrize("metrics,sign", [
    ({"train/loss": float(np.log(256)), "train/grad_norm": 1.0}, "at chance"),
    ({"train/loss": 7.0, "train/grad_norm": 1.0}, "at chance"),
    ({"train/loss": 3.0, "train/grad_norm": 0.0}, "gradient norm is 0"),
    ({"train/nlu/loss": 5.6, "train/s2s/loss": 5.5, "train/grad_norm": 1e-3}, "at chance"),
])
def test_a_run_that_does_not_learn_warns_once(metrics, sign):
    from ankh3.health import HealthCheck

    check = HealthCheck(256, after_step=50)
    warnings = [w for step in range(10, 400, 10) for w in check.observe(step, metrics)]
    TRIED["not learning"] += 1
    assert len(warnings) == 1 and sign in warnings[0] and "since step 60" in warnings[0]


def test_a_learning_run_and_the_warmup_do_not_warn():
    from ankh3.health import HealthCheck

    check = HealthCheck(256, after_step=1000)
    assert not [w for s in range(10, 1000, 10) for w in check.observe(s, {"train/loss": 5.6, "train/grad_norm": 0.0})]
    check = HealthCheck(256)
    assert not [w for s in range(10, 1000, 10) for w in check.observe(s, {"train/loss": 5.5 - s / 500})]


# ---- the real command ----------------------------------------------------------------------------------
def command(args, tmp_path, timeout=300):
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch", "run.py"), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args,expected", [
    (["--config.train.steps=abc", "--dry_run"], "--config.train.steps=abc"),
    (["--config.objectives.nlu.noise_density=(1.5,)", "--dry_run"], "noise_density must lie in (0, 1)"),
])
def test_real_command_refuses_with_one_line(args, expected, tmp_path):
    done = command([BASE, *args], tmp_path)
    TRIED["command"] += 1
    assert_one_line(done.returncode, done.stderr, EXIT_USAGE, expected)
    assert not (tmp_path / "mlflow.db").exists()


TINY = ["--config.model.d_model=32", "--config.model.d_ff=64", "--config.model.num_heads=2",
        "--config.model.num_encoder_layers=1", "--config.model.num_decoder_layers=1", "--config.data.batch_size=4",
        "--config.data.encoder_length=64", "--config.data.decoder_length=48", "--config.data.max_residues=32",
        "--config.train.eval_batches=1",
        "--config.train.steps=3", "--mode=pretrain"]


def test_training_data_all_shorter_than_min_residues_ends_as_one_line(tmp_path):
    short = tmp_path / "short.fasta"
    short.write_text(">a\nMKV\n>b\nMKVLA\n")
    workdir = tmp_path / "w"
    done = command([BASE, *TINY, f"--config.data.train={short}", f"--workdir={workdir}"], tmp_path, timeout=240)
    TRIED["data"] += 1
    line = assert_one_line(done.returncode, done.stderr.replace(_mlflow_banner(done.stderr), ""), EXIT_USAGE,
                           "min_residues=8", str(short))
    assert "lower config.data.min_residues" in line


def _mlflow_banner(stderr: str) -> str:
    """MLflow's INFO lines when it creates a new store (not ours to silence)."""
    return "".join(line + "\n" for line in stderr.splitlines() if " INFO mlflow." in line)


def test_second_signal_is_one_line(capsys):
    from ankh3.command_line import main_guard

    with pytest.raises(SystemExit) as exit_:
        with main_guard():
            raise KeyboardInterrupt
    TRIED["signal"] += 1
    assert_one_line(exit_.value.code, capsys.readouterr().err, 128 + signal.SIGINT, "interrupted")


def test_a_longer_run_records_the_change_instead_of_losing_it(tmp_path, caplog):
    from mlflow import MlflowClient

    from ankh3.experiment import log_config
    from ankh3.tracking import Tracker

    uri, workdir = f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "w")
    first = Tracker(uri, "fam", "v-s0", workdir).start()
    log_config(first, _config(), workdir)
    first.end("KILLED")
    second = Tracker(uri, "fam", "v-s0", workdir).start()
    with caplog.at_level(logging.WARNING, "ankh3.tracking"):
        log_config(second, _config(train__steps=2400), workdir)
        assert second.end()
    run = MlflowClient(tracking_uri=uri).get_run(second.run_id)
    assert run.data.params["train.steps"] == "1200"  # MLflow keeps a param's first value...
    assert "train.steps: 1200 -> 2400" in run.data.tags["changed_on_resume"]  # ...so the change is a tag
    assert not [r for r in caplog.records if "refused" in r.getMessage()]
    assert json.load(open(os.path.join(workdir, names.CONFIG_FILE)))["train"]["steps"] == 2400
