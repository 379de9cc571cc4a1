"""Per-example log densities of any Pyro model and guide at given latent values, S chains or samples at once.

AIS, BDMC, the inference gaps and the collapse diagnostics need log p(z), log p(x | z) and log q(z | x) at
latent values they choose (an HMC proposal, a sample of another example's posterior), for every example of a
batch. Here the model or guide runs inside a particle plate of size S left of its own plates, conditioned on
values of shape (S, N, *event) per latent site, and each site's log density is summed over everything but the
(particle, example) dimensions. Sites must sit in one data plate (as ``per_example_log_weights`` requires).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor
from torch.distributions import biject_to

from pyro_vae.errors import UserError
from pyro_vae.estimators.detached_q import latent_sites
from pyro_vae.estimators.log_weights import PARTICLE_PLATE, guess_plate_nesting, per_example_log_density

Values = dict[str, Tensor]


def _base_name(d: Any) -> str:
    """The name of a distribution, through ``Independent`` (``.to_event``) wrappers."""
    while isinstance(d, torch.distributions.Independent):
        d = d.base_dist
    return type(d).__name__


@dataclass
class Densities:
    """The model and guide of one batch ``x``, seen as densities over their latent sites.

    Attributes:
        model, guide: the Pyro callables, called as ``fn(x)``.
        x: the batch (N, ...).
        nesting: the number of plates model and guide use (the particle plate goes left of them).
        sites: the guide's latent site names, in order.
        discrete: "name (distribution)" of each of those sites whose values are discrete (Bernoulli, one-hot, ...).
    """

    model: Callable[..., Any]
    guide: Callable[..., Any]
    x: Tensor
    nesting: int
    sites: tuple[str, ...]
    discrete: tuple[str, ...] = ()

    @classmethod
    def of(cls, model: Callable[..., Any], guide: Callable[..., Any], x: Tensor) -> Densities:
        nesting = guess_plate_nesting(model, guide, (x,), {})
        with poutine.block(), torch.no_grad():
            trace = poutine.trace(guide).get_trace(x)
        sites = latent_sites(trace)
        discrete = tuple(
            f"{name!r} ({_base_name(site['fn'])})"
            for name, site in sites.items()
            if getattr(site["fn"].support, "is_discrete", False)
        )
        return cls(model, guide, x, nesting, tuple(sites), discrete)

    def refuse_discrete(self, what: str, instead: str) -> None:
        """One-line ``UserError`` naming the discrete latent sites, when there are any: ``what`` needs continuous
        latents (it follows gradients in z); ``instead`` says what to use."""
        if self.discrete:
            sites = ", ".join(self.discrete)
            raise UserError(
                f"{what} needs continuous latents (it follows gradients in z); guide site {sites} is "
                f"discrete: {instead}"
            )

    def _plate(self, size: int) -> pyro.plate:
        return pyro.plate(PARTICLE_PLATE, size, dim=-(self.nesting + 1))

    def _trace(self, fn: Callable[..., Any], size: int, values: Values | None) -> Trace:
        run = self._plate(size)(fn if values is None else poutine.condition(fn, data=values))
        with poutine.block():
            trace = prune_subsample_sites(poutine.trace(run).get_trace(self.x))
        trace.compute_log_prob()
        return trace

    def sample_guide(self, size: int) -> tuple[Values, Tensor]:
        """``size`` draws of the latents from q(z | x) per example, and log q at them: ({site: (S, N, ...)}, (S, N))."""
        trace = self._trace(self.guide, size, None)
        values = {name: trace.nodes[name]["value"] for name in self.sites}
        return values, per_example_log_density(trace)

    def sample_prior(self, size: int) -> Values:
        """``size`` draws of the latents from the model's prior per example (the observed sites stay observed)."""
        trace = self._trace(self.model, size, None)
        return {name: trace.nodes[name]["value"] for name in self.sites}

    def log_guide(self, values: Values) -> Tensor:
        """log q(z | x_i) at ``values`` (S, N, ...) per site: shape (S, N)."""
        return per_example_log_density(self._trace(self.guide, _size(values), values))

    def log_joint(self, values: Values) -> tuple[Tensor, Tensor]:
        """(log p(z), log p(x_i | z)) at ``values``, each of shape (S, N): the model's latent and observed sites."""
        trace = self._trace(self.model, _size(values), values)
        latent = per_example_log_density(trace, lambda name, site: name in values)
        observed = per_example_log_density(trace, lambda name, site: name not in values)
        return latent, observed

    def transforms(self, values: Values) -> dict[str, Any]:
        """Bijections from the unconstrained space onto each latent site's support (identity for real latents)."""
        trace = self._trace(self.guide, _size(values), values)
        return {name: biject_to(trace.nodes[name]["fn"].support) for name in self.sites}


def _size(values: Values) -> int:
    return int(next(iter(values.values())).shape[0])
