"""The Ankh3 recipe: half [NLU] span corruption (masking 0.15/0.2/0.3 drawn per batch), half [S2S] completion.

    python launch/run.py --config=experiments/base.py                  # tiny: 5 min on a busy 2-core CPU (2.5 pretraining, 2.5 probes)
    python launch/run.py --config=experiments/base.py:ankh3@ankh3_large  # 1.88B; accelerators (bf16, remat)

ARG is ankh3@SHAPE like every family's VARIANT@SHAPE (the family has the one variant `ankh3`); a bare
SHAPE (tiny default, small, ankh3_large, ankh3_xl) is accepted too since the shape is all that changes.
"""
from experiments.common import RUN_SIZES, family_recipe, pick_variant

VARIANTS = ("ankh3",)
BASELINE = "ankh3"


def get_config(arg=None):
    if arg in RUN_SIZES:
        arg = f"{BASELINE}@{arg}"
    variant, shape = pick_variant(arg, VARIANTS, "base", default=BASELINE)
    return family_recipe("base", variant, shape)
