"""Sticking the landing (STL, Roeder, Wu & Duvenaud 2017): the ELBO with the path-derivative gradient.

The value is the ordinary Monte Carlo ELBO, log p(x, z) - log q(z | x) at z ~ q (the same number
``Trace_ELBO`` reports). The gradient differs: log q is evaluated with the variational parameters detached,
so the score term (d log q / dphi at fixed z, zero in expectation) drops out. The gradient is still unbiased
for the ELBO's, and when q equals the true posterior log p(x, z) - log q(z | x) = log p(x) for every z, so the
guide's gradient is exactly zero with zero variance, where ``Trace_ELBO``'s is not.
"""

from __future__ import annotations

from typing import Any

import torch
from pyro.infer import Trace_ELBO
from pyro.util import warn_if_nan

from pyro_vae.estimators._jit import JitLossMixin
from pyro_vae.estimators.detached_q import DETACHED_LOG_Q, add_detached_log_q


class STLELBO(Trace_ELBO):
    """Trace_ELBO's value with the STL gradient; every guide latent must be reparameterised.

    Works with any model/guide pair whose latents are reparameterised: a mean-field guide's distributions are
    copied with detached parameters; a guide whose sites depend on earlier ones is run again with its
    parameters frozen (``pyro_vae.estimators.detached_q``). ``num_particles`` > 1 are vectorised by default.
    """

    #: Whether log q at fixed parameters may run the guide again (not inside a compiled graph).
    can_rerun_guide = True

    def __init__(
        self,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = True,
        ignore_jit_warnings: bool = False,
        jit_options: dict | None = None,
    ) -> None:
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            ignore_jit_warnings=ignore_jit_warnings,
            jit_options=jit_options,
        )

    def loss_and_surrogate_loss(
        self, model: Any, guide: Any, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(-ELBO estimate, -surrogate) as tensors, averaged over particles and summed over the batch."""
        loss: Any = 0.0
        surrogate: Any = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            # The guide as it was traced (in the particle plate, whose dim is known once the nesting is).
            traced_guide = self._vectorized_num_particles(guide) if self.vectorize_particles else guide
            add_detached_log_q(guide_trace, traced_guide if self.can_rerun_guide else None, args, kwargs)
            log_p = model_trace.log_prob_sum()
            log_q = sum(s["log_prob_sum"] for s in guide_trace.nodes.values() if s["type"] == "sample")
            log_q_fixed_params = sum(
                s[DETACHED_LOG_Q].sum() for s in guide_trace.nodes.values() if s["type"] == "sample"
            )
            loss = loss - (log_p - log_q).detach() / self.num_particles
            surrogate = surrogate - (log_p - log_q_fixed_params) / self.num_particles
        return loss, surrogate

    def differentiable_loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        loss, surrogate = self.loss_and_surrogate_loss(model, guide, *args, **kwargs)
        return loss + (surrogate - surrogate.detach())

    def loss_and_grads(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        loss, surrogate = self.loss_and_surrogate_loss(model, guide, *args, **kwargs)
        if getattr(surrogate, "requires_grad", False):
            surrogate.backward(retain_graph=self.retain_graph)
        value = float(loss)
        warn_if_nan(value, "loss")
        return value


class JitSTLELBO(JitLossMixin, STLELBO):
    """``STLELBO`` with its loss compiled once per model, guide and batch shape.

    Mean-field guides only: holding the parameters of a guide with dependent sites fixed means running it again
    with frozen parameters, which a compiled graph does not record; such a guide is refused (use ``STLELBO``).
    """

    can_rerun_guide = False
