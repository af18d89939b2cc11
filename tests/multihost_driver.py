"""Starts launch/run.py as several local JAX processes on CPU devices, the way a cluster would, and
reads back their per-step losses. Used by tests/test_distributed.py; also a command:

    python tests/multihost_driver.py --workdir=/tmp/mh       # 2 processes x 2 devices vs 1 process x 4

Each process gets `--xla_force_host_platform_device_count=DEVICES` and talks to the others with gloo
collectives. `mode='flags'` passes --coordinator/--num_processes/--process_id; `mode='slurm'` sets
only the environment `srun` would, so JAX's own SLURM detection joins them.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = [sys.executable, os.path.join(ROOT, "launch", "run.py")]
LOSS_KEY = re.compile(r"^train/(?:[^/]+/)?loss$")  # train/loss and the per-objective train/OBJECTIVE/loss

# A tiny model on short sequences, every step logged: seconds per run on a 2-core CPU.
TINY = [
    "--config=experiments/base.py", "--config.model.d_model=32", "--config.model.d_ff=64",
    "--config.model.num_heads=2", "--config.model.num_encoder_layers=1", "--config.model.num_decoder_layers=1",
    "--config.data.batch_size=8", "--config.data.max_residues=40", "--config.data.encoder_length=48",
    "--config.data.decoder_length=32",
    "--config.train.log_every=1", "--config.train.eval_every=10", "--config.train.eval_batches=1",
    "--config.train.progress_every_s=0", "--config.optimizer.warmup_steps=2", "--config.mesh.model=2",
    "--mode=pretrain",
]


def small_data(directory: str, train: int = 300, valid: int = 40) -> list[str]:
    """--config.data overrides pointing at the first records of the bundled validation split (fast to read)."""
    sys.path.insert(0, ROOT)
    from ankh3.data.fasta import read_fasta

    paths = {"train": (os.path.join(directory, "train.fasta"), train), "valid": (os.path.join(directory, "valid.fasta"), valid)}
    records = read_fasta(os.path.join(ROOT, "data/pretrain/valid.fasta.xz"))
    for path, count in paths.values():
        with open(path, "w") as f:
            for _, record in zip(range(count), records):
                f.write(f">{record.name}\n{record.sequence}\n")
    return [f"--config.data.{key}={path}" for key, (path, _) in paths.items()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def base_env(devices: int, tracking_uri: str) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", MLFLOW_TRACKING_URI=tracking_uri, PYTHONUNBUFFERED="1")
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
    for key in [k for k in env if k.startswith("SLURM_")]:
        del env[key]
    return env


def start_single(args: list[str], workdir: str, tracking_uri: str, devices: int = 4) -> subprocess.Popen:
    """One process with `devices` CPU devices."""
    return subprocess.Popen(RUN + args + [f"--workdir={workdir}"], cwd=ROOT, env=base_env(devices, tracking_uri),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_processes(args: list[str], workdir: str, tracking_uri: str, count: int = 2, devices: int = 2,
                    mode: str = "flags", heartbeat_timeout_s: int = 30) -> list[subprocess.Popen]:
    """`count` processes of one run, `devices` CPU devices each; process 0 first."""
    port = free_port()
    procs = []
    for index in range(count):
        env = base_env(devices, tracking_uri)
        extra = [f"--heartbeat_timeout_s={heartbeat_timeout_s}"]
        if mode == "flags":
            extra += [f"--coordinator=localhost:{port}", f"--num_processes={count}", f"--process_id={index}"]
        elif mode == "slurm":
            env.update(SLURM_JOB_ID="4242", SLURM_PROCID=str(index), SLURM_NTASKS=str(count),
                       SLURM_LOCALID=str(index), SLURM_STEP_NODELIST="localhost", SLURM_STEP_NUM_NODES="1",
                       SLURM_NODELIST="localhost", JAX_COORDINATOR_PORT=str(port))
        else:
            raise ValueError(f"mode {mode!r}: flags or slurm")
        procs.append(subprocess.Popen(RUN + args + extra + [f"--workdir={workdir}"], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def finish(procs: list[subprocess.Popen], timeout: float = 900) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) of each process; kills them all when one outlives `timeout`."""
    results, deadline = [], time.monotonic() + timeout
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            out, err = proc.communicate()
            err += "\n[driver: timed out]"
        results.append((proc.returncode, out, err))
    return results


def losses(workdir: str) -> dict[int, dict[str, float]]:
    """{step: {loss key: value}} from the run's history (written by process 0)."""
    with open(os.path.join(workdir, "history.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return {r["step"]: {k: v for k, v in r.items() if LOSS_KEY.match(k)} for r in records
            if any(LOSS_KEY.match(k) for k in r)}


def last_step(workdir: str) -> int:
    path = os.path.join(workdir, "history.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        steps = [json.loads(line)["step"] for line in f if line.strip().endswith("}")]
    return max(steps, default=0)


def wait_for_step(workdir: str, step: int, procs: list[subprocess.Popen], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while last_step(workdir) < step:
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise RuntimeError(f"the run did not reach step {step} (at {last_step(workdir)})")
        time.sleep(0.2)


def max_relative_difference(a: dict, b: dict) -> float:
    """The largest |a - b| / |b| over the steps and loss keys both have (they must have the same)."""
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    worst = 0.0
    for step in a:
        assert a[step].keys() == b[step].keys() and a[step], (step, a[step], b[step])
        for key, value in a[step].items():
            worst = max(worst, abs(value - b[step][key]) / max(abs(b[step][key]), 1e-12))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--mode", choices=("flags", "slurm"), default="flags")
    parser.add_argument("extra", nargs="*", help="more --config.KEY=VALUE overrides")
    options = parser.parse_args()
    os.makedirs(options.workdir, exist_ok=True)
    uri = f"sqlite:///{os.path.abspath(options.workdir)}/mlflow.db"
    args = TINY + small_data(options.workdir) + [f"--config.train.steps={options.steps}"] + options.extra
    pair = os.path.join(options.workdir, "two-processes")
    single = os.path.join(options.workdir, "one-process")
    for code, _, err in finish(start_processes(args, pair, uri, mode=options.mode)):
        if code:
            sys.exit(f"two-process run failed ({code}): {err.strip().splitlines()[-1:]}")
    code, _, err = finish([start_single(args + ["--config.data.host_shards=2"], single, uri)])[0]
    if code:
        sys.exit(f"one-process run failed ({code}): {err.strip().splitlines()[-1:]}")
    print(f"steps {len(losses(pair))}, max relative loss difference "
          f"{max_relative_difference(losses(pair), losses(single)):.2e}")


if __name__ == "__main__":
    main()
