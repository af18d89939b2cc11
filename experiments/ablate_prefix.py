"""Which task token goes before a sequence when its embeddings are extracted for downstream probes.

    python launch/run.py --config=experiments/ablate_prefix.py:s2s         # tiny model; a few minutes on a 2-core CPU
    python launch/run.py --config=experiments/ablate_prefix.py:s2s@small   # any shape of experiments/base.py

Pretraining is the Ankh3 recipe for every variant; only config.downstream.prefix changes. The variants
are the tokenizer's task tokens that the recipe pretrains (`nlu` = '[NLU]', the Ankh3 choice;
`s2s` = '[S2S]'); a token the encoder never saw in pretraining would compare nothing.
"""
from ankh3.tokenizer import TASK_TOKENS
from experiments.common import ankh3_recipe, family_recipe, pick_variant

_TRAINED = {entry.task_token for entry in ankh3_recipe().objectives.values() if float(entry.weight) > 0}
PREFIXES = {token.strip("[]").lower(): token for token in TASK_TOKENS if token in _TRAINED}
VARIANTS = tuple(PREFIXES)
BASELINE = "nlu"  # the Ankh3 recipe


def get_config(arg=None):
    variant, shape = pick_variant(arg, VARIANTS, "ablate_prefix")
    c = family_recipe("ablate_prefix", variant, shape)
    c.downstream.prefix = PREFIXES[variant]
    return c
