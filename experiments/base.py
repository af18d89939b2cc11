"""The Ankh3 recipe: half [NLU] span corruption (masking 0.15/0.2/0.3 drawn per batch), half [S2S] completion.

    python launch/run.py --config=experiments/base.py                  # tiny: ~5 min on a quiet 2-core CPU (see below)
    python launch/run.py --config=experiments/base.py:ankh3@ankh3_large  # 1.88B; accelerators (bf16, remat)

Every sequence is cut to data.max_residues (512 at the Ankh3 shapes, 128 tiny, 256 small; a random window,
data.crop) before its objective: completion then gives the encoder 256 residues and the decoder 256
(`int(L*0.5)`). Where the paper is silent (where the cut falls, lengths, draws): docs/assumptions.md.

ARG is ankh3@SHAPE like every family's VARIANT@SHAPE (the family has the one variant `ankh3`); a bare
SHAPE (tiny default, cpu_hour, small, ankh3_large, ankh3_xl) is accepted too since the shape is all that changes.

Measured cost of the tiny default (quiet 2-core AMD EPYC; before the 128-residue cut, at 128/96 tokens, now
136/104): 1,200 steps of pretraining at ~13 steps/s (1.8 min with compilation), then probes of
ssp3/contact/gb1 on 200 examples per split, 3 seeds, for the model, one-hot and random-encoder controls
(3.3 min): 5.1 min in all; up to ~1.5x that on a machine shared with other jobs. The CPU matters: a 2-core
AMX Xeon runs the float32 step at 3.3-3.6 steps/s (XLA's float32 GEMMs are slower there), so pretraining
alone takes ~6 min on it. `--config.downstream.max_per_split=0` probes the full bundled splits: 18 min in
all on that Xeon (benchmarks/RESULTS.md, 2026-12-03). At this budget the model does not clearly beat the random encoder
(ssp3 valid Q3 0.556 ± 0.005 against 0.554 ± 0.002; one-hot 0.489).
"""
from experiments.common import RUN_SIZES, family_recipe, pick_variant

VARIANTS = ("ankh3",)
BASELINE = "ankh3"


def get_config(arg=None):
    if arg in RUN_SIZES:
        arg = f"{BASELINE}@{arg}"
    variant, shape = pick_variant(arg, VARIANTS, "base", default=BASELINE)
    return family_recipe("base", variant, shape)
