"""analysis/: tables (mean ± sd, n, paired bootstrap CI), published column, HTML/CSV, non-blank PNGs,
a summary MLflow run, one-line errors, and the same analysis through an MLflow tracking server."""
import csv
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from analysis import aggregate
from analysis.published import reference_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# eval/mix_nlu_s2s/loss of each (variant, seed): 'alt' is lower than 'base' by 0.5, 0.7 and 0.9 on seeds 0..2.
FINAL = {("base", 0): 3.0, ("base", 1): 3.4, ("base", 2): 2.8, ("alt", 0): 2.5, ("alt", 1): 2.7, ("alt", 2): 1.9,
         ("alt", 3): 9.9}  # seed 3 of alt has no baseline partner
Q3 = {("base", 0): 0.60, ("base", 1): 0.62, ("base", 2): 0.61, ("alt", 0): 0.65, ("alt", 1): 0.66, ("alt", 2): 0.64}


def make_runs(uri: str, family: str = "fam") -> None:
    """Finished runs shaped like launch/run.py's: eval/mix_nlu_s2s/loss curves, a downstream child per run."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(family)
    for (variant, seed), final in FINAL.items():
        tags = {"family": family, "variant": variant, "seed": str(seed), "config_hash": variant * 3}
        run = client.create_run(experiment_id, run_name=f"{variant}-s{seed}", tags=tags)
        curve = [Metric("eval/mix_nlu_s2s/loss", final + 2.0 / step, 0, step) for step in (1, 2, 4, 8)]
        curve += [Metric("eval/nlu/loss", final + 1.0 / step, 0, step) for step in (1, 2, 4, 8)]
        curve += [Metric("train/mix_nlu_s2s/loss", final + 3.0 / step, 0, step) for step in (1, 2, 4, 8)]
        curve[3] = Metric("eval/mix_nlu_s2s/loss", final, 0, 8)
        client.log_batch(run.info.run_id, metrics=curve)
        if (variant, seed) in Q3:
            child = client.create_run(experiment_id, run_name="ssp3/model",
                                      tags={**tags, "mlflow.parentRunId": run.info.run_id})
            client.log_batch(child.info.run_id, metrics=[Metric("test/q3_mean", Q3[variant, seed], 0, 0)])
            client.set_terminated(child.info.run_id, "FINISHED")
            # run.py copies the probe's test mean onto the parent too
            client.log_batch(run.info.run_id, metrics=[Metric("downstream/ssp3/model/test/q3_mean", Q3[variant, seed], 0, 0)])
        client.set_terminated(run.info.run_id, "FINISHED")
    unfinished = client.create_run(experiment_id, run_name="base-s9", tags={"family": family, "variant": "base", "seed": "9"})
    client.log_batch(unfinished.info.run_id, metrics=[Metric("eval/mix_nlu_s2s/loss", 100.0, 0, 1)])  # RUNNING: never counted


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("analysis")
    uri = f"sqlite:///{tmp}/mlflow.db"
    make_runs(uri)
    client = aggregate.connect(uri)
    result = aggregate.analyse_family(client, "fam", out_dir=str(tmp / "out"), baseline="base",
                                      patterns=("eval/mix_nlu_s2s/loss", "*/model/test/*_mean"))
    return tmp, uri, client, result


def row(result, metric, variant):
    return next(r for r in result.rows if r.metric == metric and r.variant == variant)


def test_mean_sd_and_n_per_variant(report):
    _, _, _, result = report
    base = row(result, "eval/mix_nlu_s2s/loss", "base")
    assert base.n == 3 and base.seeds == [0, 1, 2]  # the RUNNING run is left out
    assert base.mean == pytest.approx(np.mean([3.0, 3.4, 2.8]))
    assert base.sd == pytest.approx(np.std([3.0, 3.4, 2.8], ddof=1))
    assert row(result, "eval/mix_nlu_s2s/loss", "alt").n == 4


def test_probe_metrics_copied_onto_the_parent_are_counted_once(report):
    _, _, _, result = report
    metrics = {r.metric for r in result.rows}
    assert "ssp3/model/test/q3_mean" in metrics
    assert not any(m.startswith("downstream/") for m in metrics)  # the parent's copy is not a second row


def test_paired_difference_uses_shared_seeds_with_a_bootstrap_ci(report):
    _, _, _, result = report
    alt = row(result, "eval/mix_nlu_s2s/loss", "alt")
    assert alt.pairs == 3  # seed 3 has no baseline run
    assert alt.diff == pytest.approx(-0.7)
    assert -0.9 <= alt.ci_low < alt.diff < alt.ci_high <= -0.5
    q3 = row(result, "ssp3/model/test/q3_mean", "alt")
    assert q3.diff == pytest.approx(0.04) and q3.ci_low > 0  # every seed improved


def test_published_figures_are_marked_and_only_on_matching_metrics(report):
    _, _, _, result = report
    text = row(result, "ssp3/model/test/q3_mean", "base").published
    assert text.startswith("published (CASP12)") and "Ankh3-XL [NLU] 84.40%" in text
    assert row(result, "eval/mix_nlu_s2s/loss", "base").published == ""
    assert reference_text("ssp3/onehot/test/q3_mean") == ""  # a control has no published counterpart
    assert "not measured" in result.markdown


def test_markdown_csv_and_self_contained_html(report):
    tmp, _, _, result = report
    out = tmp / "out"
    assert "| eval/mix_nlu_s2s/loss | alt | 4 |" in result.markdown
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    alt = next(r for r in rows if r["metric"] == "eval/mix_nlu_s2s/loss" and r["variant"] == "alt")
    assert alt["n"] == "4" and float(alt["ci95_low"]) < float(alt["diff_vs_baseline"]) < float(alt["ci95_high"])
    page = (out / "summary.html").read_text()
    pngs = [p for p in result.files if p.endswith(".png")]
    assert page.count("data:image/png;base64,") == len(pngs) >= 3
    assert "<table>" in page and "src='http" not in page


def test_pngs_are_non_trivial_images(report):
    from matplotlib.image import imread

    _, _, _, result = report
    names = {os.path.basename(p) for p in result.files if p.endswith(".png")}
    assert {"curves_mix_nlu_s2s.png", "curves_nlu.png", "downstream_ssp3_model_test_q3_mean.png"} <= names
    for path in (p for p in result.files if p.endswith(".png")):
        image = imread(path)[..., :3]
        assert image.shape[0] >= 300 and image.shape[1] >= 300
        assert float(np.var(image)) > 1e-3  # not a blank canvas
        assert len(np.unique(image.reshape(-1, 3), axis=0)) > 20


def test_summary_run_holds_the_tables_and_plots(report):
    _, _, client, result = report
    run = client.get_run(result.summary_run_id)
    assert run.data.tags[aggregate.SUMMARY_TAG] == "family=fam" and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "fam/summaries"  # apart from the training runs
    logged = {os.path.basename(a.path) for a in client.list_artifacts(result.summary_run_id, "summary")}
    assert {os.path.basename(p) for p in result.files} <= logged
    # A second analysis does not count the summary run as a variant run.
    again = aggregate.analyse_family(client, "fam", out_dir=str(report[0] / "out2"), baseline="base",
                                     patterns=("eval/mix_nlu_s2s/loss",), log_run=False)
    assert row(again, "eval/mix_nlu_s2s/loss", "base").n == 3


def run_cli(*args):
    return subprocess.run([sys.executable, "analysis/aggregate.py", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_unknown_family_and_bad_flags_are_one_line(report):
    tmp, uri, _, _ = report
    result = run_cli("--experiment=nope", f"--tracking_uri={uri}", f"--out={tmp}/x")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: no MLflow experiment 'nope' in {uri}; it has: Default, fam, fam/summaries (pass --experiment=FAMILY or --tracking_uri)"]
    both = run_cli("--experiment=fam", "--sweep=s", f"--tracking_uri={uri}")
    assert both.returncode == 2 and both.stderr.strip() == "error: pass exactly one of --experiment=FAMILY or --sweep=STUDY"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tracking_server(tmp_path):
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                             f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "artifacts"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()[-1000:]}")
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the server and its uvicorn worker; nothing to save
        proc.wait()
        log.close()


def test_same_analysis_through_a_tracking_server(tracking_server, tmp_path):
    make_runs(tracking_server)
    client = aggregate.connect(tracking_server)
    result = aggregate.analyse_family(client, "fam", out_dir=str(tmp_path / "out"), baseline="base",
                                      patterns=("eval/mix_nlu_s2s/loss",))
    assert "| eval/mix_nlu_s2s/loss | alt | 4 |" in result.markdown
    assert row(result, "eval/mix_nlu_s2s/loss", "alt").diff == pytest.approx(-0.7)
    logged = client.list_artifacts(result.summary_run_id, "summary")
    assert "summary.html" in {os.path.basename(a.path) for a in logged}


@pytest.mark.parametrize("family,expected", [("ablate_tasks", "both"), ("ablate_completion", "0.5"),
                                             ("ablate_xdenoiser", "off"), ("ablate_prefix", "nlu"),
                                             ("ablate_masking", "0.15,0.2,0.3"), ("paper", "both"), ("base", "ankh3")])
def test_baseline_comes_from_the_family_file(family, expected):
    name, source = aggregate.pick_baseline(family, {expected, "zzz"}, None)
    assert (name, source) == (expected, f"experiments/{family}.py BASELINE")
    # A family file without BASELINE (here: none at all) falls back to the first variant, and says so.
    assert aggregate.pick_baseline("no_such_family", {"b", "a"}, None)[0] == "a"


def test_family_at_shape_reads_that_shapes_experiment():
    assert aggregate.family_and_experiment("ablate_tasks", None) == ("ablate_tasks", None)
    assert aggregate.family_and_experiment("ablate_tasks@small", None) == ("ablate_tasks", "ablate_tasks@small")
    assert aggregate.family_and_experiment("paper@small", "mine") == ("paper", "mine")


# ---- analysis/versus_controls.py: the encoder against its controls, paired by probe seed --------------
def _summary_entry(task, source, metric, values):
    """One summary.json probe entry with per-seed test values (and their mean/sd, as evaluate writes them)."""
    per_seed = {str(s): {"test": {metric: v}, "valid": {metric: v}} for s, v in enumerate(values)}
    mean, sd = float(np.mean(values)), float(np.std(values, ddof=1))
    return {"task": task, "source": source, "primary_metric": metric, "per_seed": per_seed,
            "metrics": {f"test/{metric}_mean": mean, f"test/{metric}_std": sd,
                        f"valid/{metric}_mean": mean, f"valid/{metric}_std": sd}}


def test_versus_controls_says_where_the_encoder_beats_the_random_one(tmp_path):
    import json

    entries = [_summary_entry("ssp3", "model", "q3", [0.60, 0.61, 0.62]),
               _summary_entry("ssp3", "random", "q3", [0.55, 0.56, 0.555]),
               _summary_entry("ssp3", "onehot", "q3", [0.49, 0.49, 0.49]),
               _summary_entry("gb1", "model", "spearman", [0.30, 0.10, 0.20]),
               _summary_entry("gb1", "random", "spearman", [0.20, 0.25, 0.15])]
    (tmp_path / "summary.json").write_text(json.dumps({"pretrain": {}, "downstream": entries}))
    script = [sys.executable, os.path.join(ROOT, "analysis", "versus_controls.py"), f"--workdir={tmp_path}"]
    done = subprocess.run(script, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    ssp3 = next(line for line in done.stdout.splitlines() if line.startswith("ssp3"))
    gb1 = next(line for line in done.stdout.splitlines() if line.startswith("gb1"))
    assert "0.610 ± 0.010" in ssp3 and "0.490 ± 0.000" in ssp3 and "+0.055" in ssp3 and ssp3.endswith("above 0")
    assert gb1.endswith("includes 0") and "n/a" in gb1  # gb1 has no one-hot entry here
    (tmp_path / "summary.json").write_text(json.dumps({"pretrain": {}, "downstream": [
        {k: v for k, v in e.items() if k != "per_seed"} for e in entries]}))
    old = subprocess.run(script, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert old.returncode == 2 and len(old.stderr.strip().splitlines()) == 1 and "no per-seed results" in old.stderr
