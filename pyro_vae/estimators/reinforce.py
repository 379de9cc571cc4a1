"""REINFORCE, the score-function estimator (Williams 1992), with a learned baseline (NVIL, Mnih & Gregor 2014), by
Pyro's ``TraceGraph_ELBO``.

Every non-reparameterised latent site of the guide's trace gets the option
``infer={"baseline": {"baseline_value": b(x)}}`` (unless the user's guide gave it one), set on the trace after the
guide ran, where the site's final batch shape (particles and data) is known, so the user's guide runs as written
and Pyro's machinery does the rest: the score term of each site uses its downstream cost (Rao-Blackwellised by the
dependency graph) minus b(x), and Pyro adds (cost - b)^2 to the surrogate loss. The baseline
``b(x) = c + a^T vec(x) + a0`` (option ``baseline``: "learned") is NVIL's input-dependent baseline plus its running
mean c of the learning signal: a linear map of the model's first argument (the batch), owned and trained by the
estimator itself (its own Adam, ``baseline_lr``), since it is no part of the model; "average" is c alone; "none" is
plain REINFORCE.

Value: the ELBO (the mean over K particles of log p(x, z) - log q(z | x)). Gradient: unbiased for the ELBO's gradient
with respect to guide and model parameters, whatever the baseline (b depends on x and past draws only, never on the
current z); the baseline only changes the variance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from pyro.infer import TraceGraph_ELBO
from torch import nn

from pyro_vae.checks import check_number
from pyro_vae.estimators._score import is_latent

BASELINES = ("learned", "average", "none")


@dataclass
class ReinforceOptions:
    """Fields:
    baseline: the score-function baseline: learned (NVIL: running mean + linear in x), average (running mean), none.
    baseline_lr: the learning rate of the learned baseline's own Adam.
    baseline_decay: the decay of the running mean c of the learning signal (c <- d c + (1 - d) mean signal).
    """

    baseline: Literal["learned", "average", "none"] = "learned"
    baseline_lr: float = 1e-3
    baseline_decay: float = 0.9

    def __post_init__(self) -> None:
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, got {self.baseline!r}")
        check_number(self.baseline_lr, "baseline_lr", positive=True)
        check_number(self.baseline_decay, "baseline_decay", low=0, high=1, bounds="[)")


class ReinforceELBO(TraceGraph_ELBO):
    """``TraceGraph_ELBO`` with a baseline on every non-reparameterised guide site (module doc)."""

    def __init__(
        self,
        baseline: Literal["learned", "average", "none"] = "learned",
        baseline_lr: float = 1e-3,
        baseline_decay: float = 0.9,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = True,
    ) -> None:
        ReinforceOptions(baseline, baseline_lr, baseline_decay)  # checks them
        super().__init__(
            num_particles=num_particles, max_plate_nesting=max_plate_nesting, vectorize_particles=vectorize_particles
        )
        self.baseline = baseline
        self.baseline_lr = baseline_lr
        self.baseline_decay = baseline_decay
        self.running_mean = 0.0
        self._seen = False
        self.baseline_net: nn.Linear | None = None
        self._optimizer: torch.optim.Optimizer | None = None

    def _baseline_value(self, args: tuple) -> torch.Tensor | None:
        if self.baseline == "none":
            return None
        c = torch.tensor(self.running_mean)
        x = args[0] if args and torch.is_tensor(args[0]) and args[0].dim() >= 1 else None
        if self.baseline == "average" or x is None:
            return c
        flat = x.detach().reshape(x.shape[0], -1).to(torch.get_default_dtype())
        if self.baseline_net is None or self.baseline_net.in_features != flat.shape[1]:
            self.baseline_net = nn.Linear(flat.shape[1], 1)
            nn.init.zeros_(self.baseline_net.weight)
            nn.init.zeros_(self.baseline_net.bias)
            self._optimizer = torch.optim.Adam(self.baseline_net.parameters(), lr=self.baseline_lr)
        return c + self.baseline_net(flat).squeeze(-1)

    def _get_trace(self, model: Any, guide: Any, args: tuple, kwargs: dict) -> tuple[Any, Any]:
        model_trace, guide_trace = super()._get_trace(model, guide, args, kwargs)
        value = self._baseline_value(args)
        if value is not None:
            for site in guide_trace.nodes.values():
                if is_latent(site) and not site["fn"].has_rsample and "baseline" not in site["infer"]:
                    # Pyro requires the baseline to have the shape of the site's downstream cost (its batch shape).
                    baseline = {"baseline_value": value.expand(site["fn"].batch_shape)}
                    site["infer"] = {**site["infer"], "baseline": baseline}
        return model_trace, guide_trace

    def _update_mean(self, loss: float, args: tuple) -> None:
        n = args[0].shape[0] if args and torch.is_tensor(args[0]) and args[0].dim() >= 1 else 1
        signal = -loss / n
        d = self.baseline_decay if self._seen else 0.0
        self.running_mean = d * self.running_mean + (1 - d) * signal
        self._seen = True

    def loss_and_grads(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        if self._optimizer is not None:
            self._optimizer.zero_grad()
        loss = super().loss_and_grads(model, guide, *args, **kwargs)
        if self._optimizer is not None and self.baseline_net is not None and self.baseline_net.weight.grad is not None:
            self._optimizer.step()
        self._update_mean(loss, args)
        return loss

    def differentiable_loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """A tensor whose value is the loss and whose gradient is the REINFORCE gradient (baseline not trained)."""
        elbo, surrogate = self._loss_and_surrogate_loss(model, guide, args, kwargs)
        loss = -elbo
        return loss.detach() + (surrogate - surrogate.detach())
