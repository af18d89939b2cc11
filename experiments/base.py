"""The Ankh3 recipe: half [NLU] span corruption (masking 0.15/0.2/0.3 drawn per batch), half [S2S] completion.

    python launch/run.py --config=experiments/base.py                  # tiny: ~6 min on a quiet 2-core CPU (see below)
    python launch/run.py --config=experiments/base.py:ankh3@ankh3_large  # 1.88B; accelerators (bf16, remat)

ARG is ankh3@SHAPE like every family's VARIANT@SHAPE (the family has the one variant `ankh3`); a bare
SHAPE (tiny default, small, ankh3_large, ankh3_xl) is accepted too since the shape is all that changes.

Measured cost of the tiny default (2-core CPU, quiet): 2,000 steps of pretraining at ~13 steps/s
(2.6 min with compilation), then probes of ssp3/contact/gb1 on 200 examples per split, 3 seeds, for
the model, one-hot and random-encoder controls (3.3 min): ~6 min in all; ~1.5x that on a busy machine.
"""
from experiments.common import RUN_SIZES, family_recipe, pick_variant

VARIANTS = ("ankh3",)
BASELINE = "ankh3"


def get_config(arg=None):
    if arg in RUN_SIZES:
        arg = f"{BASELINE}@{arg}"
    variant, shape = pick_variant(arg, VARIANTS, "base", default=BASELINE)
    return family_recipe("base", variant, shape)
