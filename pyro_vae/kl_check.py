"""Is the KL of each latent site analytic or Monte Carlo under TraceMeanField_ELBO?

``TraceMeanField_ELBO`` uses ``kl_divergence(q, p)`` when one is registered for the (guide, prior)
distribution types and otherwise silently falls back to the one-sample estimate log q(z) - log p(z).
These functions ask the same question the ELBO asks, on one trace of the model and guide.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro.poutine as poutine
from pyro.infer import TraceMeanField_ELBO
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence

from pyro_vae.errors import UserError
from pyro_vae.estimators import ESTIMATORS

ANALYTIC = "analytic"
MONTE_CARLO = "monte-carlo"


def _latent_order(trace: Any) -> list[str]:
    return [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    ]


def closed_form_kl_sites(model_trace: Any, guide_trace: Any) -> set[str]:
    """The latent sites whose term E_q[log q(z_s|...) - log p(z_s|...)] may be replaced by the closed-form KL at the
    traced values of the other sites: those whose every predecessor in the model was also sampled before them by
    the guide. Integrating z_s out while holding fixed a site the guide drew *after* z_s (and from it) is biased:
    the bottom-up guide q(z1|x) q(z2|z1) of a model p(z2) p(z1|z2) draws z2 from z1, so KL(q(z1|x) || p(z1|z2)) at
    that z2 is not the z1 term's expectation (Pyro's TraceMeanField_ELBO only warns that the orders differ). A
    single-latent model and a guide in the model's order (the ladder guide) keep every site."""
    model_order, guide_order = _latent_order(model_trace), _latent_order(guide_trace)
    return {
        name
        for i, name in enumerate(model_order)
        if name in guide_order and set(model_order[:i]) <= set(guide_order[: guide_order.index(name)])
    }


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


def check_training_kl(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    x: Any,
    elbo: Any,
    say: Callable[[str], None],
    *,
    name: str,
    particles: int,
    require_analytic_kl: bool = False,
) -> dict[str, str]:
    """What training reports and checks of the KL: the kind of each latent site (``say``-ed for a meanfield
    ``elbo``), a note when the K-particle bound ``name`` trains with K = ``particles`` = 1, and
    ``require_analytic_kl`` (a one-line ``UserError`` if a meanfield ELBO would estimate a KL by Monte Carlo).
    Returns the kinds."""
    kinds = kl_kinds(model, guide, x)
    meanfield = isinstance(elbo, TraceMeanField_ELBO)
    if meanfield:
        say(describe(kinds))
    if ESTIMATORS[name].multi_particle and particles == 1:
        say(f"note: --elbo {name} with --particles 1 is the standard ELBO; its bound tightens with K > 1")
    if require_analytic_kl:
        if not meanfield:
            raise UserError(f"--require-analytic-kl needs a meanfield-type --elbo; {name!r} always estimates the KL")
        mc = [name for name, kind in kinds.items() if kind == MONTE_CARLO]
        if mc:
            raise UserError(
                "--require-analytic-kl: no kl_divergence is registered for the guide and prior at site(s) "
                f"{', '.join(mc)}, so the KL would be a Monte Carlo estimate; register one "
                "(torch.distributions.register_kl) or drop the flag"
            )
    return kinds
