"""The shared Ankh3 recipe that every experiments/ family starts from, and the variant helpers.

Families change a few fields of `ankh3_recipe()` per variant and never the data, the number of
steps or the batch shape, so that their variants are compared at equal compute.
"""
from __future__ import annotations

import math

import ml_collections

from ankh3.config import ConfigError, bundled_declarations, model_section, record_budget
from ankh3.objectives import Completion, Mixture, SpanCorruption
from ankh3.tokenizer import Tokenizer

# UL2's X-denoiser (Tay et al. 2022, "UL2", section 3.1.2): (noise density, mean span length) settings,
# one drawn per sequence, all under the task token [NLG].
UL2_X_DENOISERS = ((0.5, 3.0), (0.5, 8.0), (0.15, 64.0), (0.5, 64.0))

# The widest objectives any family or sweep here draws: sequence lengths per shape are sized for them,
# so every variant of a family runs at the same batch shape (equal compute).
WIDEST_OBJECTIVES = Mixture(((SpanCorruption((0.15, 0.4), 1.0), 1.0),  # one sentinel per residue: L + 2 inputs
                             (Completion(0.75), 1.0),  # ablate_completion's largest fraction: 3/4 of L + 1 targets
                             (SpanCorruption(*zip(*UL2_X_DENOISERS), "[NLG]"), 1.0)))


def sequence_lengths(max_residues: int, vocab_size: int) -> tuple[int, int]:
    """(encoder, decoder) tokens for sequences cut to max_residues: what WIDEST_OBJECTIVES need,
    rounded up to a multiple of 8 (accelerators tile by 8 or more; the padding is counted as compute)."""
    sentinels = Tokenizer.default(vocab_size).num_sentinels
    need_in, need_out = WIDEST_OBJECTIVES.needed_lengths(max_residues, sentinels)
    return 8 * math.ceil(need_in / 8), 8 * math.ceil(need_out / 8)

# Per model shape: what one run costs. `tiny` trains on this repo's bundle on a 2-core CPU in a few
# minutes; the Ankh3 shapes are for accelerators (the 512-residue cut and batch as in the paper's setup).
# Encoder and decoder lengths follow from max_residues (`sequence_lengths`): 512 -> 520 / 416 tokens.
RUN_SIZES = {
    # 5.1 min on a quiet 2-core AMD EPYC (1.8 min pretraining at ~13 steps/s, 3.3 min of probes: 200
    # examples per split, 3 seeds); a 2-core AMX Xeon steps at 3.3-3.6/s (experiments/base.py). The
    # held-out loss levels off from ~1,000 steps at this shape: 2,000 steps gave the same eval loss and
    # probe scores (within a std), so they are not spent.
    "tiny": dict(batch_size=16, max_residues=128, steps=1200, warmup_steps=50,
                 learning_rate=1e-2, eval_every=200, eval_batches=8, checkpoint_every=400, log_every=10,
                 compute_dtype="float32", remat="none", downstream_epochs=2, downstream_max_per_split=200,
                 downstream_seeds=(0, 1, 2)),
    # At most an hour on a 2-core CPU: 43.6 min of pretraining on a quiet 2-core AVX2 EPYC (1.03 steps/s),
    # then probes of the full splits with 3 seeds (ssp3 + gb1: 17 min). Its encoder does not beat the
    # random encoder (ssp3 test Q3 +0.005, 95% CI [-0.010, +0.019]), nor did 2.4x the steps, lr 3e-2 or
    # denoising only on validation: docs/cpu_hour.md has the numbers.
    "cpu_hour": dict(batch_size=32, max_residues=128, steps=2700, warmup_steps=200, schedule="cosine",
                     learning_rate=1e-2, eval_every=250, eval_batches=16, checkpoint_every=500, log_every=25,
                     compute_dtype="float32", remat="none", downstream_epochs=4, downstream_max_per_split=0,
                     downstream_seeds=(0, 1, 2)),
    "small": dict(batch_size=64, max_residues=256, steps=20_000, warmup_steps=1_000,
                  learning_rate=1e-2, eval_every=1_000, eval_batches=20, checkpoint_every=2_000, log_every=50,
                  compute_dtype="auto", remat="none", downstream_epochs=10, downstream_max_per_split=0,
                  downstream_seeds=(0,)),
    "ankh3_large": dict(batch_size=256, max_residues=512, steps=200_000, warmup_steps=10_000,
                        learning_rate=1e-2, eval_every=2_000, eval_batches=50, checkpoint_every=2_000,
                        log_every=100, compute_dtype="auto", remat="dots", downstream_epochs=10,
                        downstream_max_per_split=0, downstream_seeds=(0,)),
    "ankh3_xl": dict(batch_size=256, max_residues=512, steps=200_000, warmup_steps=10_000,
                     learning_rate=1e-2, eval_every=2_000, eval_batches=50, checkpoint_every=2_000,
                     log_every=100, compute_dtype="auto", remat="full", downstream_epochs=10,
                     downstream_max_per_split=0, downstream_seeds=(0,)),
}


