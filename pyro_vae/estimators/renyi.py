"""The Renyi variational bound per example (Li & Turner 2016), with K vectorised particles.

For alpha != 1:  L_alpha(x) = 1/(1 - alpha) * log (1/K) sum_k w_k^(1 - alpha),  w_k = p(x, z_k) / q(z_k | x);
alpha = 0 is the IWAE bound (Burda et al. 2015) and alpha -> 1 the K-sample ELBO, (1/K) sum_k log w_k.
For alpha >= 0, E[L_alpha] is a lower bound on log p(x) that tightens as alpha falls and as K grows.

Pyro's ``RenyiELBO`` computes the same value and gradient (the tests check it); this class adds
``differentiable_loss`` (so it can be compiled and used by ``pyro_vae.step.TrainStep``), the alpha -> 1
limit, and shares its per-example log weights with DReG.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pyro.poutine.trace_struct import Trace

from pyro_vae.checks import check_number
from pyro_vae.estimators._jit import JitLossMixin
from pyro_vae.estimators.log_weights import log_weights_from_traces
from pyro_vae.estimators.particle_elbo import ParticleELBO, log_mean_exp, normalized_weights


@dataclass
class RenyiOptions:
    """Fields:
    alpha: the order of the Renyi bound (0 = the IWAE bound, 1 = the K-sample ELBO; >= 0 for a lower bound).
    """

    alpha: float = 0.5

    def __post_init__(self) -> None:
        check_number(self.alpha, "alpha")


class RenyiBound(ParticleELBO):
    """Estimates L_alpha(x) summed over the batch (``loss`` returns its negation).

    Gradient: sum_k w~_k grad log w_k with w~ = softmax_k((1 - alpha) log w) (the reparameterised
    gradient of L_alpha). Not the ELBO's gradient unless alpha = 1.
    """

    def __init__(
        self,
        alpha: float = 0.5,
        num_particles: int = 10,
        max_plate_nesting: float = float("inf"),
        ignore_jit_warnings: bool = False,
        jit_options: dict | None = None,
    ) -> None:
        check_number(alpha, "alpha")
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        self.alpha = float(alpha)
        self.ignore_jit_warnings = ignore_jit_warnings
        self.jit_options = jit_options

    def _loss_and_surrogate(self, model_trace: Trace, guide_trace: Trace) -> tuple[torch.Tensor, torch.Tensor]:
        log_w = log_weights_from_traces(model_trace, guide_trace)
        if self.alpha == 1.0:
            bound = log_w.detach().mean(0)
            weights = torch.full_like(log_w, 1.0 / log_w.shape[0])
        else:
            scaled = (1.0 - self.alpha) * log_w.detach()
            bound = log_mean_exp(scaled, 0) / (1.0 - self.alpha)
            weights = normalized_weights(scaled)
        return -bound.sum(), -(weights * log_w).sum()


class JitRenyiBound(JitLossMixin, RenyiBound):
    """``RenyiBound`` with its loss compiled once per model, guide and batch shape."""
