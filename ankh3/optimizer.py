"""Optimisers and learning-rate schedules for pretraining, built from the `optimizer` config section.

Adafactor is the T5/Ankh default; AdamW is the common alternative. Every schedule warms up
linearly, then follows inverse-square-root (T5), cosine or constant. Gradient accumulation wraps
the whole chain in `optax.MultiSteps`, so one optimizer update consumes `grad_accum` micro-batches.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import optax

from ankh3.errors import UserError

OPTIMIZERS = ("adafactor", "adamw")
SCHEDULES = ("inverse_sqrt", "cosine", "constant")


class OptimizerConfigError(UserError, ValueError):
    """An optimizer or schedule setting that cannot be used."""


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """What `make_optimizer` needs; `from_config` reads it from a config section."""

    name: str = "adafactor"
    learning_rate: float = 1e-2
    schedule: str = "inverse_sqrt"
    warmup_steps: int = 100
    total_steps: int = 1000  # optimizer updates; the cosine schedule decays to its end
    final_fraction: float = 0.1  # cosine ends at learning_rate * final_fraction
    clip_norm: float = 1.0  # global-norm gradient clipping; 0 disables
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    grad_accum: int = 1

    @classmethod
    def from_config(cls, section, total_steps: int) -> "OptimizerSpec":
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in dict(section).items() if k in fields}
        values.setdefault("total_steps", total_steps)
        return cls(**values)

    def check(self) -> "OptimizerSpec":
        problems = [
            (self.name in OPTIMIZERS, f"optimizer.name {self.name!r} is not one of {OPTIMIZERS}"),
            (self.schedule in SCHEDULES, f"optimizer.schedule {self.schedule!r} is not one of {SCHEDULES}"),
            (self.learning_rate > 0, f"optimizer.learning_rate must be > 0, got {self.learning_rate}"),
            (self.warmup_steps >= 0, f"optimizer.warmup_steps must be >= 0, got {self.warmup_steps}"),
            (self.grad_accum >= 1, f"optimizer.grad_accum must be >= 1, got {self.grad_accum}"),
            (self.clip_norm >= 0, f"optimizer.clip_norm must be >= 0 (0 disables), got {self.clip_norm}"),
        ]
        for ok, message in problems:
            if not ok:
                raise OptimizerConfigError(message)
        return self


def make_schedule(spec: OptimizerSpec) -> optax.Schedule:
    """Learning rate per optimizer update: linear warm-up from 0, then the chosen decay."""
    peak, warmup = spec.learning_rate, max(spec.warmup_steps, 0)

    def warm(step):
        return peak * jnp.minimum(1.0, (step + 1) / max(warmup, 1))

    if spec.schedule == "constant":
        return warm
    if spec.schedule == "inverse_sqrt":
        # T5: lr ∝ 1/sqrt(max(step, warmup)), continuous at the end of warm-up.
        return lambda step: jnp.where(
            step < warmup, warm(step), peak * jnp.sqrt(max(warmup, 1) / jnp.maximum(step + 1, 1.0)))
    decay_steps = max(spec.total_steps - warmup, 1)
    cosine = optax.cosine_decay_schedule(peak, decay_steps, alpha=spec.final_fraction)
    return lambda step: jnp.where(step < warmup, warm(step), cosine(step - warmup))


def make_optimizer(spec: OptimizerSpec) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax chain (clip, optimizer, accumulation) and its schedule, for logging the rate."""
    spec.check()
    schedule = make_schedule(spec)
    parts = [optax.clip_by_global_norm(spec.clip_norm)] if spec.clip_norm > 0 else []
    if spec.name == "adafactor":
        parts.append(optax.adafactor(
            learning_rate=schedule, weight_decay_rate=spec.weight_decay or None))
    else:
        parts.append(optax.adamw(schedule, b1=spec.b1, b2=spec.b2, weight_decay=spec.weight_decay))
    tx = optax.chain(*parts)
    if spec.grad_accum > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=spec.grad_accum)
    return tx, schedule
