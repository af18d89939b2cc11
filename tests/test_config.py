"""ankh3/config.py: the one reader of ConfigDicts turns settings into objects or one-line errors."""
import os

import pytest

from ankh3.config import (ConfigError, build_mixture, check_config, model_config, record_budget, resolve_path,
                          unknown_key)
from experiments.base import get_config


def test_auto_dtype_is_float32_on_cpu_and_bfloat16_on_accelerators():
    section = dict(get_config().model, dtype="auto")
    assert model_config(section, "cpu").dtype == "float32"
    assert model_config(section, "gpu").dtype == "bfloat16" and model_config(section, "tpu").dtype == "bfloat16"


def test_a_bad_model_field_names_the_section():
    section = dict(get_config().model, d_modle=64)
    with pytest.raises(ConfigError, match="config.model"):
        model_config(section)


def test_unknown_key_lists_what_the_section_has():
    config = get_config()
    assert unknown_key(config, "train.steps") is None
    why = unknown_key(config, "train.stpes")
    assert why.startswith("train has") and "steps" in why


def test_budget_follows_the_overrides():
    config = get_config()
    config.data.batch_size, config.optimizer.grad_accum, config.train.steps = 3, 2, 7
    record_budget(config)
    per_step = 3 * 2 * (config.data.encoder_length + config.data.decoder_length)
    assert config.budget.tokens_per_step == per_step and config.budget.total_tokens == per_step * 7


@pytest.mark.parametrize("key,value", [("train.steps", 0), ("data.batch_size", -1), ("train.eval_every", 0)])
def test_non_positive_counts_name_the_key(key, value):
    config = get_config()
    section, field = key.split(".")
    config[section][field] = value
    with pytest.raises(ConfigError, match=rf"config\.{key} must be >= 1, got {value}"):
        check_config(config)


def test_a_mixture_needs_one_positive_weight():
    objectives = get_config().objectives
    for entry in objectives.values():
        entry.weight = 0.0
    with pytest.raises(ConfigError, match="no objective has a positive weight"):
        build_mixture(objectives)


def test_a_repeated_density_list_is_one_density():
    objectives = get_config().objectives
    objectives.nlu.noise_density = (0.2, 0.2)
    nlu = build_mixture(objectives).objectives[0]
    assert nlu.noise_density == 0.2


def test_relative_data_paths_fall_back_to_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_path("data/pretrain/train.fasta.xz", "/repo") == "/repo/data/pretrain/train.fasta.xz"
    (tmp_path / "mine.fasta").write_text(">a\nMKV\n")
    assert resolve_path("mine.fasta", "/repo") == os.path.join(str(tmp_path), "mine.fasta")
    assert resolve_path("/abs/x.fasta", "/repo") == "/abs/x.fasta"
