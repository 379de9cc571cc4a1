"""log q(z | x) with the variational parameters held fixed: the density the path-derivative estimators need.

For a reparameterised z = g(eps, phi), d/dphi log q_phi(z) = (d log q / dz)(dz/dphi) + (d log q / dphi)|_z.
The second, "score" term has expectation zero; evaluating log q with the variational parameters phi detached
keeps the first and drops the second (Roeder et al. 2017).

Two cases:

- every guide site's distribution is computed from x and the parameters alone (a mean-field guide): a copy of
  the distribution with every tensor detached (``pyro.distributions.util.detach``) is log q at fixed phi;
- a site depends on earlier latent sites, q(z2 | z1, x) (a hierarchical guide, a flow over several sites):
  detaching the distribution would also cut log q's dependence on z1, which is part of d log q / dz. The guide
  is then run again, conditioned on the sampled values, with its parameters frozen (``frozen_parameters``), so
  only phi is held fixed and z1 -> q(z2 | z1) is kept.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import detach, scale_and_mask
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import prune_subsample_sites
from torch import nn

#: The guide-site field that ``add_detached_log_q`` fills.
DETACHED_LOG_Q = "log_prob_detached_params"


def latent_sites(trace: Trace) -> dict[str, dict[str, Any]]:
    """The unobserved, non-subsample sample sites of ``trace``, in execution order."""
    return {
        name: site
        for name, site in prune_subsample_sites(trace).nodes.items()
        if site["type"] == "sample" and not site["is_observed"]
    }


def _tensors(obj: Any, seen: set[int], depth: int = 0) -> Iterator[torch.Tensor]:
    """The tensors a distribution holds (parameters, base distributions, transforms and their contexts).

    Plain modules are not entered: their parameters are leaves, which cannot depend on a sampled value.
    """
    if id(obj) in seen or depth > 10:
        return
    seen.add(id(obj))
    if torch.is_tensor(obj):
        yield obj
        return
    if isinstance(obj, functools.partial):  # a conditioned transform keeps its context in a partial
        children: Iterable[Any] = (*obj.args, *obj.keywords.values(), obj.func)
    elif isinstance(obj, (list, tuple)):
        children = obj
    elif isinstance(obj, dict):
        children = obj.values()
    elif isinstance(obj, (torch.distributions.Distribution, torch.distributions.Transform)):
        children = vars(obj).values()
    else:
        return
    for child in children:
        yield from _tensors(child, seen, depth + 1)


def _reaches(tensors: list[torch.Tensor], targets: set[Any]) -> bool:
    """Whether any of ``tensors`` was computed from a node in ``targets`` (a walk up their autograd graphs)."""
    stack = [t.grad_fn for t in tensors if t.grad_fn is not None]
    visited: set[int] = set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in visited:
            continue
        if node in targets:
            return True
        visited.add(id(node))
        stack.extend(next_node for next_node, _ in node.next_functions)
    return False


def dependent_sites(guide_trace: Trace) -> dict[str, list[str]]:
    """Guide site -> the earlier latent sites its distribution was computed from (empty lists: mean-field).

    Read from the autograd graph: site B depends on site A when a parameter tensor of B's distribution has
    A's sampled value among its ancestors. Values that do not carry a graph (sampled without grad) cannot
    be followed, and nothing is reported for them.
    """
    sites = latent_sites(guide_trace)
    found: dict[str, list[str]] = {}
    earlier: dict[str, Any] = {}
    for name, site in sites.items():
        tensors = list(_tensors(site["fn"], set()))
        found[name] = [other for other, node in earlier.items() if _reaches(tensors, {node})]
        if site["value"].grad_fn is not None:
            earlier[name] = site["value"].grad_fn
    return found


def guide_dependencies(guide: Callable[..., Any], x: torch.Tensor) -> dict[str, list[str]]:
    """``dependent_sites`` of one run of ``guide(x)``, with gradients on even where the caller has them off.

    A floating-point ``x`` is given ``requires_grad``, so that every sampled value carries a graph to follow
    even when the guide's parameters are frozen.
    """
    with torch.enable_grad(), poutine.block():
        probe = x.detach().clone().requires_grad_(True) if x.is_floating_point() else x
        trace = poutine.trace(guide).get_trace(probe)
    return dependent_sites(trace)


def modules_of(fn: Any) -> list[nn.Module]:
    """The modules behind a callable: itself or the owner of a bound method, seen through Pyro handlers
    (``pyro.plate(...)(fn)``) and ``functools.wraps`` layers."""
    found = []
    for _ in range(32):
        fn = poutine.unwrap(fn)
        if isinstance(fn, nn.Module):
            found.append(fn)
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, nn.Module):
            found.append(owner)
        fn = getattr(fn, "__wrapped__", None)
        if fn is None:
            break
    return found


@contextlib.contextmanager
def frozen_parameters(*fns: Callable[..., Any]) -> Iterator[None]:
    """Within the block, no gradient reaches a parameter: every tensor of Pyro's param store and every parameter
    of the modules behind ``fns`` (a module, a bound method of one) has ``requires_grad`` off; restored after.

    Graphs built before the block are untouched, so a value sampled earlier keeps its path to the parameters.
    """
    params = {id(p): p for _, p in pyro.get_param_store().named_parameters()}  # the unconstrained leaves
    for module in (m for fn in fns for m in modules_of(fn)):
        params.update({id(p): p for p in module.parameters()})
    changed = [p for p in params.values() if p.requires_grad]
    try:
        for p in changed:
            p.requires_grad_(False)
        with warnings.catch_warnings():
            # pyro.module warns about frozen parameters of a module in training mode; here they are frozen on purpose.
            warnings.filterwarnings("ignore", message=".*was not registered in the param store")
            yield
    finally:
        for p in changed:
            p.requires_grad_(True)


def conditioned_log_q(
    guide: Callable[..., Any], values: dict[str, torch.Tensor], args: tuple, kwargs: dict, frozen: bool = True
) -> Trace:
    """The guide's trace conditioned on ``values`` (site -> value), log densities computed (scaled and masked).

    With ``frozen`` the guide's parameters are held fixed, so the densities depend on the values only.
    """
    context = frozen_parameters(guide) if frozen else contextlib.nullcontext()
    with context, poutine.block():
        trace = poutine.trace(poutine.condition(guide, data=values)).get_trace(*args, **kwargs)
        trace = prune_subsample_sites(trace)
        trace.compute_log_prob()
    return trace


def add_detached_log_q(
    guide_trace: Trace,
    guide: Callable[..., Any] | None = None,
    args: tuple = (),
    kwargs: dict | None = None,
    values: dict[str, torch.Tensor] | None = None,
) -> None:
    """Store, at every guide sample site, log q(z) with the variational parameters fixed (z is not).

    ``values`` (default: the sampled values) are where log q is evaluated; the path estimators pass copies
    of the sampled values carrying gradient hooks. For a guide whose sites depend on earlier ones, ``guide``
    (wrapped as it was traced, e.g. in the particle plate) and its ``args`` are needed to run it again.
    """
    sites = latent_sites(guide_trace)
    for name, site in sites.items():
        if not site["fn"].has_rsample:
            raise ValueError(
                f"path-derivative estimators need reparameterised latents; guide site {name!r} "
                f"({type(site['fn']).__name__}) has no rsample"
            )
    values = values or {name: site["value"] for name, site in sites.items()}
    if not any(dependent_sites(guide_trace).values()):
        for name, site in sites.items():
            log_q = detach(site["fn"]).log_prob(values[name])
            site[DETACHED_LOG_Q] = scale_and_mask(log_q, site["scale"], site["mask"])
        return
    if guide is None:
        pairs = ", ".join(f"{b!r} on {', '.join(map(repr, a))}" for b, a in dependent_sites(guide_trace).items() if a)
        raise ValueError(
            f"the guide's sites depend on earlier ones ({pairs}), so log q at fixed parameters needs the guide run "
            "again, which a compiled estimator cannot do; use the estimator without jit"
        )
    rerun = conditioned_log_q(guide, values, args, kwargs or {})
    for name, site in sites.items():
        site[DETACHED_LOG_Q] = rerun.nodes[name]["log_prob"]
