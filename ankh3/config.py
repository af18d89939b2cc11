"""Reading a run's ConfigDict into library objects, and checking it before any work starts.

The experiments/ files build the ConfigDict; this module turns its sections into the objects the
library uses (model shape, objective mixture, optimizer spec) and computes the token budget.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

from ankh3.errors import UserError

OBJECTIVE_TYPES = ("span_corruption", "completion")
RUN_MODES = ("pretrain", "downstream", "all")


class ConfigError(UserError, ValueError):
    """A config value, argument or path that cannot be used; the message names the key and a fix."""


def check_choice(value: str, valid, what: str) -> str:
    """`value` if it is one of `valid`, else ConfigError listing the valid ones."""
    if value not in valid:
        raise ConfigError(f"unknown {what} {value!r}; valid: {', '.join(map(str, valid))}")
    return value


def unknown_key(config, key: str) -> str | None:
    """Why dotted `key` is not a field of `config` ('SECTION has a, b, ...'), or None when it is."""
    node, parts = config, key.split(".")
    for i, part in enumerate(parts):
        if not hasattr(node, "keys") or part not in node:
            where = ".".join(parts[:i]) or "the config"
            valid = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "no fields (not a section)"
            return f"{where} has {valid}"
        node = node[part]
    return None


def model_section(shape: str) -> dict[str, Any]:
    """Every ModelConfig field of a named shape, plus the shape's name (for the config's model section)."""
    from ankh3.model import ModelConfigError, get_shape

    try:
        cfg = get_shape(shape)
    except ModelConfigError as e:
        raise ConfigError(str(e)) from None
    return {"shape": shape, **dataclasses.asdict(cfg)}


def model_config(section: Mapping[str, Any], backend: str = "cpu"):
    """The ModelConfig of the config's model section (shape defaults with every field as set).

    dtype 'auto' computes in bfloat16 on accelerators and float32 on CPUs (where bf16 is slow);
    attention 'auto' becomes the backend's implementation (`ankh3.model.attention_for_backend`).
    """
    from ankh3.model import ModelConfigError, attention_for_backend, get_shape

    fields = dict(section)
    shape = fields.pop("shape")
    if fields.get("dtype") == "auto":
        fields["dtype"] = "float32" if backend == "cpu" else "bfloat16"
    if fields.get("attention") == "auto":
        fields["attention"] = attention_for_backend(backend, fields.get("dtype", "float32"))
    try:
        return get_shape(shape, **fields)
    except (ModelConfigError, TypeError) as e:
        raise ConfigError(f"config.model: {e}") from None


def build_objective(name: str, entry: Mapping[str, Any]):
    """One objective of the `objectives` section: a dict with `type`, `weight` and its settings."""
    from ankh3.objectives import Completion, ObjectiveError, SpanCorruption

    kind = check_choice(entry.get("type"), OBJECTIVE_TYPES, f"config.objectives.{name}.type")
    try:
        if kind == "span_corruption":
            return SpanCorruption(
                noise_density=_number_or_tuple(entry["noise_density"]),
                mean_span_length=_number_or_tuple(entry["mean_span_length"]),
                task_token=entry["task_token"],
                density_granularity=entry.get("density_granularity", "batch"),
                name=name)
        return Completion(fraction=_number_or_tuple(entry["fraction"]), task_token=entry["task_token"], name=name)
    except KeyError as e:
        raise ConfigError(f"config.objectives.{name} lacks {e}; see experiments/common.py for the fields") from None
    except ObjectiveError as e:
        raise ConfigError(f"config.objectives.{name}: {e}") from None


def build_mixture(objectives: Mapping[str, Mapping[str, Any]], granularity: str = "example"):
    """The Mixture of every objective with a positive weight, in the config's order."""
    from ankh3.objectives import Mixture, ObjectiveError

    entries = [(build_objective(name, entry), float(entry["weight"]))
               for name, entry in objectives.items() if float(entry.get("weight", 0.0)) > 0]
    if not entries:
        raise ConfigError("config.objectives: no objective has a positive weight; give at least one weight > 0")
    try:
        return Mixture(tuple(entries), granularity=granularity)
    except ObjectiveError as e:
        raise ConfigError(f"config.objectives: {e}") from None


