"""Base class for ELBOs built from vectorised per-example importance log weights (IWAE, Renyi, DReG)."""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any

import torch
from pyro.infer import ELBO
from pyro.infer.enum import get_importance_trace
from pyro.poutine.trace_struct import Trace
from pyro.util import warn_if_nan

from pyro_vae.checks import check_number
from pyro_vae.estimators.log_weights import guess_plate_nesting, vectorized_traces


class ParticleELBO(ELBO):
    """A Pyro ELBO whose K particles per example are drawn at once, in a plate left of the data plate.

    Subclasses implement ``_loss_and_surrogate(model_trace, guide_trace) -> (loss, surrogate_loss)``: the
    estimator's value (negated, summed over the batch, as Pyro reports losses) and a scalar whose gradient
    is the estimator's gradient. Every latent must be reparameterised.

    ``max_plate_nesting`` counts the model's own plates (1 here: "data"); the particle plate goes left of
    them. Left at infinity, it is found by running the model and guide once at the first call.
    """

    def __init__(self, num_particles: int = 10, max_plate_nesting: float = float("inf")) -> None:
        check_number(num_particles, "num_particles", integer=True, low=1)
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)

    def _get_trace(self, model: Any, guide: Any, args: tuple, kwargs: dict) -> tuple[Trace, Trace]:
        return get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)

    def _traces(self, model: Any, guide: Any, args: tuple, kwargs: dict) -> tuple[Trace, Trace]:
        if self.max_plate_nesting == float("inf"):
            self.max_plate_nesting = guess_plate_nesting(model, guide, args, kwargs)
        model_trace, guide_trace = vectorized_traces(
            model, guide, self.num_particles, int(self.max_plate_nesting), args, kwargs
        )
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample" and not site["fn"].has_rsample:
                raise ValueError(
                    f"{type(self).__name__} needs reparameterised latents; guide site {name!r} "
                    f"({type(site['fn']).__name__}) has no rsample"
                )
        return model_trace, guide_trace

    @abstractmethod
    def _loss_and_surrogate(self, model_trace: Trace, guide_trace: Trace) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def loss_and_surrogate_loss(
        self, model: Any, guide: Any, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, surrogate loss) as tensors; the jit variants compile exactly this."""
        return self._loss_and_surrogate(*self._traces(model, guide, args, kwargs))

    def loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        """The negated estimate, summed over the batch."""
        loss, _ = self.loss_and_surrogate_loss(model, guide, *args, **kwargs)
        value = float(loss)
        warn_if_nan(value, "loss")
        return value

    def differentiable_loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """A tensor whose value is ``loss`` and whose gradient is this estimator's gradient."""
        loss, surrogate = self.loss_and_surrogate_loss(model, guide, *args, **kwargs)
        return loss + (surrogate - surrogate.detach())

    def loss_and_grads(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        loss, surrogate = self.loss_and_surrogate_loss(model, guide, *args, **kwargs)
        if surrogate.requires_grad:
            surrogate.backward(retain_graph=self.retain_graph)
        value = float(loss)
        warn_if_nan(value, "loss")
        return value


def log_mean_exp(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log (1/K) sum_k exp(log_w_k) along ``dim``, computed stably."""
    return torch.logsumexp(log_w, dim=dim) - math.log(log_w.shape[dim])


def normalized_weights(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """w~_k = w_k / sum_j w_j along ``dim`` (a softmax).

    Written as exp(log w - logsumexp log w): ``torch.softmax`` over the leading dimension of a small
    tensor takes ~1 ms on a busy 2-core machine (a multi-threaded kernel), 100x this.
    """
    return torch.exp(log_w - torch.logsumexp(log_w, dim=dim, keepdim=True))
