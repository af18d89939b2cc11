"""UL2's X-denoiser ([NLG]: long spans and/or 50% corruption) added to the Ankh3 recipe, or not.

    python launch/run.py --config=experiments/ablate_xdenoiser.py:on         # tiny model; a few minutes on a 2-core CPU
    python launch/run.py --config=experiments/ablate_xdenoiser.py:on@small   # any shape of experiments/base.py
    python launch/run.py --config=experiments/ablate_xdenoiser.py:0.5_span64  # one X-denoising setting alone

`on` moves X_SHARE of the batch (0.2) from the two Ankh3 tasks to UL2's X-denoiser: each [NLG] sequence
draws one (noise density, mean span length) of UL2's set (0.5, 3), (0.5, 8), (0.15, 64), (0.5, 64)
(experiments/common.py UL2_X_DENOISERS). The variants DENSITY_spanSPAN use that one setting instead.
Where the paper is silent (the share, drawing per sequence): docs/assumptions.md.
"""
from experiments.common import UL2_X_DENOISERS, family_recipe, pick_variant, x_denoiser

SETTINGS = {"off": (), "on": UL2_X_DENOISERS,
            **{f"{r:g}_span{mu:g}": ((r, mu),) for r, mu in UL2_X_DENOISERS}}
VARIANTS = tuple(SETTINGS)
BASELINE = "off"  # the Ankh3 recipe
X_SHARE = 0.2


def get_config(arg=None):
    variant, shape = pick_variant(arg, VARIANTS, "ablate_xdenoiser")
    c = family_recipe("ablate_xdenoiser", variant, shape)
    share = X_SHARE if SETTINGS[variant] else 0.0
    c.objectives.nlu.weight = c.objectives.s2s.weight = (1.0 - share) / 2
    c.objectives.nlg = x_denoiser(share, SETTINGS[variant] or UL2_X_DENOISERS)  # weight 0 when off
    return c
