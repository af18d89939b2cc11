"""The Ankh3 paper's comparison as one matrix at a chosen model shape, every variant against the recipe.

    python launch/grid.py --config=experiments/paper.py --seeds=3            # tiny: 8 variants x 3 seeds, ~3 h on a 2-core CPU
    python launch/grid.py --config=experiments/paper.py --shape=small --seeds=3  # 8 x 3 runs of the small shape; accelerators
    python launch/run.py --config=experiments/paper.py:mlm_only@small        # one variant of the matrix
    python analysis/aggregate.py --experiment=paper                          # the table, paired against `both`
    python analysis/aggregate.py --experiment=paper@small                    # the same for the small shape

ARG is VARIANT or VARIANT@SHAPE like every family (shapes as in experiments/base.py, default tiny).
The baseline is `both`, the Ankh3 recipe ([NLU] span corruption with 0.15/0.2/0.3 + [S2S] completion
of 50%, no X-denoiser, embeddings with [NLU]); each other variant changes one thing, taken from the
family file that studies it, so a paired difference from `both` is that one change's effect.
`prefix_s2s` pretrains exactly like `both` (same seed, same steps) and differs only in the task token
used for the probes.
"""
from experiments import ablate_completion, ablate_prefix, ablate_tasks, ablate_xdenoiser
from experiments.common import family_recipe, pick_variant

# variant -> (the family file that defines the change, its ARG there)
SOURCES = {
    "both": (ablate_tasks, "both"),
    "mlm_only": (ablate_tasks, "mlm_only"),
    "completion_only": (ablate_tasks, "completion_only"),
    "completion_0.25": (ablate_completion, "0.25"),
    "completion_0.75": (ablate_completion, "0.75"),
    "completion_variable": (ablate_completion, "variable"),
    "xdenoiser_on": (ablate_xdenoiser, "on"),
    "prefix_s2s": (ablate_prefix, "s2s"),
}
VARIANTS = tuple(SOURCES)
BASELINE = "both"


def get_config(arg=None):
    name, shape = pick_variant(arg, VARIANTS, "paper", default=BASELINE)
    module, family_arg = SOURCES[name]
    change = module.get_config(family_arg)  # the family's own variant, at its default shape
    c = family_recipe("paper", name, shape)
    # Families change only the objectives and the probe prefix, so those two carry over to any shape.
    c.objectives = change.objectives
    c.mixture_granularity = change.mixture_granularity
    c.downstream.prefix = change.downstream.prefix
    return c
