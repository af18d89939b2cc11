"""A training-health check: a run that learns nothing says so, loudly, instead of exiting 0 in silence.

Two signs, each watched over the logged steps: the training loss stays at chance (ln of the
vocabulary: the model predicts a uniform distribution, e.g. a learning rate so large that Adafactor's
updates wipe the weights), or the gradient norm is zero (nothing flows back). Non-finite losses are
not this module's: the loop stops on them (train.NonFiniteLossError).
"""
from __future__ import annotations

import dataclasses
import math

TAG = "health"  # the MLflow tag a warning is set as
CHANCE_MARGIN = 0.02  # a loss within 2% of ln(vocab) (or above it) is no better than guessing


@dataclasses.dataclass
class HealthCheck:
    """Feed it each logged step's metrics (`observe`); it returns a warning once a sign has lasted
    `patience_steps` steps (and `min_logs` logs, so one noisy window is not enough). Steps up to
    `after_step` (the warm-up, where a large model may still sit at chance) are not judged."""

    vocab_size: int
    after_step: int = 0
    patience_steps: int = 200
    min_logs: int = 5
    _since: dict = dataclasses.field(default_factory=dict)  # sign -> (first step, logs seen)
    warned: dict = dataclasses.field(default_factory=dict)  # sign -> its warning, once given

    @property
    def chance_loss(self) -> float:
        return math.log(self.vocab_size)

    def signs(self, metrics: dict) -> dict[str, str]:
        """The signs present in one log's metrics: {name: what it means}."""
        found = {}
        losses = training_losses(metrics)
        loss = min(losses) if losses else None  # every objective at chance, the best included
        if loss is not None and math.isfinite(loss) and loss >= self.chance_loss * (1 - CHANCE_MARGIN):
            found["loss_at_chance"] = (f"training loss {loss:.3f} is at chance (ln {self.vocab_size} = "
                                       f"{self.chance_loss:.3f})")
        grad_norm = metrics.get("train/grad_norm")
        if grad_norm is not None and grad_norm == 0.0:
            found["zero_gradient"] = "the gradient norm is 0"
        return found

    def observe(self, step: int, metrics: dict) -> list[str]:
        """New warnings (each sign warns once) for the metrics logged at `step`."""
        if step <= self.after_step or not (training_losses(metrics) or "train/grad_norm" in metrics):
            return []  # the warm-up, or an evaluation-only log: nothing to judge
        present = self.signs(metrics)
        for sign in list(self._since):
            if sign not in present:
                del self._since[sign]  # the run recovered: start counting again
        new = []
        for sign, what in present.items():
            first, logs = self._since.get(sign, (step, 0))
            self._since[sign] = (first, logs + 1)
            if sign not in self.warned and logs + 1 >= self.min_logs and step - first >= self.patience_steps:
                self.warned[sign] = (f"{what} since step {first} (now step {step}): the run is not learning. Check "
                                     "optimizer.learning_rate (too high or too low), the data and the objectives")
                new.append(self.warned[sign])
        return new


def training_losses(metrics: dict) -> list[float]:
    """The training losses of one log: train/loss and each objective's train/NAME/loss."""
    return [v for k, v in metrics.items() if k.startswith("train/") and k.endswith("/loss")]
