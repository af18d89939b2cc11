"""End-to-end tests of launch/run.py on a tiny model: MLflow contents, resume after SIGTERM, one-line errors."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from ankh3 import compile_cache
from ankh3.data.fasta import read_fasta

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = [sys.executable, os.path.join(ROOT, "launch", "run.py")]
STEPS = 40
# A tiny model, short sequences, per-step logging, and one small downstream task.
TINY = [
    "--config=experiments/base.py", f"--config.train.steps={STEPS}", "--config.model.d_model=64",
    "--config.model.d_ff=128", "--config.model.num_heads=2", "--config.model.num_encoder_layers=1",
    "--config.model.num_decoder_layers=1", "--config.data.batch_size=8", "--config.data.max_residues=90",
    "--config.data.encoder_length=96",
    "--config.data.decoder_length=64", "--config.train.log_every=1", "--config.train.eval_every=20",
    "--config.train.eval_batches=2", "--config.train.checkpoint_every=1000", "--config.train.progress_every_s=0",
    "--config.optimizer.warmup_steps=5",
    "--config.downstream.tasks=('gb1',)", "--config.downstream.max_per_split=16", "--config.downstream.epochs=1",
    "--config.downstream.controls=('onehot',)",
]


def small_fasta(path, count):
    """The first `count` records of the bundled validation split (fast to read)."""
    with open(path, "w") as f:
        for i, record in enumerate(read_fasta(os.path.join(ROOT, "data/pretrain/valid.fasta.xz"))):
            if i == count:
                break
            f.write(f">{record.name}\n{record.sequence}\n")
    return str(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    data = [f"--config.data.train={small_fasta(root / 'train.fasta', 400)}",
            f"--config.data.valid={small_fasta(root / 'valid.fasta', 40)}"]
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{root}/mlflow.db")
    env.pop("XLA_FLAGS", None)  # one device, as on a user's CPU
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the --compile_cache flag decides
    return root, TINY + data + [f"--compile_cache={root / 'jax_cache'}"], env


def run(args, env, **kw):
    return subprocess.run(RUN + args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=480, **kw)


def losses(workdir):
    """{step: train loss} from the run's local metric history."""
    with open(os.path.join(workdir, "history.jsonl")) as f:
        return {r["step"]: r["train/mix_nlu_s2s/loss"] for r in map(json.loads, f) if "train/mix_nlu_s2s/loss" in r}


@pytest.fixture(scope="module")
def full_run(setup):
    root, args, env = setup
    workdir = str(root / "full")
    done = run(args + [f"--workdir={workdir}"], env)
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir, done.stdout


def test_run_trains_and_logs_params_metrics_and_child_runs(setup, full_run):
    from mlflow import MlflowClient

    root, _, env = setup
    workdir, stdout = full_run
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("base")
    assert experiment.artifact_location.endswith("/mlruns/base")
    (parent,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'ankh3-s0'")
    assert parent.info.run_name == "ankh3-s0" and parent.info.status == "FINISHED"
    params, tags = parent.data.params, parent.data.tags
    assert params["train.steps"] == str(STEPS) and params["model.d_model"] == "64"
    assert params["objectives.nlu.noise_density"] == "[0.15, 0.2, 0.3]"
    assert params["budget.total_tokens"] == str(STEPS * 8 * (96 + 64))
    assert {tags["family"], tags["variant"], tags["seed"]} == {"base", "ankh3", "0"}
    assert tags["git_commit"] and tags["device_kind"] and tags["jax_version"]
    history = client.get_metric_history(parent.info.run_id, "train/mix_nlu_s2s/loss")
    assert [m.step for m in history] == list(range(1, STEPS + 1))
    assert history[-1].value < history[0].value
    for key in ("train/nlu/loss", "train/s2s/accuracy", "eval/nlu/loss", "eval/s2s/accuracy", "perf/tokens_per_s"):
        assert key in parent.data.metrics
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"config.json", "pretrain_summary.json", "summary.json", "plots"} <= artifacts
    assert not any(k.startswith("downstream/") for k in parent.data.metrics)  # bars live on the children
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/loss_nlu.png", "plots/loss_s2s.png"} <= plots
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.info.run_name for c in children) == ["gb1/model", "gb1/onehot"]
    assert all("test/spearman_mean" in c.data.metrics for c in children)
    # summary.json keeps each probe seed's values: what analysis/versus_controls.py pairs by seed
    with open(os.path.join(workdir, "summary.json")) as f:
        probes = json.load(f)["downstream"]
    assert {(p["task"], p["source"], p["primary_metric"]) for p in probes} == {("gb1", "model", "spearman"),
                                                                               ("gb1", "onehot", "spearman")}
    assert all(set(p["per_seed"]) == {"0", "1", "2"} and "spearman" in p["per_seed"]["0"]["test"] for p in probes)
    assert "mlflow ui --backend-store-uri sqlite:///" in stdout and "gb1" in stdout


