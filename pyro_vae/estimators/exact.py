"""Exact quantities of a model with small discrete latents, by enumerating every joint state of its latent sites.

With S joint states z_1..z_S of the guide's latent sites (the product of their supports: {0,1}^D for a
``Bernoulli(...).to_event(1)`` site, the D one-hot vectors of a ``OneHotCategorical``, 0..D-1 of a ``Categorical``,
and for any other distribution with ``has_enumerate_support`` -- the ``categorical`` family's flat one-hot vectors,
C^D of them -- its own ``enumerate_support``),
the model and guide run once with the S states in a plate left of the data plate, giving log p(x, z_s) and
log q(z_s | x) of shape (S, N). Then, per example,

- log p(x) = logsumexp_s log p(x, z_s);
- ELBO = sum_s q(z_s | x) [log p(x, z_s) - log q(z_s | x)];
- the K-sample IWAE bound E[log (1/K) sum_k w_k] = sum over the S^K tuples of prod_k q(z_{s_k}) times
  log (1/K) sum_k w_{s_k} (Burda et al. 2015), for S^K small.

All are differentiable tensors (torch autograd), so their gradients with respect to the guide's and the model's
parameters are the exact ones: the truth the estimators of discrete latents are tested against and the reference of
``compare-estimators`` on discrete models. Written here because no library computes the ELBO as a sum over states
independently of Pyro's enumeration machinery (``TraceEnum_ELBO``, which the ``enum`` estimator uses).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger

from pyro_vae.errors import UserError
from pyro_vae.estimators._score import base_distribution, is_latent, per_example_log_p_and_q, score_traces
from pyro_vae.estimators.log_weights import guess_plate_nesting

#: The most joint states ``enumerate_states`` accepts by default.
MAX_STATES = 2**16


def binary_vectors(size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """All 2^size vectors of 0s and 1s, shape (2^size, size), in binary counting order."""
    bits = torch.arange(size - 1, -1, -1)
    return ((torch.arange(2**size)[:, None] >> bits) & 1).to(dtype)


def site_size(fn: Any) -> int:
    """The number of values of one draw of a discrete site; one-line UserError for a site that is not discrete."""
    base, dims = base_distribution(fn)
    if isinstance(base, torch.distributions.Bernoulli):
        return 2 ** math.prod(tuple(fn.event_shape))
    if isinstance(base, torch.distributions.OneHotCategorical) and dims == 0:
        return int(fn.event_shape[-1])
    if isinstance(base, torch.distributions.Categorical) and dims == 0:
        return int(base.logits.shape[-1])
    if dims == 0 and getattr(base, "has_enumerate_support", False):
        # Any other enumerable family (the categorical family's FlatOneHotCategorical, a user's): counted from its
        # own support_size when it says it (C^D, before building a support that may be huge), else its support.
        size = getattr(base, "support_size", None)
        return int(size) if size is not None else int(base.enumerate_support(expand=False).shape[0])
    raise UserError(
        "exact enumeration needs discrete latents (Bernoulli, Categorical, OneHotCategorical, or a distribution "
        f"with enumerate_support), got {type(base).__name__}"
    )


def site_support(fn: Any) -> torch.Tensor:
    """Every value of one draw of a discrete site, shape ``(s, *event_shape)`` (check ``site_size`` first: 2^D rows for
    D Bernoulli latents)."""
    base, _ = base_distribution(fn)
    event_shape = tuple(fn.event_shape)
    if isinstance(base, torch.distributions.Bernoulli):
        return binary_vectors(math.prod(event_shape), base.logits.dtype).reshape(-1, *event_shape)
    site_size(fn)  # a one-line error for anything else that is not discrete
    # (S, 1, ..., 1, *event_shape) -> (S, *event_shape): the support does not depend on the batch (expand=False).
    return base.enumerate_support(expand=False).reshape(-1, *event_shape)


class FixedValues(Messenger):
    """Sets each latent site to the given tensor (one value per state, left of the site's batch dims), detached."""

    def __init__(self, values: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.values = values

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if is_latent(msg) and msg["name"] in self.values:
            value = self.values[msg["name"]]
            msg["value"] = value.expand(*value.shape[:1], *msg["fn"].batch_shape[1:], *msg["fn"].event_shape)
            msg["done"] = True


@dataclass
class EnumeratedStates:
    """log p(x, z_s) and log q(z_s | x) for every joint state s, shape (S, N), differentiable."""

    log_p: torch.Tensor
    log_q: torch.Tensor

    @property
    def log_w(self) -> torch.Tensor:
        return self.log_p - self.log_q

    def log_likelihood(self) -> torch.Tensor:
        """log p(x) per example, shape (N,)."""
        return torch.logsumexp(self.log_p, 0)

    def elbo(self) -> torch.Tensor:
        """The exact ELBO per example, sum_s q_s (log p_s - log q_s), shape (N,)."""
        return (self.log_q.exp() * self.log_w).sum(0)

    def iwae_bound(self, num_particles: int, max_tuples: int = 2**22) -> torch.Tensor:
        """The exact K-sample IWAE bound E[log (1/K) sum_k w_k] per example, over all S^K tuples of states."""
        s = self.log_p.shape[0]
        if s**num_particles > max_tuples:
            raise UserError(f"{s}^{num_particles} tuples of states are too many to enumerate (max {max_tuples})")
        log_q, log_w = self.log_q, self.log_w
        total_log_q = torch.zeros((), dtype=log_q.dtype)
        stacked_w = []
        for k in range(num_particles):  # axis k of a (S,)*K grid
            shape = [1] * num_particles + [log_q.shape[1]]
            shape[k] = s
            total_log_q = total_log_q + log_q.reshape(shape)
            stacked_w.append(log_w.reshape(shape))
        grid_w = torch.stack(torch.broadcast_tensors(*stacked_w), 0)
        bound = torch.logsumexp(grid_w, 0) - math.log(num_particles)
        return (total_log_q.exp() * bound).reshape(-1, log_q.shape[1]).sum(0)


def enumerate_states(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    *args: Any,
    max_states: int = MAX_STATES,
    plate_nesting: int | None = None,
    **kwargs: Any,
) -> EnumeratedStates:
    """log p(x, z_s) and log q(z_s | x) for all S joint states of the guide's latent sites (module docstring).

    One-line UserError when a latent is not discrete or S > ``max_states``."""
    with poutine.block(), torch.no_grad():
        first = poutine.trace(guide).get_trace(*args, **kwargs)
    names = [name for name, site in first.nodes.items() if is_latent(site)]
    if not names:
        raise UserError("the guide has no latent sites to enumerate")
    sizes = [site_size(first.nodes[name]["fn"]) for name in names]  # counted before any support is built
    total = math.prod(sizes)
    if total > max_states:
        raise UserError(f"{total} joint latent states are too many to enumerate (max {max_states})")
    supports = [site_support(first.nodes[name]["fn"]) for name in names]
    index = torch.cartesian_prod(*[torch.arange(n) for n in sizes]).reshape(total, len(sizes))
    if plate_nesting is None:
        plate_nesting = guess_plate_nesting(model, guide, args, kwargs)
    values = {}
    for i, (name, support) in enumerate(zip(names, supports, strict=True)):
        batch_dims = len(first.nodes[name]["fn"].batch_shape)
        chosen = support[index[:, i]]
        values[name] = chosen.reshape(total, *([1] * batch_dims), *support.shape[1:])
    traces = score_traces(model, guide, total, plate_nesting, args, kwargs, sampler=FixedValues(values))
    return EnumeratedStates(*per_example_log_p_and_q(*traces))