def pick(arg: str | None, valid, family: str, default: str | None = None) -> str:
    """The variant named by ARG (after the ':' of --config), or one line listing the valid ones."""
    arg = default if arg in (None, "") else arg
    if arg is None:
        raise ConfigError(f"experiments/{family}.py needs an argument: one of {', '.join(valid)} "
                          f"(e.g. --config=experiments/{family}.py:{list(valid)[0]})")
    if arg not in valid:
        raise ConfigError(f"experiments/{family}.py: unknown argument {arg!r}; valid: {', '.join(valid)} "
                          f"(e.g. --config=experiments/{family}.py:{list(valid)[0]})")
    return arg


def split_shape(arg: str | None, family: str, example: str) -> tuple[str, str]:
    """'VARIANT@SHAPE' -> ('VARIANT', 'SHAPE'); no '@' means the tiny shape. One line for an unknown shape."""
    name, sep, shape = (arg or "").partition("@")
    shape = shape if sep else "tiny"
    if shape not in RUN_SIZES:
        raise ConfigError(f"experiments/{family}.py: unknown shape {shape!r} in {arg!r}; valid shapes: "
                          f"{', '.join(RUN_SIZES)} (e.g. --config=experiments/{family}.py:{example}@small)")
    return name, shape


def pick_variant(arg: str | None, valid, family: str, default: str | None = None) -> tuple[str, str]:
    """(variant, shape) named by ARG = VARIANT or VARIANT@SHAPE, or one line listing the valid ones."""
    example = default or list(valid)[0]
    name, shape = split_shape(arg, family, example)
    name = default if name == "" else name
    if name not in valid:
        got = "needs a variant" if name is None else f"unknown variant {name!r}"
        raise ConfigError(f"experiments/{family}.py: {got}; valid: {', '.join(valid)} with an optional @SHAPE, "
                          f"SHAPE one of {', '.join(RUN_SIZES)} (e.g. --config=experiments/{family}.py:{example}@small)")
    return name, shape


def family_recipe(family: str, variant: str, shape: str) -> ml_collections.ConfigDict:
    """The Ankh3 recipe for one variant of a family at SHAPE. Runs of a non-tiny shape go to the MLflow
    experiment FAMILY@SHAPE, so that an analysis never pairs seeds of different shapes."""
    c = ankh3_recipe(shape, family=family, variant=variant)
    if shape != "tiny":
        c.tracking.experiment = f"{family}@{shape}"
    return c


def span_corruption(weight: float, noise_density=(0.15, 0.2, 0.3), mean_span_length: float = 1.0,
                    task_token: str = "[NLU]") -> dict:
    """Ankh3's denoiser: single-residue spans, the masking probability drawn per batch."""
    return dict(type="span_corruption", weight=weight, noise_density=tuple(noise_density),
                mean_span_length=mean_span_length, task_token=task_token, density_granularity="batch")


def x_denoiser(weight: float, settings=UL2_X_DENOISERS) -> dict:
    """UL2's X-denoiser under [NLG]: one (noise density, mean span length) of `settings` drawn per sequence.

    The default is UL2's set; a single pair, e.g. ((0.5, 3.0),), is one X-denoising setting alone.
    """
    densities, spans = zip(*((float(r), float(mu)) for r, mu in settings))
    return dict(type="span_corruption", weight=weight, noise_density=densities, mean_span_length=spans,
                task_token="[NLG]", density_granularity="example")


def completion(weight: float, fraction=0.5, task_token: str = "[S2S]") -> dict:
    """Sequence completion: the encoder reads the first 1-f of a sequence, the decoder writes the rest.

    `fraction` is stored as a (lo, hi) range drawn uniformly per sequence; lo == hi fixes it.
    """
    bounds = tuple(fraction) if isinstance(fraction, (tuple, list)) else (fraction, fraction)
    return dict(type="completion", weight=weight, fraction=bounds, task_token=task_token)


