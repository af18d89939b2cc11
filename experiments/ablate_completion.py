"""How much of each sequence the [S2S] decoder completes: 0.25, 0.5 (Ankh3), 0.75, or drawn per sequence.

    python launch/run.py --config=experiments/ablate_completion.py:0.75         # tiny model; a few minutes on a 2-core CPU
    python launch/run.py --config=experiments/ablate_completion.py:0.75@small   # any shape of experiments/base.py

The decoder completes the last int(L*f) residues of the cut sequence (L <= data.max_residues), the encoder
reads the rest: at the Ankh3 cut of 512, 0.25 -> 384+128, 0.5 -> 256+256, 0.75 -> 128+384 residues.
`variable` draws the fraction uniformly per sequence from the (lo, hi) range config.objectives.s2s.fraction;
the fixed variants set lo == hi.
"""
from experiments.common import family_recipe, pick_variant

FRACTIONS = {"0.25": (0.25, 0.25), "0.5": (0.5, 0.5), "0.75": (0.75, 0.75), "variable": (0.25, 0.75)}
VARIANTS = tuple(FRACTIONS)
BASELINE = "0.5"  # the Ankh3 recipe


def get_config(arg=None):
    variant, shape = pick_variant(arg, VARIANTS, "ablate_completion")
    c = family_recipe("ablate_completion", variant, shape)
    c.objectives.s2s.fraction = FRACTIONS[variant]
    return c
