"""The SVI training step: the hot path of training.

One torch optimizer over all parameters of model and guide (``pyro.optim`` keeps one optimizer per
parameter, which costs ~0.5 ms per step for a small MLP), the ELBO's own gradient estimator, and
optional gradient-norm clipping.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from pyro.infer import ELBO
from torch import Tensor, nn


def parameters_of(*modules: nn.Module) -> list[nn.Parameter]:
    """The parameters of several modules, each once (a prior may share the guide's encoder)."""
    seen: dict[int, nn.Parameter] = {}
    for m in modules:
        for p in m.parameters():
            seen.setdefault(id(p), p)
    return list(seen.values())


class TrainStep:
    """``step(x) -> loss``: estimate the ELBO gradient for batch x, clip, and take one optimizer step.

    ``model`` and ``guide`` are Pyro callables (possibly beta-wrapped); ``elbo`` any Pyro ELBO. The
    returned loss is the ELBO estimator's value for the batch (a sum over the batch, as Pyro reports it).
    """

    def __init__(
        self,
        model: Callable[..., Any],
        guide: Callable[..., Any],
        elbo: ELBO,
        optimizer: torch.optim.Optimizer,
        params: Iterable[nn.Parameter],
        clip_norm: float | None = None,
    ) -> None:
        self.model, self.guide, self.elbo = model, guide, elbo
        self.optimizer = optimizer
        self.params = list(params)
        self.clip_norm = clip_norm

    def __call__(self, x: Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        # loss_and_grads works for every Pyro ELBO (RenyiELBO has no differentiable_loss).
        loss = self.elbo.loss_and_grads(self.model, self.guide, x)
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        self.optimizer.step()
        return float(loss)
