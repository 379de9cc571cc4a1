"""Beta-VAE weighting (Higgins et al. 2017) and KL annealing (Bowman et al. 2016; Fu et al. 2019) in one place.

The objective recon + beta * KL needs the latent sites of BOTH the model and the guide scaled by beta:

- ``TraceMeanField_ELBO`` computes the analytic KL from the *guide* site's scale, so scaling only the
  model's latent site is silently ignored there;
- ``Trace_ELBO`` computes beta * log p(z) - log q(z) if only the model's site is scaled, which is not
  beta * KL.

``poutine.scale`` scales every site of a function, observed ones included, so it cannot express
"latent sites only"; ``LatentScale`` is the small messenger that does.

Two ways to apply it. ``BetaScaled(model, guide, beta)`` wraps a pair with a Python ``beta`` attribute (for SVI
and hand-written loops). ``beta_input(fn)`` instead makes beta an argument, ``fn_b(x, beta, ...)``, so that a
compiled objective takes it as an input tensor: KL warm-up then changes beta without re-tracing and without
freezing an old value into the graph (``step(x, beta=...)`` of ``pyro_vae.step.TrainStep`` uses it).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

from pyro.poutine.messenger import Messenger

from pyro_vae.checks import check_number


class LatentScale(Messenger):
    """Multiply the scale of every unobserved sample site by ``beta`` (observed sites are left alone)."""

    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = beta

    def _process_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = self.beta * msg["scale"]


def beta_input(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn_b(x, beta, *args, **kwargs)``: run the model or guide ``fn(x, *args, **kwargs)`` with its latent sites'
    scale multiplied by ``beta`` (a number or a 0-dim tensor, an ordinary argument of the call)."""

    @functools.wraps(fn)
    def scaled(x: Any, beta: Any, *args: Any, **kwargs: Any) -> Any:
        with LatentScale(beta):
            return fn(x, *args, **kwargs)

    return scaled


class BetaScaled:
    """Wrap a model and a guide so the ELBO they give is E_q[log p(x|z)] - beta * KL(q || p).

    ``beta`` is a plain attribute: changing it (KL warm-up) takes effect at the next ELBO call.

    >>> scaled = BetaScaled(model, guide, beta=0.25)
    >>> TraceMeanField_ELBO().loss(scaled.model, scaled.guide, x)   # = -recon + 0.25 * KL
    """

    def __init__(self, model: Callable[..., Any], guide: Callable[..., Any], beta: float = 1.0) -> None:
        check_number(beta, "beta", low=0)
        self.base_model = model
        self.base_guide = guide
        self.beta = float(beta)
        self.model = self._wrap(model)
        self.guide = self._wrap(guide)

    def _wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def scaled(*args: Any, **kwargs: Any) -> Any:
            if self.beta == 1.0:
                return fn(*args, **kwargs)
            with LatentScale(self.beta):
                return fn(*args, **kwargs)

        return scaled


def warmup_beta(epoch: int, beta: float, warmup_epochs: int) -> float:
    """Linear KL warm-up: beta * min(1, epoch / warmup_epochs) for 0-based ``epoch`` (0 -> 0, warmup -> beta)."""
    if warmup_epochs <= 0:
        return beta
    return beta * min(1.0, epoch / warmup_epochs)


#: The KL schedules of ``TrainConfig.kl_schedule``.
KL_SCHEDULES = ("linear", "cyclical")


def cyclical_beta(epoch: int, beta: float, epochs: int, cycles: int, ratio: float) -> float:
    """Cyclical KL annealing (Fu, Li, Liu, Gao, Celikyilmaz and Carin 2019, "Cyclical Annealing Schedule: A Simple
    Approach to Mitigating KL Vanishing", eq. 6), per epoch: with T = ``epochs`` and M = ``cycles``,
    tau = ((t - 1) mod ceil(T / M)) / (T / M) for the 1-based epoch t = ``epoch`` + 1, and
    beta_t = beta * min(1, tau / R), R = ``ratio``: M cycles, each rising linearly from 0 to beta over the first
    fraction R of its epochs, then flat at beta."""
    tau = (epoch % math.ceil(epochs / cycles)) * cycles / epochs  # = (epoch mod ceil(T/M)) / (T/M)
    return beta * min(1.0, tau / ratio)


def kl_beta(
    epoch: int,
    beta: float,
    schedule: str = "linear",
    warmup_epochs: int = 0,
    epochs: int = 1,
    cycles: int = 4,
    ratio: float = 0.5,
) -> float:
    """beta of the 0-based ``epoch`` under the KL ``schedule``: "linear" (``warmup_beta``) or "cyclical"
    (``cyclical_beta`` over ``epochs``)."""
    if schedule == "cyclical":
        return cyclical_beta(epoch, beta, epochs, cycles, ratio)
    return warmup_beta(epoch, beta, warmup_epochs)
