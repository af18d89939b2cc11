"""How much of each sequence the [S2S] decoder completes: 0.25, 0.5 (Ankh3), 0.75, or drawn per sequence.

    python launch/run.py --config=experiments/ablate_completion.py:0.75   # tiny model; a few minutes on a 2-core CPU

`variable` draws the fraction uniformly per sequence from the (lo, hi) range config.objectives.s2s.fraction;
the fixed variants set lo == hi.
"""
from experiments.common import ankh3_recipe, pick

FRACTIONS = {"0.25": (0.25, 0.25), "0.5": (0.5, 0.5), "0.75": (0.75, 0.75), "variable": (0.25, 0.75)}


def get_config(arg=None):
    variant = pick(arg, tuple(FRACTIONS), "ablate_completion")
    c = ankh3_recipe("tiny", family="ablate_completion", variant=variant)
    c.objectives.s2s.fraction = FRACTIONS[variant]
    return c