def _number_or_tuple(value):
    """A float, or a tuple of floats; a range or choice list of one repeated value is that value."""
    if not isinstance(value, (tuple, list)):
        return float(value)
    values = tuple(float(v) for v in value)
    return values[0] if len(set(values)) == 1 else values


def tokens_per_step(config) -> int:
    """Encoder plus decoder positions of one optimizer update (padding included: the compute paid)."""
    data = config.data
    return int(data.batch_size) * int(config.optimizer.grad_accum) * (int(data.encoder_length) + int(data.decoder_length))


def record_budget(config) -> None:
    """Writes the token budget and each objective's layout of a cut sequence into `config.budget`
    (after overrides, so it matches the run)."""
    config.budget.tokens_per_step = tokens_per_step(config)
    config.budget.total_tokens = tokens_per_step(config) * int(config.train.steps)
    config.budget.layout = objective_layout(config)


def objective_layout(config) -> str:
    """What each objective makes of a sequence cut to data.max_residues, e.g. 's2s: 256+256 residues
    -> 258/257 tokens' for completion; for denoisers the tokens the worst setting needs."""
    from ankh3.objectives import Completion, completion_lengths
    from ankh3.tokenizer import Tokenizer

    cut = int(config.data.max_residues)
    sentinels = Tokenizer.default(int(config.model.vocab_size)).num_sentinels
    parts = [f"cut to {cut} residues ({config.data.crop})"]
    for objective in build_mixture(config.objectives, config.mixture_granularity).objectives:
        need_in, need_out = objective.needed_lengths(cut, sentinels)
        lo, hi = objective.fraction_bounds if isinstance(objective, Completion) else (0.0, 1.0)
        if lo == hi:
            ins, outs = completion_lengths(cut, lo)
            parts.append(f"{objective.task_name}: {int(ins) - 2}+{int(outs) - 1} residues -> {need_in}/{need_out} tokens")
        else:
            parts.append(f"{objective.task_name}: up to {need_in}/{need_out} tokens")
    return "; ".join(parts)


def resolve_path(path: str, root: str) -> str:
    """A data path as given (absolute or relative to the working directory), else relative to the repo."""
    if not path or os.path.isabs(path) or os.path.exists(path):
        return os.path.abspath(path) if path else path
    return os.path.join(root, path)


def check_config(config) -> None:
    """Checks settings that would otherwise fail late (after compiling, or mid-run)."""
    data, train = config.data, config.train
    positive = {"data.batch_size": data.batch_size, "data.encoder_length": data.encoder_length,
                "data.decoder_length": data.decoder_length, "train.steps": train.steps,
                "train.log_every": train.log_every, "train.eval_every": train.eval_every,
                "train.checkpoint_every": train.checkpoint_every, "train.keep_checkpoints": train.keep_checkpoints}
    for key, value in positive.items():
        if int(value) < 1:
            raise ConfigError(f"config.{key} must be >= 1, got {value}")
    check_choice(config.model.dtype, ("auto", "float32", "bfloat16", "float16"), "config.model.dtype")
    check_data(config)
    if config.downstream.prefix not in ("[NLU]", "[S2S]"):
        raise ConfigError(f"config.downstream.prefix must be '[NLU]' or '[S2S]', got {config.downstream.prefix!r}")


def check_data(config) -> None:
    """data.crop is known and every objective fits a sequence cut to data.max_residues into the lengths."""
    from ankh3.data.pipeline import CROPS, PipelineError, check_fits
    from ankh3.tokenizer import Tokenizer

    data = config.data
    check_choice(data.crop, CROPS, "config.data.crop")
    if not int(data.min_residues) <= int(data.max_residues):
        raise ConfigError(f"config.data.max_residues={data.max_residues} must be >= config.data.min_residues="
                          f"{data.min_residues}")
    mixture = build_mixture(config.objectives, config.mixture_granularity)
    try:
        check_fits(mixture, int(data.max_residues), int(data.encoder_length), int(data.decoder_length),
                   Tokenizer.default(int(config.model.vocab_size)).num_sentinels, where="config.data.")
    except PipelineError as e:
        raise ConfigError(str(e)) from None