def ankh3_recipe(shape: str = "tiny", family: str = "base", variant: str | None = None) -> ml_collections.ConfigDict:
    """The Ankh3 recipe: half [NLU] span corruption (0.15/0.2/0.3 per batch), half [S2S] completion of 50%."""
    size = RUN_SIZES.get(shape, RUN_SIZES["ankh3_large"])
    c = ml_collections.ConfigDict()
    c.family = family
    c.variant = variant or shape
    c.seed = 0  # fixes parameters, data order and masking

    c.model = model_section(shape)
    c.model.remat = size["remat"]
    c.model.dtype = size["compute_dtype"]  # auto: bfloat16 on accelerators, float32 on CPU; params stay float32
    c.init_from = ""  # a directory written by ankh3.hf_checkpoint to start from published weights

    encoder_length, decoder_length = sequence_lengths(size["max_residues"], c.model.vocab_size)
    c.data = ml_collections.ConfigDict(dict(
        train="data/pretrain/train.fasta.xz",
        valid="data/pretrain/valid.fasta.xz",
        batch_size=size["batch_size"],
        max_residues=size["max_residues"],  # every sequence is cut to this many residues before its objective
        crop="random",  # where the cut falls: 'random' window or 'start' (why: ankh3/data/pipeline.py CROPS)
        encoder_length=encoder_length,  # tokens; sized for max_residues by sequence_lengths()
        decoder_length=decoder_length,
        min_residues=8,  # shorter sequences are skipped
        worker_count=0,  # Grain worker processes; 0 reads in the main process
        on_invalid="x",  # residues outside the vocabulary become X
        host_shards=0,  # input shards of the global batch, 0 = one per JAX process (N: what N hosts would see)
    ))

    c.objectives = ml_collections.ConfigDict(dict(
        nlu=span_corruption(0.5),
        s2s=completion(0.5),
    ))
    c.mixture_granularity = "example"  # each sequence draws its objective

    c.optimizer = ml_collections.ConfigDict(dict(
        name="adafactor", learning_rate=size["learning_rate"], schedule=size.get("schedule", "inverse_sqrt"),
        warmup_steps=size["warmup_steps"], final_fraction=0.1, clip_norm=1.0, weight_decay=0.0,
        b1=0.9, b2=0.999, grad_accum=1))

    c.train = ml_collections.ConfigDict(dict(
        steps=size["steps"],  # optimizer updates
        log_every=size["log_every"],
        eval_every=size["eval_every"],
        eval_batches=size["eval_batches"],  # held-out batches per evaluation (fixed across evaluations)
        checkpoint_every=size["checkpoint_every"],
        keep_checkpoints=3,
        progress_every_s=5.0,  # terminal progress line at most this often
    ))
    # Data parallel over the devices that `model` leaves; fsdp also splits parameters and optimizer state
    # over `data`. device_memory_gb: the accelerator memory --dry_run checks the plan against (0 = the table).
    c.mesh = ml_collections.ConfigDict(dict(model=1, fsdp=False, device_memory_gb=0.0))

    c.tracking = ml_collections.ConfigDict(dict(
        uri="",  # '' = MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db
        experiment="",  # '' = the family
    ))

    c.downstream = ml_collections.ConfigDict(dict(
        tasks=("ssp3", "contact", "gb1"),
        prefix="[NLU]",  # the task token put before each sequence when embedding
        seeds=size["downstream_seeds"],  # probe seeds: the table shows mean ± std over them
        epochs=size["downstream_epochs"],
        controls=("onehot", "random"),  # baselines probed beside the model: one-hot residues, a random encoder
        max_per_split=size["downstream_max_per_split"],  # 0 = every example; N keeps the first N of each split
        cache_dir="",  # '' = WORKDIR/downstream/embeddings
    ))
    # Per declared task: kind and reader options; a file or folder replacing the bundled data ('' = bundled);
    # its reader format ('' = sniffed). A task of your own: ankh3.config.declare_task (docs/interfaces.md).
    c.downstream.declared = ml_collections.ConfigDict(bundled_declarations())
    c.downstream.paths = ml_collections.ConfigDict({name: "" for name in c.downstream.declared})
    c.downstream.formats = ml_collections.ConfigDict({name: "" for name in c.downstream.declared})

    c.budget = ml_collections.ConfigDict(dict(tokens_per_step=0, total_tokens=0))
    record_budget(c)
    return c
