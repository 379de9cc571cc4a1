"""Per-example importance log weights log w_ik = log p(x_i, z_ik) - log q(z_ik | x_i), z_ik ~ q(z | x_i).

The K particles are vectorised with an outermost ``pyro.plate`` (left of the model's own plates), and the
log densities are summed over sites but *not* over plates every site shares, so the data plate survives:
the result has shape (K, N). (``pyro.infer.importance.vectorized_importance_weights`` sums over the data
plate and gives one weight per particle for the whole batch, which cannot give per-example values.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import get_dependent_plate_dims, torch_sum
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import prune_subsample_sites

from pyro_vae.checks import check_number

#: Name of the vectorised particle plate.
PARTICLE_PLATE = "num_particles_vectorized"


def guess_plate_nesting(model: Callable[..., Any], guide: Callable[..., Any], args: tuple, kwargs: dict) -> int:
    """How many plate dimensions the model and guide use (one run of each, as Pyro's ELBOs guess it)."""
    with poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    dims = [
        frame.dim
        for trace in (prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace))
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized
    ]
    return -min(dims) if dims else 0


def vectorized_traces(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    num_particles: int,
    plate_nesting: int,
    args: tuple,
    kwargs: dict,
) -> tuple[Trace, Trace]:
    """(model_trace, guide_trace) with ``num_particles`` particles in a plate at dim -(plate_nesting + 1).

    The plate is added even for one particle, so every log density has the particle dimension.
    Log densities (``site["log_prob"]``) are computed, scaled and masked; guide sites also have score parts.
    """
    check_number(num_particles, "num_particles", integer=True, low=1)
    particles = pyro.plate(PARTICLE_PLATE, num_particles, dim=-(plate_nesting + 1))
    return get_importance_trace("flat", plate_nesting + 1, particles(model), particles(guide), args, kwargs)


def log_weights_from_traces(model_trace: Trace, guide_trace: Trace, guide_log_prob: str = "log_prob") -> torch.Tensor:
    """log p(x, z) - log q(z | x) per particle and per example: shape (K, *shared plates), usually (K, N).

    Densities are summed over all sample sites and over plates that not every site shares (so a global
    latent outside the data plate would make the result one weight per particle for the whole batch).
    ``guide_log_prob`` names the guide-site field holding log q (``"log_prob"``, or a detached variant).
    """
    sites = [s for t in (model_trace, guide_trace) for s in t.nodes.values() if s["type"] == "sample"]
    sum_dims = get_dependent_plate_dims(sites)
    log_w: torch.Tensor | float = 0.0
    for site in model_trace.nodes.values():
        if site["type"] == "sample":
            log_w = log_w + torch_sum(site["log_prob"], sum_dims)
    for site in guide_trace.nodes.values():
        if site["type"] == "sample":
            log_w = log_w - torch_sum(site[guide_log_prob], sum_dims)
    if not torch.is_tensor(log_w):
        raise ValueError("the model and guide have no sample sites, so there are no importance weights")
    return log_w


def per_example_log_density(trace: Trace, include: Callable[[str, dict[str, Any]], bool] | None = None) -> torch.Tensor:
    """The sum of the log densities of a trace's sample sites (those ``include(name, site)`` selects), per
    particle and per example: shape (K, N) for sites in a particle plate and one data plate.

    Log densities must have been computed (``trace.compute_log_prob()``); dimensions of plates not shared by
    every sample site of the trace are summed, as in ``log_weights_from_traces``.
    """
    sites = [(n, s) for n, s in trace.nodes.items() if s["type"] == "sample"]
    sum_dims = get_dependent_plate_dims([s for _, s in sites])
    total: torch.Tensor | float = 0.0
    for name, site in sites:
        if include is None or include(name, site):
            total = total + torch_sum(site["log_prob"], sum_dims)
    if not torch.is_tensor(total):
        raise ValueError("no sample sites to sum")
    if total.dim() != 2:
        raise ValueError(
            "per-example log densities need every sample site inside one data plate; "
            f"got log densities of shape {tuple(total.shape)}"
        )
    return total


def per_example_log_weights(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    *args: Any,
    num_particles: int,
    plate_nesting: int | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """log w of shape (K, N): K importance samples from the guide for each of the N examples.

    Raises ValueError when the model's sites do not all sit in one data plate (then per-example
    weights do not exist).
    """
    if plate_nesting is None:
        plate_nesting = guess_plate_nesting(model, guide, args, kwargs)
    model_trace, guide_trace = vectorized_traces(model, guide, num_particles, plate_nesting, args, kwargs)
    log_w = log_weights_from_traces(model_trace, guide_trace)
    if log_w.dim() != 2:
        raise ValueError(
            "per-example importance weights need every sample site inside one data plate; "
            f"got log weights of shape {tuple(log_w.shape)}"
        )
    return log_w
