"""Multi-process runs on this machine: two processes with two CPU devices each (gloo collectives) on a
data=2 x model=2 mesh train exactly like one process with four devices, stop and resume together,
end with one line when a peer dies, and start from SLURM's environment alone. Also the launchers'
--print_only and the flag checks of ankh3.distributed."""
import os
import signal
import subprocess
import time

import pytest

from ankh3.distributed import DistributedError, check_flags
from tests import multihost_driver as driver

STEPS = 20


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("multihost")
    args = driver.TINY + driver.small_data(str(root)) + [f"--config.train.steps={STEPS}",
                                                        "--config.train.checkpoint_every=5"]
    return root, args, f"sqlite:///{root}/mlflow.db"


def ok(results):
    for code, out, err in results:
        assert code == 0, f"exit {code}\n{out[-2000:]}\n{err[-3000:]}"
    return results


@pytest.fixture(scope="module")
def reference(setup):
    """One process with four devices reading the two hosts' input shards: the losses to match."""
    root, args, uri = setup
    ok(driver.finish([driver.start_single(args + ["--config.data.host_shards=2"], str(root / "single"), uri)]))
    return driver.losses(str(root / "single"))


@pytest.fixture(scope="module")
def pair(setup):
    root, args, uri = setup
    results = ok(driver.finish(driver.start_processes(args, str(root / "pair"), uri)))
    return driver.losses(str(root / "pair")), results


def test_two_processes_match_one(pair, reference):
    losses, results = pair
    assert len(losses) == STEPS
    assert driver.max_relative_difference(losses, reference) <= 1e-5
    (_, out0, _), (_, out1, _) = results
    assert "final pretraining metrics" in out0 and "step 20/20" in out0
    assert "final pretraining metrics" not in out1 and "step " not in out1  # process 0 alone speaks


def test_sigterm_then_resume_equals_uninterrupted(setup, pair):
    root, args, uri = setup
    workdir = str(root / "preempted")
    procs = driver.start_processes(args, workdir, uri)
    driver.wait_for_step(workdir, 7, procs)
    procs[1].send_signal(signal.SIGTERM)  # one host preempted: both stop at the same step and save it
    results = driver.finish(procs)
    assert [code for code, _, _ in results] == [128 + signal.SIGTERM] * 2, results[0][2][-2000:]
    stopped = driver.last_step(workdir)
    assert stopped < STEPS
    results = ok(driver.finish(driver.start_processes(args, workdir, uri)))
    assert f"at step {stopped}" in results[0][1]  # resumed from the step both saved
    assert driver.max_relative_difference(driver.losses(workdir), pair[0]) <= 1e-5


def test_killed_peer_ends_the_other_with_one_line_and_rerun_resumes(setup):
    root, args, uri = setup
    workdir = str(root / "killed")
    procs = driver.start_processes(args, workdir, uri, heartbeat_timeout_s=15)
    driver.wait_for_step(workdir, 7, procs)  # past the checkpoint of step 5
    procs[1].kill()
    killed_at = time.monotonic()
    code, out, err = driver.finish(procs[:1], timeout=60)[0]
    procs[1].wait()
    assert time.monotonic() - killed_at < 60 and "timed out" not in err
    assert code == 1
    lines = [line for line in err.strip().splitlines() if "lost contact" in line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and err.strip().endswith(lines[0]), err[-2000:]
    results = ok(driver.finish(driver.start_processes(args, workdir, uri)))
    assert "resumed from" in results[0][1]
    assert max(driver.losses(workdir)) == STEPS


def test_slurm_environment_fsdp_matches_one_process(setup):
    """No flags: JAX's SLURM detection joins the processes; FSDP rules shard parameters over data."""
    root, args, uri = setup
    fsdp = args + ["--config.mesh.fsdp=true"]
    ok(driver.finish(driver.start_processes(fsdp, str(root / "slurm"), uri, mode="slurm")))
    ok(driver.finish([driver.start_single(fsdp + ["--config.data.host_shards=2"], str(root / "fsdp1"), uri)]))
    assert driver.max_relative_difference(driver.losses(str(root / "slurm")), driver.losses(str(root / "fsdp1"))) <= 1e-5


def test_flag_checks():
    assert check_flags(None, None, None) is False
    assert check_flags("10.0.0.2:1234", 2, 1) is True
    with pytest.raises(DistributedError, match="--process_id missing"):
        check_flags("host:1", 2, None)
    with pytest.raises(DistributedError, match="not HOST:PORT"):
        check_flags("host", 2, 0)
    with pytest.raises(DistributedError, match=r"must be in 0\.\.1"):
        check_flags("host:1", 2, 2)


def test_tpu_pod_print_only():
    script = os.path.join(driver.ROOT, "launch", "tpu_pod.sh")
    done = subprocess.run(["bash", script, "--print_only", "--name=pod1", "--zone=us-central2-b",
                           "--bucket=gs://b/ankh3", "--", "--config=experiments/base.py:ankh3@ankh3_xl",
                           "--config.mesh.model=2"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert all(line.startswith("gcloud compute tpus tpu-vm ") for line in lines)
    assert any("ssh pod1 --zone=us-central2-b --worker=all" in line for line in lines)
    run = [line for line in lines if "launch/run.py" in line]
    assert len(run) == 1 and "--config=experiments/base.py:ankh3@ankh3_xl --config.mesh.model=2" in run[0]
    assert "--config.data.train=/gcs/b/ankh3/data/train" in run[0] and "MLFLOW_TRACKING_URI" in run[0]
    bad = subprocess.run(["bash", script, "--print_only"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1


def test_memory_plan_counts_shards_and_checks_fit():
    """The plan of the tiny shape on 4 virtual devices: parameters split by the mesh, FSDP splits more."""
    from experiments.base import get_config
    from ankh3.config import model_config
    from ankh3.memory_plan import GIB, compile_plan
    from ankh3.model import count_params

    config = get_config()
    whole = count_params(model_config(config.model)) * 4  # float32 parameters on one device
    config.mesh.model = 2
    tensor = compile_plan(config, 4)
    config.mesh.model, config.mesh.fsdp, config.mesh.device_memory_gb = 1, True, 1e-6
    fsdp = compile_plan(config, 4)
    assert (tensor.data, tensor.model, fsdp.data, fsdp.model) == (2, 2, 4, 1)
    assert fsdp.params < tensor.params < whole
    assert tensor.temporaries > 0 and tensor.total >= tensor.params + tensor.temporaries
    first, *rest = fsdp.report().splitlines()
    assert "per device" in first and f"{fsdp.total / GIB:.2f} GiB" in first
    assert "H200 141 GiB yes" in rest[1] and "does NOT fit config.mesh.device_memory_gb=1e-06 GiB" in rest[2]
