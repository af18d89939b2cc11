"""Experiment families: every variant builds, variants differ only where the ablation says, at equal compute."""
import importlib
import pathlib

import pytest

from ankh3.config import ConfigError, build_mixture, check_config, model_config, record_budget
from experiments.common import RUN_SIZES

EXPERIMENTS = pathlib.Path(__file__).resolve().parent.parent / "experiments"


def _families() -> tuple[str, ...]:
    """Every experiments file that declares VARIANTS (a family); sweep specs and common.py do not."""
    names = sorted(p.stem for p in EXPERIMENTS.glob("*.py") if p.stem not in ("__init__", "common"))
    return tuple(n for n in names if hasattr(importlib.import_module(f"experiments.{n}"), "VARIANTS"))


ALL_FAMILIES = _families()


def variant_args(family: str) -> tuple[str, ...]:
    """The ARGs to build: the family's VARIANTS; for base (whose ARG is the shape) every shape too."""
    variants = tuple(importlib.import_module(f"experiments.{family}").VARIANTS)
    return variants + tuple(f"{variants[0]}@{shape}" for shape in RUN_SIZES) if family == "base" else variants


def get_config(family, arg):
    return importlib.import_module(f"experiments.{family}").get_config(arg)


def compute(c):
    """What must be equal across the variants of a family."""
    return (c.data.train, c.data.batch_size, c.data.encoder_length, c.data.decoder_length, c.train.steps,
            c.optimizer.grad_accum, c.budget.total_tokens, c.model.shape, c.seed)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_variants_build_and_share_data_steps_and_batch_shape(family):
    configs = [get_config(family, arg) for arg in variant_args(family)]
    for c in configs:
        assert c.family == family
        build_mixture(c.objectives, c.mixture_granularity)
        model_config(c.model)
        tokens = c.data.batch_size * (c.data.encoder_length + c.data.decoder_length)
        assert c.budget.total_tokens == tokens * c.train.steps
    if family != "base":  # base's ARG is the model shape, so it changes the compute on purpose
        assert len({compute(c) for c in configs}) == 1
        assert len({c.variant for c in configs}) == len(configs)


@pytest.mark.parametrize("family,arg", [("base", "huge"), ("ablate_tasks", "mlm"), ("ablate_completion", "0.9"),
                                        ("ablate_xdenoiser", "maybe"), ("ablate_prefix", "nlg"),
                                        ("ablate_masking", "0.15,1.5"), ("ablate_masking", "x")])
def test_unknown_argument_lists_the_valid_ones(family, arg):
    with pytest.raises(ConfigError, match=f"experiments/{family}.py: .*{arg}.*valid"):
        get_config(family, arg)


def test_base_is_the_ankh3_recipe():
    mixture = build_mixture(get_config("base", None).objectives)
    nlu, s2s = mixture.objectives
    assert mixture.task_names == ("nlu", "s2s") and list(mixture.probabilities) == [0.5, 0.5]
    assert nlu.noise_density == (0.15, 0.2, 0.3) and nlu.mean_span_length == 1.0 and nlu.task_token == "[NLU]"
    assert nlu.density_granularity == "batch"
    assert s2s.fraction == 0.5 and s2s.task_token == "[S2S]"


