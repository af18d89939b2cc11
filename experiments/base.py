"""The Ankh3 recipe: half [NLU] span corruption (masking 0.15/0.2/0.3 drawn per batch), half [S2S] completion.

    python launch/run.py --config=experiments/base.py            # tiny: 5 min on a busy 2-core CPU (2.5 pretraining, 2.5 probes)
    python launch/run.py --config=experiments/base.py:ankh3_large  # 1.88B; accelerators (bf16, remat)

ARG is the model shape: tiny (default), small, ankh3_large, ankh3_xl.
"""
from experiments.common import RUN_SIZES, ankh3_recipe, pick


def get_config(arg=None):
    shape = pick(arg, tuple(RUN_SIZES), "base", default="tiny")
    return ankh3_recipe(shape, family="base", variant=shape)
