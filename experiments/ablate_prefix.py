"""Which task token goes before a sequence when its embeddings are extracted for downstream probes.

    python launch/run.py --config=experiments/ablate_prefix.py:s2s         # tiny model; a few minutes on a 2-core CPU
    python launch/run.py --config=experiments/ablate_prefix.py:s2s@small   # any shape of experiments/base.py

Pretraining is the Ankh3 recipe for both variants; only config.downstream.prefix changes
(`nlu` = '[NLU]', the Ankh3 choice; `s2s` = '[S2S]').
"""
from experiments.common import family_recipe, pick_variant

PREFIXES = {"nlu": "[NLU]", "s2s": "[S2S]"}
VARIANTS = tuple(PREFIXES)
BASELINE = "nlu"  # the Ankh3 recipe


def get_config(arg=None):
    variant, shape = pick_variant(arg, VARIANTS, "ablate_prefix")
    c = family_recipe("ablate_prefix", variant, shape)
    c.downstream.prefix = PREFIXES[variant]
    return c
