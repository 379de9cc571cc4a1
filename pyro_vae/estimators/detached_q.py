"""log q(z | x) with the variational parameters held fixed: the density the path-derivative estimators need.

For a reparameterised z = g(eps, phi), d/dphi log q_phi(z) = (d log q / dz)(dz/dphi) + (d log q / dphi)|_z.
The second, "score" term has expectation zero; evaluating log q with a copy of the distribution whose
parameter tensors are detached keeps the first and drops the second (Roeder et al. 2017).
"""

from __future__ import annotations

from pyro.distributions.util import detach, scale_and_mask
from pyro.poutine.trace_struct import Trace

#: The guide-site field that ``add_detached_log_q`` fills.
DETACHED_LOG_Q = "log_prob_detached_params"


def add_detached_log_q(guide_trace: Trace) -> None:
    """Store, at every guide sample site, log q(z) with the distribution's parameters detached (z is not).

    Generic over Pyro distributions: ``pyro.distributions.util.detach`` deep-copies the distribution with every
    tensor in it detached (Independent, Normal, transformed distributions, ...). Scale and mask are applied
    as for ``site["log_prob"]``.
    """
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample":
            continue
        if not site["fn"].has_rsample:
            raise ValueError(
                f"path-derivative estimators need reparameterised latents; guide site {name!r} "
                f"({type(site['fn']).__name__}) has no rsample"
            )
        log_q = detach(site["fn"]).log_prob(site["value"])
        site[DETACHED_LOG_Q] = scale_and_mask(log_q, site["scale"], site["mask"])