def test_ablations_change_what_they_name():
    def tasks(family, arg):
        return build_mixture(get_config(family, arg).objectives).task_names

    assert tasks("ablate_tasks", "mlm_only") == ("nlu",)
    assert tasks("ablate_tasks", "completion_only") == ("s2s",)
    completion = dict(zip(tasks("ablate_completion", "0.75"),
                          build_mixture(get_config("ablate_completion", "0.75").objectives).objectives))["s2s"]
    assert completion.fraction == 0.75
    variable = build_mixture(get_config("ablate_completion", "variable").objectives).objectives[1]
    assert variable.fraction == (0.25, 0.75)
    on = build_mixture(get_config("ablate_xdenoiser", "on").objectives)
    assert dict(zip(on.task_names, on.probabilities))["nlg"] == pytest.approx(0.2)
    assert tasks("ablate_xdenoiser", "off") == ("nlu", "s2s")
    masking = build_mixture(get_config("ablate_masking", "0.15,0.3/3").objectives).objectives[0]
    assert masking.noise_density == (0.15, 0.3) and masking.mean_span_length == 3.0
    assert get_config("ablate_prefix", "s2s").downstream.prefix == "[S2S]"
    assert get_config("ablate_prefix", "nlu").downstream.prefix == "[NLU]"


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_family_lists_variants_and_a_buildable_baseline(family):
    module = importlib.import_module(f"experiments.{family}")
    assert isinstance(module.VARIANTS, tuple) and module.BASELINE in module.VARIANTS
    for name in module.VARIANTS:
        assert module.get_config(name).variant == name
    # The baseline is the Ankh3 recipe: the same objectives and probe prefix as experiments/base.py.
    base, baseline = get_config("base", None), module.get_config(module.BASELINE)
    assert build_mixture(baseline.objectives).task_names == ("nlu", "s2s")
    assert baseline.objectives.nlu.to_dict() == base.objectives.nlu.to_dict()
    assert baseline.objectives.s2s.to_dict() == base.objectives.s2s.to_dict()
    assert baseline.downstream.prefix == base.downstream.prefix


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_every_family_runs_a_variant_at_a_larger_shape(family):
    module = importlib.import_module(f"experiments.{family}")
    name = module.VARIANTS[-1]
    tiny, small = module.get_config(name), module.get_config(f"{name}@small")
    assert (tiny.model.shape, small.model.shape) == ("tiny", "small")
    assert small.data.batch_size > tiny.data.batch_size and small.variant == tiny.variant == name
    assert small.objectives.to_dict() == tiny.objectives.to_dict()
    assert small.downstream.prefix == tiny.downstream.prefix
    # Separate MLflow experiments, so an analysis never pairs seeds of different shapes.
    assert (tiny.tracking.experiment, small.tracking.experiment) == ("", f"{family}@small")


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_unknown_shape_is_one_line_listing_the_shapes(family):
    module = importlib.import_module(f"experiments.{family}")
    with pytest.raises(ConfigError) as e:
        module.get_config(f"{module.VARIANTS[0]}@huge")
    message = str(e.value)
    assert "\n" not in message and f"experiments/{family}.py" in message
    assert "'huge'" in message and "tiny, cpu_hour, small, ankh3_large, ankh3_xl" in message


def test_unknown_variant_with_a_shape_lists_variants_and_shapes():
    with pytest.raises(ConfigError, match=r"unknown variant 'mlm'; valid: mlm_only, completion_only, both with an "
                                          r"optional @SHAPE, SHAPE one of tiny, cpu_hour, small"):
        get_config("ablate_tasks", "mlm@small")


def test_tiny_default_probes_over_several_seeds_with_both_controls():
    # The default table must show a spread (mean ± std) and the two baselines the model has to beat.
    c = get_config("base", None)
    assert len(set(c.downstream.seeds)) >= 2 and set(c.downstream.controls) == {"onehot", "random"}
    assert c.downstream.max_per_split > 0  # a bounded CPU run; the accelerator shapes probe everything
    assert get_config("base", "ankh3_large").downstream.max_per_split == 0


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize("shape", ("tiny", "ankh3_large"))
def test_every_variant_fits_its_cut_into_the_shape_lengths(family, shape):
    module = importlib.import_module(f"experiments.{family}")
    for name in module.VARIANTS:
        c = module.get_config(f"{name}@{shape}")
        record_budget(c)
        check_config(c)  # raises ConfigError naming the lengths needed if an objective does not fit


@pytest.mark.parametrize("shape", ("ankh3_large", "ankh3_xl"))
def test_ankh3_shapes_cut_at_512_and_complete_256_from_256(shape):
    c = get_config("base", shape)
    assert c.data.max_residues == 512 and c.data.crop == "random"
    assert (c.data.encoder_length, c.data.decoder_length) == (520, 416)  # 512 + task + EOS, rounded up to 8
    assert "cut to 512 residues (random)" in c.budget.layout and "s2s: 256+256 residues -> 258/257 tokens" in c.budget.layout


def test_a_cut_longer_than_the_lengths_hold_is_one_line_naming_the_need():
    c = get_config("base", None)
    c.data.max_residues = 1000
    with pytest.raises(ConfigError, match=r"^config.data.max_residues=1000 needs encoder_length >= 1002 and "
                                          r"decoder_length >= \d+ for objectives nlu, s2s"):
        check_config(c)


def test_xdenoiser_on_is_ul2s_set_and_single_settings_are_variants():
    on = build_mixture(get_config("ablate_xdenoiser", "on").objectives)
    nlg = dict(zip(on.task_names, on.objectives))["nlg"]
    assert nlg.task_token == "[NLG]" and nlg.settings == ((0.5, 3.0), (0.5, 8.0), (0.15, 64.0), (0.5, 64.0))
    single = build_mixture(get_config("ablate_xdenoiser", "0.15_span64").objectives)
    assert dict(zip(single.task_names, single.objectives))["nlg"].settings == ((0.15, 64.0),)
