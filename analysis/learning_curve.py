"""Learning curves of one run: did pretraining teach the encoder anything beyond residue frequencies?

    python analysis/learning_curve.py --workdir=runs/base@cpu_hour/ankh3-s0 --out=docs/cpu_hour
    python analysis/learning_curve.py --workdir=W --task=gb1 --seeds=0,1,2 --steps=500,2700

Two panels, written as OUT/learning_curve.png and OUT/learning_curve.json (the numbers):
- every held-out loss of the run's history (nats per residue target) against the residue-frequency
  (unigram) entropy of its training data: a loss above the line learned nothing but frequencies;
- the task's primary metric on its **validation** split for the encoder at each kept checkpoint, and
  for the random-encoder control of the same shape (one horizontal line): what the curve is for is
  choosing (steps, recipe), so the test split is never read into it.
Probes use the run's own downstream settings (prefix, epochs); --seeds and --max_per_split override.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # ankh3/

from ankh3.command_line import ArgumentParser, fail, main_guard  # noqa: E402

EVAL_PREFIX = "eval/"
UNIGRAM = "data/unigram_entropy"


def parse_args(argv):
    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--workdir", required=True, help="a run's workdir (config.json, checkpoints/, history.jsonl)")
    p.add_argument("--task", default="ssp3", help="downstream task probed at each checkpoint (default ssp3)")
    p.add_argument("--steps", default="", help="checkpoint steps to probe, comma-separated (default: all kept)")
    p.add_argument("--seeds", default="", help="probe seeds, comma-separated (default: the run's)")
    p.add_argument("--max_per_split", type=int, default=-1, help="examples per split (default: the run's; 0 = all)")
    p.add_argument("--out", default="", help="output folder (default WORKDIR/learning_curve)")
    return p.parse_args(argv)


def held_out_losses(workdir: str) -> tuple[dict[str, list[tuple[int, float]]], float | None]:
    """({eval loss name: [(step, value)]}, unigram entropy) from WORKDIR/history.jsonl."""
    from ankh3 import names
    from ankh3.train import read_history

    curves: dict[str, list[tuple[int, float]]] = {}
    unigram = None
    path = os.path.join(workdir, names.HISTORY)
    if not os.path.exists(path):
        fail(f"{path}: no metric history; pass --workdir of a pretraining run")
    for record in read_history(path):
        unigram = record.get(UNIGRAM, unigram)
        for key, value in record.items():
            if key.startswith(EVAL_PREFIX) and key.endswith("/residue_loss"):
                curves.setdefault(key, []).append((int(record["step"]), float(value)))
    return curves, unigram


def probe_checkpoints(workdir: str, steps: list[int], task: str, seeds, max_per_split: int | None):
    """{'model': [(step, mean, sd)], 'random': (mean, sd)} of the task's primary metric on validation."""
    import ml_collections
    from flax import nnx

    from ankh3 import hf_checkpoint, names
    from ankh3.config import downstream_tasks
    from ankh3.downstream import evaluate, tasks
    from ankh3.downstream.embed import make_model_encode_fn, random_control
    from ankh3.model import T5, load_flat_params

    config = hf_checkpoint.read_run_config(workdir)
    section = ml_collections.ConfigDict(config["downstream"])
    section.tasks = (task,)
    limit = (int(section.max_per_split) if max_per_split is None else max_per_split) or None
    data = [tasks.load(decl, max_per_split=limit) for decl in downstream_tasks(section, names.REPO_ROOT)]
    seeds = tuple(seeds or section.seeds)
    cache = os.path.join(workdir, names.DOWNSTREAM, "embeddings")
    curve, random = [], None
    for i, step in enumerate(steps):
        run = hf_checkpoint.read_run(workdir, step)
        model = load_flat_params(T5(run.model_cfg, rngs=nnx.Rngs(0)), run.flat)
        # the control does not change with the step: probed once, beside the first checkpoint
        random_fn, random_id = (random_control(run.model_cfg, config["model"]["shape"], config["seed"])
                                if i == 0 else (None, None))
        results = evaluate.run_tasks(
            make_model_encode_fn(model), run.tokenizer, data, section.prefix, seeds=seeds,
            epochs=int(section.epochs), cache_dir=cache, controls=("random",) if i == 0 else (),
            random_encode_fn=random_fn, encoder_id=f"{os.path.abspath(workdir)}@{step}",
            random_encoder_id=random_id)
        for r in results:
            metric = f"valid/{r.params['primary_metric']}"
            cell = (r.metrics[f"{metric}_mean"], r.metrics[f"{metric}_std"])
            if r.source == "model":
                curve.append((step, *cell))
                print(f"step {step}: {task} {metric} {cell[0]:.4f} ± {cell[1]:.4f}", flush=True)
            else:
                random = cell
                print(f"random encoder: {task} {metric} {cell[0]:.4f} ± {cell[1]:.4f}", flush=True)
    return {"metric": metric, "model": curve, "random": random}


def plot(losses, unigram, probes, task: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for name, points in sorted(losses.items()):
        left.plot(*zip(*points), marker=".", label=name)
    if unigram is not None:
        left.axhline(unigram, color="k", linestyle="--", label=f"unigram entropy {unigram:.3f}")
    left.set(xlabel="step", ylabel="nats per residue target", title="held-out loss")
    left.legend(fontsize=8)
    steps, means, sds = zip(*probes["model"])
    right.errorbar(steps, means, yerr=sds, marker="o", capsize=3, label="pretrained encoder")
    if probes["random"] is not None:
        mean, sd = probes["random"]
        right.axhline(mean, color="grey", linestyle="--", label=f"random encoder {mean:.3f} ± {sd:.3f}")
    right.set(xlabel="step", ylabel=probes["metric"], title=f"{task} probe, validation split (mean ± sd over seeds)")
    right.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with main_guard():
        from ankh3 import hf_checkpoint

        workdir = os.path.abspath(args.workdir)
        if not hf_checkpoint.is_run_dir(workdir):
            fail(f"--workdir={args.workdir}: not a run's workdir (no config.json and checkpoints/)")
        kept = hf_checkpoint.read_run_checkpoint_steps(workdir)  # oldest first
        steps = [int(s) for s in args.steps.split(",") if s] or kept
        missing = sorted(set(steps) - set(kept))
        if missing:
            fail(f"--steps: no checkpoint at {missing} in {workdir}; it keeps {kept}")
        seeds = [int(s) for s in args.seeds.split(",") if s]
        out = args.out or os.path.join(workdir, "learning_curve")
        os.makedirs(out, exist_ok=True)
        losses, unigram = held_out_losses(workdir)
        probes = probe_checkpoints(workdir, steps, args.task, seeds,
                                   None if args.max_per_split < 0 else args.max_per_split)
        with open(os.path.join(out, "learning_curve.json"), "w") as f:
            json.dump({"workdir": workdir, "task": args.task, "unigram_entropy": unigram,
                       "held_out_losses": losses, "probes": probes}, f, indent=1)
        plot(losses, unigram, probes, args.task, os.path.join(out, "learning_curve.png"))
        print(f"wrote {out}/learning_curve.png and learning_curve.json", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
