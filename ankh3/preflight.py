"""Checks of a run's settings that need no data, model or store: run by `experiment.resolve`, so that
`--dry_run` refuses what training would refuse later (after an MLflow run was created and a compile).

Each check builds the object the run will build (mixture, optimizer, model config, tokenizer) and
turns its complaint into a ConfigError naming the config key.
"""
from __future__ import annotations

from ankh3.config import ConfigError


def check_settings(config) -> None:
    """Objectives (densities, fractions, weights, task tokens), their fit in the batch lengths, the
    optimizer, the model shape and the pipeline settings, as the run will use them."""
    from ankh3.config import build_mixture, model_config
    from ankh3.errors import UserError
    from ankh3.optimizer import OptimizerSpec
    from ankh3.tokenizer import Tokenizer

    cfg = model_config(config.model)
    try:
        OptimizerSpec.from_config(config.optimizer, int(config.train.steps)).check()
    except TypeError as e:  # a field of the wrong kind, e.g. a string learning rate
        raise ConfigError(f"config.optimizer: {e}") from None
    mixture = build_mixture(config.objectives, config.mixture_granularity)
    tokenizer = Tokenizer.default(cfg.vocab_size)
    for name, entry in config.objectives.items():
        if float(entry.get("weight", 0.0)) < 0:  # build_mixture skips weights <= 0: a typo would vanish silently
            raise ConfigError(f"config.objectives.{name}.weight={entry.weight} must be >= 0 (0 leaves it out)")
        if float(entry.get("weight", 0.0)) > 0 and entry.get("task_token") not in tokenizer.pieces:
            raise ConfigError(f"config.objectives.{name}.task_token={entry.get('task_token')!r} is not a token of the "
                              "vocabulary; use '[NLU]' or '[S2S]'")
    data = config.data
    try:
        mixture.max_residues(int(data.encoder_length), int(data.decoder_length), tokenizer.num_sentinels)
    except UserError as e:
        raise ConfigError(f"config.data.encoder_length/decoder_length: {e}") from None
    if int(data.min_residues) < 2:
        raise ConfigError(f"config.data.min_residues={data.min_residues} must be >= 2 (objectives split a sequence)")
    if data.on_invalid not in ("error", "x"):
        raise ConfigError(f"config.data.on_invalid={data.on_invalid!r} must be 'error' or 'x'")
    if int(data.worker_count) < 0:
        raise ConfigError(f"config.data.worker_count={data.worker_count} must be >= 0 (0 reads in the main process)")
    if not 0 <= int(config.seed) < 2**32:
        raise ConfigError(f"config.seed={config.seed} must lie in [0, 2**32)")
    if int(config.train.eval_batches) < 0:
        raise ConfigError(f"config.train.eval_batches={config.train.eval_batches} must be >= 0")
    if float(config.train.progress_every_s) < 0:
        raise ConfigError(f"config.train.progress_every_s={config.train.progress_every_s} must be >= 0")
