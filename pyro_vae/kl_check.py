"""Is the KL of each latent site analytic or Monte Carlo under TraceMeanField_ELBO?

``TraceMeanField_ELBO`` uses ``kl_divergence(q, p)`` when one is registered for the (guide, prior)
distribution types and otherwise silently falls back to the one-sample estimate log q(z) - log p(z).
These functions ask the same question the ELBO asks, on one trace of the model and guide.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro.poutine as poutine
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence

ANALYTIC = "analytic"
MONTE_CARLO = "monte-carlo"


def kl_kinds(model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, str]:
    """Map each latent site name to "analytic" or "monte-carlo", as TraceMeanField_ELBO would treat it."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    kinds: dict[str, str] = {}
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        try:
            kl_divergence(guide_trace.nodes[name]["fn"], site["fn"])
            kinds[name] = ANALYTIC
        except NotImplementedError:
            kinds[name] = MONTE_CARLO
    return kinds


def describe(kinds: dict[str, str]) -> str:
    """One line for the training log, e.g. ``KL per latent site: z=analytic``."""
    return "KL per latent site: " + ", ".join(f"{k}={v}" for k, v in kinds.items())
