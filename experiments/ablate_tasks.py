"""Which pretraining tasks: span corruption only, completion only, or both (the Ankh3 recipe).

    python launch/run.py --config=experiments/ablate_tasks.py:mlm_only         # tiny model; a few minutes on a 2-core CPU
    python launch/run.py --config=experiments/ablate_tasks.py:mlm_only@small   # any shape of experiments/base.py

Every variant trains on the same data for the same steps and batch shape; only the mixture changes.
"""
from experiments.common import family_recipe, pick_variant

MIXTURES = {"mlm_only": {"nlu": 1.0, "s2s": 0.0}, "completion_only": {"nlu": 0.0, "s2s": 1.0},
            "both": {"nlu": 0.5, "s2s": 0.5}}
VARIANTS = tuple(MIXTURES)
BASELINE = "both"  # the Ankh3 recipe


def get_config(arg=None):
    variant, shape = pick_variant(arg, VARIANTS, "ablate_tasks")
    c = family_recipe("ablate_tasks", variant, shape)
    for name, weight in MIXTURES[variant].items():
        c.objectives[name].weight = weight
    return c