def test_a_run_leaves_its_compiled_programs_in_the_compile_cache(setup, full_run):
    """The next run of this shape loads the training step and probe heads instead of compiling them."""
    root, _, _ = setup
    (folder,) = os.listdir(root / "jax_cache")  # one folder per host CPU type
    assert folder == compile_cache.host_cpu_tag()
    entries = os.listdir(root / "jax_cache" / folder)
    assert len(entries) >= 3, entries  # at least the training step, the evaluation and a probe head


def test_sigterm_then_resume_gives_the_same_losses(setup, full_run):
    root, args, env = setup
    workdir = str(root / "preempted")
    proc = subprocess.Popen(RUN + args + [f"--workdir={workdir}", "--mode=pretrain"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.startswith("step 2/"):
            proc.send_signal(signal.SIGTERM)
            break
    proc.stdout.read()
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    stopped_at = max(losses(workdir))
    assert 2 <= stopped_at < STEPS
    from mlflow import MlflowClient

    run_id = json.load(open(os.path.join(workdir, "tracking.json")))["run_id"]
    assert MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"]).get_run(run_id).info.status == "KILLED"
    resumed = run(args + [f"--workdir={workdir}", "--mode=pretrain"], env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from" in resumed.stdout
    reference, interrupted = losses(full_run[0]), losses(workdir)
    assert sorted(interrupted) == list(range(1, STEPS + 1))
    # Same seed, same losses: before the stop (a second process) and after the resume (restored state).
    np.testing.assert_array_equal([interrupted[s] for s in range(1, STEPS + 1)],
                                  [reference[s] for s in range(1, STEPS + 1)])


@pytest.mark.parametrize("extra,expected", [
    (["--config=experiments/ablate_tasks.py:mlm"], "unknown variant 'mlm'; valid: mlm_only, completion_only, both"),
    (["--config=experiments/base.py", "--config.train.stepz=3"], "unknown config key 'train.stepz'"),
    (["--config=experiments/base.py", "--config.data.train=/nowhere/train.fasta"],
     "config.data.train: no such file or directory /nowhere/train.fasta"),
])
def test_bad_input_is_one_line_and_nonzero_exit(setup, extra, expected):
    done = run(extra, setup[2])
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in done.stderr


def test_corrupt_data_file_is_one_line(setup, tmp_path):
    root, args, env = setup
    bad = tmp_path / "bad.fasta"
    bad.write_text("ACDEFG\n>late header\nACD\n")
    done = run(args + [f"--config.data.train={bad}", f"--workdir={tmp_path / 'w'}", "--mode=pretrain"], env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "sequence line before the first header" in lines[0]


def test_dry_run_prints_size_and_budget(setup):
    done = run(["--config=experiments/ablate_completion.py:0.75", "--config.train.steps=10", "--dry_run"], setup[2])
    assert done.returncode == 0, done.stderr
    assert "parameters: " in done.stdout and "token budget: 38,400 over 10 steps" in done.stdout  # 16 x (136 + 104) x 10
    assert "cut to 128 residues (random)" in done.stdout and "s2s: 32+96 residues" in done.stdout  # int(128 * 0.75)


def test_sync_workdir_sends_an_offline_run(setup, tmp_path):
    from mlflow import MlflowClient

    from ankh3.tracking import JOURNAL, Tracker

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    workdir = str(tmp_path / "offline")
    tracker = Tracker(f"sqlite:///{blocker}/mlflow.db", "offline_family", "v-s0", workdir).start()
    tracker.log_metrics(1, {"train/mix_nlu_s2s/loss": 2.5})
    assert not tracker.end()  # the store was unreachable: all of it is in the journal
    env = setup[2]
    done = run([f"--sync_workdir={workdir}", f"--sync_to={env['MLFLOW_TRACKING_URI']}"], env)
    assert done.returncode == 0, done.stderr
    assert not os.path.exists(os.path.join(workdir, JOURNAL))
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    (synced,) = client.search_runs([client.get_experiment_by_name("offline_family").experiment_id])
    assert synced.data.metrics == {"train/mix_nlu_s2s/loss": 2.5} and synced.info.status == "FINISHED"


def test_each_host_reads_its_own_records_and_its_share_of_the_batch(tmp_path):
    from ankh3.config import ConfigError, build_mixture
    from ankh3.tokenizer import Tokenizer
    from experiments.base import get_config
    from ankh3 import assembly as runner

    # Even records are all A, odd ones all C: a host that reads only its shard sees one residue.
    path = tmp_path / "ac.fasta"
    path.write_text("".join(f">r{i}\n{'AC'[i % 2] * 40}\n" for i in range(40)))
    config = get_config()
    config.data.update(train=str(path), valid=str(path), batch_size=8, encoder_length=48, decoder_length=48,
                       max_residues=40)
    config.train.eval_batches = 2
    tok = Tokenizer.default(config.model.vocab_size)
    mixture = build_mixture(config.objectives, config.mixture_granularity)
    ids = {r: tok.pieces.index(r) for r in "AC"}
    for index, (mine, other) in enumerate(("AC", "CA")):
        train, held_out = runner.build_data(config, tok, mixture, process_index=index, process_count=2)
        for batch in [next(train), *held_out]:
            assert batch["encoder_tokens"].shape[0] == 4  # global batch 8 over 2 hosts
            seen = np.concatenate([batch["encoder_tokens"].ravel(), batch["decoder_targets"].ravel()])
            assert ids[mine] in seen and ids[other] not in seen
    assert runner.build_data(config, tok, mixture)[1][0]["encoder_tokens"].shape[0] == 8  # one process: all of it
    with pytest.raises(ConfigError, match="batch_size=8 is the global batch .* multiple of 3"):
        runner.build_data(config, tok, mixture, process_index=0, process_count=3)
    # One process reading two input shards sees the two hosts' shares side by side.
    config.data.host_shards = 2
    whole = next(runner.build_data(config, tok, mixture)[0])
    shares = [next(runner.build_data(config, tok, mixture, process_index=i, process_count=2)[0]) for i in (0, 1)]
    for key in whole:
        np.testing.assert_array_equal(whole[key], np.concatenate([shares[0][key], shares[1][key]]))


def test_learning_curve_probes_each_checkpoint_beside_the_random_encoder(setup, full_run, tmp_path):
    """analysis/learning_curve.py: held-out losses against the unigram line, the validation metric per
    checkpoint and the random encoder's, as JSON numbers and a PNG."""
    _, _, env = setup
    workdir, _ = full_run
    script = [sys.executable, os.path.join(ROOT, "analysis", "learning_curve.py"), f"--workdir={workdir}",
              "--task=gb1", "--seeds=0", f"--out={tmp_path}"]
    done = subprocess.run(script, env=env, cwd=ROOT, capture_output=True, text=True, timeout=480)
    assert done.returncode == 0, done.stderr[-3000:]
    curve = json.loads((tmp_path / "learning_curve.json").read_text())
    assert [point[0] for point in curve["probes"]["model"]] == [STEPS]  # the one kept checkpoint
    assert curve["probes"]["metric"] == "valid/spearman" and len(curve["probes"]["random"]) == 2
    assert {"eval/nlu/residue_loss", "eval/s2s/residue_loss"} <= set(curve["held_out_losses"])
    assert 2.0 < curve["unigram_entropy"] < np.log(25)
    assert (tmp_path / "learning_curve.png").stat().st_size > 10_000
    bad = subprocess.run(script[:-1] + ["--steps=7"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"error: --steps: no checkpoint at [7] in {workdir}; it keeps [{STEPS}]"]
