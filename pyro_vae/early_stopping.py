"""Early stopping on the validation ELBO (``TrainConfig.patience``, ``min_delta``).

An epoch improves when its validation ELBO exceeds the best so far by more than ``min_delta``; training stops at
the end of the ``patience``-th epoch in a row without an improvement (the convention of Keras' ``EarlyStopping``).
Epochs of a linear KL warm-up do not count against the patience (their ELBO is still rising because beta is):
Tomczak & Welling 2018's code resets the counter until its warm-up is over. The state is a function of the
validation ELBOs recorded so far, so a resumed run replays them from the checkpoint's history
(``EarlyStopping.replay``) and stops where an uninterrupted one does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass
class EarlyStopping:
    """The early-stopping state: the best validation ELBO and its epoch, and the epochs since it.

    ``patience`` 0 never stops (the best epoch is still followed, for ``best.pt``); ``warmup``: the first this
    many epochs do not count against the patience.
    """

    patience: int = 0
    min_delta: float = 0.0
    warmup: int = 0
    best: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0

    def update(self, epoch: int, value: float) -> bool:
        """Record the validation ELBO ``value`` of the 1-based ``epoch``; True when it is a new best."""
        if value > self.best + self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs = 0 if epoch <= self.warmup else self.bad_epochs + 1
        return False

    @property
    def stop(self) -> bool:
        """Whether training stops now: ``patience`` epochs in a row without an improvement."""
        return self.patience > 0 and self.bad_epochs >= self.patience

    def replay(self, history: Iterable[dict]) -> EarlyStopping:
        """This state after the ``val_elbo`` of each record of ``history`` (a checkpoint's metrics), in order."""
        for record in history:
            if "val_elbo" in record:
                self.update(int(record["epoch"]), float(record["val_elbo"]))
        return self
