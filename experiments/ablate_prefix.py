"""Which task token goes before a sequence when its embeddings are extracted for downstream probes.

    python launch/run.py --config=experiments/ablate_prefix.py:s2s   # tiny model; a few minutes on a 2-core CPU

Pretraining is the Ankh3 recipe for both variants; only config.downstream.prefix changes
(`nlu` = '[NLU]', the Ankh3 choice; `s2s` = '[S2S]').
"""
from experiments.common import ankh3_recipe, pick

PREFIXES = {"nlu": "[NLU]", "s2s": "[S2S]"}


def get_config(arg=None):
    variant = pick(arg, tuple(PREFIXES), "ablate_prefix")
    c = ankh3_recipe("tiny", family="ablate_prefix", variant=variant)
    c.downstream.prefix = PREFIXES[variant]
    return c
