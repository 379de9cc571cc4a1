"""Doubly reparameterised gradients for the IWAE bound (DReG, Tucker, Lawson, Gu & Maddison 2018).

The value is the IWAE bound IWAE_K(x) = log (1/K) sum_k w_k, the same number ``IWAEBound`` reports.
The gradient is unbiased for the IWAE gradient but differs from the plain one:

- model (decoder) parameters theta: sum_k w~_k grad_theta log w_k, as IWAE, with w~_k = w_k / sum_j w_j;
- guide (encoder) parameters phi: sum_k w~_k^2 (d log w_k / d z_k)(d z_k / d phi), with log q evaluated at
  detached phi (eq. 7 of the paper), i.e. the score term of the IWAE gradient is replaced by its
  reparameterised equivalent, whose variance does not grow with K (Rainforth et al. 2018 show the plain
  encoder SNR falls as 1/sqrt(K)).

One pass. The model and log q at fixed phi are evaluated at copies z'_k of the sampled latents (an identity
in value) whose gradient hook multiplies what reaches them by w~_k; the surrogate is
sum_k w~_k (log p(x, z'_k) - log q_fixed(z'_k)). So theta gets w~_k and phi, through z'_k -> z_k -> phi,
w~_k^2. The guide's own use of an earlier site (q(z2 | z1) in a hierarchical guide) goes through z_k, not
z'_k, so every path to phi is weighted once; log q_fixed keeps its dependence on z1 (see
``pyro_vae.estimators.detached_q``). Gradient hooks are not recorded by the JIT, so there is no jit variant.

References:
    - [1] G. Tucker, D. Lawson, S. Gu, C. J. Maddison. Doubly Reparameterized Gradient Estimators for Monte
      Carlo Objectives. ICLR 2019 (arXiv:1810.04152, 2018).
    - [2] T. Rainforth et al. Tighter Variational Bounds are Not Necessarily Better. ICML 2018.
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.util import is_validation_enabled
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_model_guide_match

from pyro_vae.estimators.detached_q import DETACHED_LOG_Q, add_detached_log_q, latent_sites
from pyro_vae.estimators.log_weights import PARTICLE_PLATE, guess_plate_nesting, log_weights_from_traces
from pyro_vae.estimators.particle_elbo import ParticleELBO, log_mean_exp, normalized_weights

#: The guide-site field holding the hooked copy z' of the sampled value.
HOOKED_VALUE = "dreg_hooked_value"


class DReGBound(ParticleELBO):
    """Estimates IWAE_K(x) summed over the batch (``loss`` returns its negation), with DReG gradients.

    Any guide whose latents are reparameterised, mean-field or not.
    """

    def _traces(self, model: Any, guide: Any, args: tuple, kwargs: dict) -> tuple[Trace, Trace]:
        if self.max_plate_nesting == float("inf"):
            self.max_plate_nesting = guess_plate_nesting(model, guide, args, kwargs)
        nesting = int(self.max_plate_nesting)
        particles = pyro.plate(PARTICLE_PLATE, self.num_particles, dim=-(nesting + 1))
        guide_trace = poutine.trace(particles(guide)).get_trace(*args, **kwargs)
        sites = latent_sites(guide_trace)
        hooked = {name: site["value"].view_as(site["value"]) for name, site in sites.items()}
        replayed = guide_trace.copy()
        for name, value in hooked.items():
            replayed.nodes[name] = {**replayed.nodes[name], "value": value}
        model_trace = poutine.trace(poutine.replay(particles(model), trace=replayed)).get_trace(*args, **kwargs)
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace, nesting + 1)
        model_trace, guide_trace = prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)
        model_trace.compute_log_prob()
        guide_trace.compute_log_prob()
        # Raises for a latent without rsample; runs the guide again only if its sites depend on one another.
        add_detached_log_q(guide_trace, particles(guide), args, kwargs, values=hooked)
        for name, value in hooked.items():
            guide_trace.nodes[name][HOOKED_VALUE] = value
        return model_trace, guide_trace

    def _loss_and_surrogate(self, model_trace: Trace, guide_trace: Trace) -> tuple[torch.Tensor, torch.Tensor]:
        log_w = log_weights_from_traces(model_trace, guide_trace).detach()
        log_w_fixed_q = log_weights_from_traces(model_trace, guide_trace, guide_log_prob=DETACHED_LOG_Q)
        weights = normalized_weights(log_w)
        for name, site in latent_sites(guide_trace).items():
            z = site[HOOKED_VALUE]
            if not z.requires_grad:
                continue
            if tuple(z.shape[: weights.dim()]) != tuple(weights.shape):
                raise ValueError(
                    f"DReG needs latent site {name!r} to have batch shape {tuple(weights.shape)} "
                    f"(particles, examples); got value shape {tuple(z.shape)}"
                )
            w = weights.reshape(weights.shape + (1,) * (z.dim() - weights.dim()))
            z.register_hook(lambda grad, w=w: grad * w)
        return -log_mean_exp(log_w, 0).sum(), -(weights * log_w_fixed_q).sum()
