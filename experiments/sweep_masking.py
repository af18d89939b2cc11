"""Optuna search over the Ankh3 masking recipe: which masking probabilities and their weights, the mean
span length, the completion fraction and the X-denoiser share.

    python launch/sweep.py --config=experiments/sweep_masking.py --study=masking --n_trials=20 --workers=2
        # tiny model, ~8 min per trial (pretraining + probes) on a 2-core CPU; 20 trials ~ 1.5 h with 2 workers
    python launch/sweep.py --config=experiments/sweep_masking.py --study=masking --objective=eval/s2s/loss --direction=minimize
    python launch/run.py --config=experiments/sweep_masking.py      # the recipe every trial starts from

ARG is the model shape (tiny default). A trial is `launch/run.py` on this config with the sampled
overrides; its score is OBJECTIVE (a metric of the run, or TASK/SOURCE/SPLIT/METRIC of a downstream
probe) and PRUNE_ON is the held-out loss reported to the pruner at every evaluation. Held-out losses
are scored on batches masked by the trial's own recipe, so they rank trials only roughly (a recipe
that masks more is harder); the downstream objective compares trials on equal terms.
"""
from experiments.common import RUN_SIZES, ankh3_recipe, pick, x_denoiser

OBJECTIVE = ("ssp3/model/valid/q3_mean", "maximize")  # secondary structure Q3 on the validation split
PRUNE_ON = "eval/s2s/loss"  # completion is in every trial; the pooled mixture name changes with nlg.share
PRUNER = "median"  # or 'halving' (successive halving) or 'none'
# The masking probabilities a trial may draw per batch; each member of a set gets a weight 1..3.
PROBABILITY_SETS = ("0.15", "0.15,0.3", "0.15,0.2,0.3", "0.1,0.2,0.3,0.4", "0.2,0.4")


def get_config(arg=None):
    shape = pick(arg, tuple(RUN_SIZES), "sweep_masking", default="tiny")
    c = ankh3_recipe(shape, family="sweep_masking", variant="trial")
    # Present with weight 0 (skipped by the mixture) so that a trial can give it a share.
    c.objectives.nlg = x_denoiser(0.0)  # UL2's X-denoiser settings
    return c


def search_space(trial) -> dict:
    """{config key: value} for one trial; the weights of a probability set repeat its members
    (the span corruption draws uniformly from the tuple, so a member listed twice is drawn twice as often)."""
    chosen = trial.suggest_categorical("nlu.probabilities", PROBABILITY_SETS)
    members = chosen.split(",")
    densities = []
    for p in members:
        weight = trial.suggest_int(f"nlu.weight_{p}", 1, 3) if len(members) > 1 else 1
        densities += [float(p)] * weight
    x_share = trial.suggest_float("nlg.share", 0.0, 0.4)
    fraction = trial.suggest_float("s2s.fraction", 0.25, 0.75)
    return {
        "objectives.nlu.noise_density": tuple(densities),
        "objectives.nlu.mean_span_length": trial.suggest_float("nlu.mean_span_length", 1.0, 4.0),
        "objectives.s2s.fraction": (fraction, fraction),
        "objectives.nlu.weight": (1.0 - x_share) / 2,
        "objectives.s2s.weight": (1.0 - x_share) / 2,
        "objectives.nlg.weight": x_share,
    }
