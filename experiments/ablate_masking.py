"""Masking probabilities of [NLU] span corruption (drawn per batch from the list) and the mean span length.

    python launch/run.py --config=experiments/ablate_masking.py:0.15,0.3      # tiny model; a few minutes on a 2-core CPU
    python launch/run.py --config=experiments/ablate_masking.py:0.15/3        # probability 0.15, mean span length 3

ARG is a comma-separated list of probabilities in (0, 1), optionally followed by '/SPAN' (default span 1,
Ankh's single-residue masking). Default: 0.15,0.2,0.3 (the Ankh3 recipe).
"""
from ankh3.config import ConfigError
from experiments.common import ankh3_recipe


def parse(arg: str):
    """'0.15,0.3/3' -> ((0.15, 0.3), 3.0), or one ConfigError line with the expected form."""
    text, _, span = (arg or "0.15,0.2,0.3").partition("/")
    try:
        probabilities = tuple(float(p) for p in text.split(","))
        span_length = float(span) if span else 1.0
    except ValueError:
        probabilities, span_length = (), 0.0
    if not probabilities or not all(0 < p < 1 for p in probabilities) or span_length < 1:
        raise ConfigError(f"experiments/ablate_masking.py: bad argument {arg!r}; valid: comma-separated "
                          "probabilities in (0, 1), optionally '/SPAN' with SPAN >= 1, e.g. 0.15,0.3 or 0.15/3")
    return probabilities, span_length


def get_config(arg=None):
    probabilities, span_length = parse(arg)
    c = ankh3_recipe("tiny", family="ablate_masking", variant=arg or "0.15,0.2,0.3")
    c.objectives.nlu.noise_density = probabilities
    c.objectives.nlu.mean_span_length = span_length
    return c
