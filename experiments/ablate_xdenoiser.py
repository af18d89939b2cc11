"""UL2's extreme denoiser ([NLG]: long spans and/or 50% corruption) added to the Ankh3 recipe, or not.

    python launch/run.py --config=experiments/ablate_xdenoiser.py:on         # tiny model; a few minutes on a 2-core CPU
    python launch/run.py --config=experiments/ablate_xdenoiser.py:on@small   # any shape of experiments/base.py

`on` moves config.objectives.nlg.weight of the batch (default 0.2) from the two Ankh3 tasks to X-denoising;
its corruption (noise_density) and span length (mean_span_length) are fields of the same entry.
"""
from experiments.common import family_recipe, pick_variant, span_corruption

VARIANTS = ("off", "on")
BASELINE = "off"  # the Ankh3 recipe
X_SHARE = 0.2


def get_config(arg=None):
    variant, shape = pick_variant(arg, VARIANTS, "ablate_xdenoiser")
    c = family_recipe("ablate_xdenoiser", variant, shape)
    share = X_SHARE if variant == "on" else 0.0
    c.objectives.nlu.weight = c.objectives.s2s.weight = (1.0 - share) / 2
    # Long spans at half corruption: the decoder must regenerate whole segments.
    c.objectives.nlg = span_corruption(share, noise_density=(0.5,), mean_span_length=12.0, task_token="[NLG]")
    return c
