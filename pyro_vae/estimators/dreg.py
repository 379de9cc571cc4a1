"""Doubly reparameterised gradients for the IWAE bound (DReG, Tucker, Lawson, Gu & Maddison 2018).

The value is the IWAE bound IWAE_K(x) = log (1/K) sum_k w_k, the same number ``IWAEBound`` reports.
The gradient is unbiased for the IWAE gradient but differs from the plain one:
- model (decoder) parameters theta: sum_k w~_k grad_theta log w_k, as IWAE, with w~_k = w_k / sum_j w_j;
- guide (encoder) parameters phi: sum_k w~_k^2 (d log w_k / d z_k)(d z_k / d phi), with log q evaluated
  at detached phi, i.e. the score term of the IWAE gradient is replaced by its reparameterised equivalent,
  whose variance does not grow with K (Rainforth et al. 2018 show the plain encoder SNR falls as 1/sqrt(K)).

One pass: the surrogate is sum_k w~_k log w_k (log q with detached parameters), and a gradient hook on each
latent z_k multiplies the gradient reaching it by w~_k, so phi gets w~_k^2 and theta keeps w~_k. This assumes
the guide's latent sites do not depend on one another (a mean-field guide, as in this project); a hierarchical
guide would have hooks applied twice along z_1 -> z_2. Gradient hooks are not recorded by the JIT, so there is
no jit variant.
"""

from __future__ import annotations

import torch
from pyro.poutine.trace_struct import Trace

from pyro_vae.estimators.detached_q import DETACHED_LOG_Q, add_detached_log_q
from pyro_vae.estimators.log_weights import log_weights_from_traces
from pyro_vae.estimators.particle_elbo import ParticleELBO, log_mean_exp, normalized_weights


class DReGBound(ParticleELBO):
    """Estimates IWAE_K(x) summed over the batch (``loss`` returns its negation), with DReG gradients."""

    def _loss_and_surrogate(self, model_trace: Trace, guide_trace: Trace) -> tuple[torch.Tensor, torch.Tensor]:
        add_detached_log_q(guide_trace)
        log_w = log_weights_from_traces(model_trace, guide_trace).detach()
        log_w_fixed_q = log_weights_from_traces(model_trace, guide_trace, guide_log_prob=DETACHED_LOG_Q)
        weights = normalized_weights(log_w)
        for site in guide_trace.nodes.values():
            if site["type"] == "sample" and site["value"].requires_grad:
                z = site["value"]
                if tuple(z.shape[: weights.dim()]) != tuple(weights.shape):
                    raise ValueError(
                        f"DReG needs latent site {site['name']!r} to have batch shape {tuple(weights.shape)} "
                        f"(particles, examples); got value shape {tuple(z.shape)}"
                    )
                w = weights.reshape(weights.shape + (1,) * (z.dim() - weights.dim()))
                z.register_hook(lambda grad, w=w: grad * w)
        return -log_mean_exp(log_w, 0).sum(), -(weights * log_w_fixed_q).sum()
