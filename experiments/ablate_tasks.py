"""Which pretraining tasks: span corruption only, completion only, or both (the Ankh3 recipe).

    python launch/run.py --config=experiments/ablate_tasks.py:mlm_only   # tiny model; a few minutes on a 2-core CPU

Every variant trains on the same data for the same steps and batch shape; only the mixture changes.
"""
from experiments.common import ankh3_recipe, pick

VARIANTS = {"mlm_only": {"nlu": 1.0, "s2s": 0.0}, "completion_only": {"nlu": 0.0, "s2s": 1.0},
            "both": {"nlu": 0.5, "s2s": 0.5}}


def get_config(arg=None):
    variant = pick(arg, tuple(VARIANTS), "ablate_tasks")
    c = ankh3_recipe("tiny", family="ablate_tasks", variant=variant)
    for name, weight in VARIANTS[variant].items():
        c.objectives[name].weight = weight
    return c
