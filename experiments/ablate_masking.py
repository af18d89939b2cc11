"""Masking probabilities of [NLU] span corruption (drawn per batch from the list) and the mean span length.

    python launch/run.py --config=experiments/ablate_masking.py:0.15,0.3      # tiny model; a few minutes on a 2-core CPU
    python launch/run.py --config=experiments/ablate_masking.py:0.15/3        # probability 0.15, mean span length 3
    python launch/run.py --config=experiments/ablate_masking.py:0.15/3@small  # any shape of experiments/base.py

ARG is a comma-separated list of probabilities in (0, 1), optionally followed by '/SPAN' (default span 1,
Ankh's single-residue masking) and '@SHAPE' (default tiny). Default: 0.15,0.2,0.3 (the Ankh3 recipe).
The family is open-ended: VARIANTS lists the documented examples that launch/grid.py runs by default;
any other ARG of this form is a valid variant (grid: --variant=ARG).
"""
from ankh3.config import ConfigError
from experiments.common import family_recipe, split_shape

BASELINE = "0.15,0.2,0.3"  # the Ankh3 recipe
VARIANTS = ("0.15", "0.15,0.3", BASELINE, "0.15,0.2,0.3/3")  # examples, not the whole family


def parse(arg: str):
    """'0.15,0.3/3' -> ((0.15, 0.3), 3.0), or one ConfigError line with the expected form."""
    text, _, span = (arg or BASELINE).partition("/")
    try:
        probabilities = tuple(float(p) for p in text.split(","))
        span_length = float(span) if span else 1.0
    except ValueError:
        probabilities, span_length = (), 0.0
    if not probabilities or not all(0 < p < 1 for p in probabilities) or span_length < 1:
        raise ConfigError(f"experiments/ablate_masking.py: bad argument {arg!r}; valid: comma-separated "
                          "probabilities in (0, 1), optionally '/SPAN' with SPAN >= 1 and '@SHAPE', "
                          "e.g. 0.15,0.3 or 0.15/3 or 0.15/3@small")
    return probabilities, span_length


def get_config(arg=None):
    name, shape = split_shape(arg, "ablate_masking", "0.15/3")
    probabilities, span_length = parse(name)
    c = family_recipe("ablate_masking", name or BASELINE, shape)
    c.objectives.nlu.noise_density = probabilities
    c.objectives.nlu.mean_span_length = span_length
    return c
