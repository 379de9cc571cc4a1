"""The exact reference of the estimator comparison on a model with small discrete latents: every estimator's value
and gradient against the exact value and gradient of what it estimates, by enumeration
(``pyro_vae.estimators.exact``).

What each estimator is compared with (its spec's ``estimates``): "ELBO" and "relaxed ELBO" -> the exact (discrete)
ELBO, so a relaxation's bias for the discrete objective shows; "IWAE bound" -> the exact K-sample bound, enumerated
over the S^K K-tuples of states (NaN where S^K times the number of examples is over ``MAX_TUPLES``); "Renyi bound"
and "TVO bound" -> not computed (NaN). The gradient's bias is ``|E g - g*| / |g*|`` per parameter group (g the gradient
of the loss per example, g* the exact one), next to its noise level ``sqrt(sum_i Var(g_i) / R) / |g*|``: a bias well
above its noise level is real. (For rws, whose guide gradient is not that of any bound, the guide's bias against the
IWAE bound's gradient is expected.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyro.poutine as poutine
import torch
from torch import Tensor

from pyro_vae.errors import UserError
from pyro_vae.estimators._score import is_latent
from pyro_vae.estimators.exact import MAX_STATES, EnumeratedStates, enumerate_states

#: The most (K-tuple of states, example) pairs the exact K-sample bound is enumerated over.
MAX_TUPLES = 2**22
#: The most (state, example) pairs ``exact_reference`` runs the model on (each is one decoder evaluation).
MAX_EVALUATIONS = 2**17


@dataclass
class ExactReference:
    """The enumerated states of a model and guide on a batch x (N examples)."""

    states: EnumeratedStates

    @property
    def num_states(self) -> int:
        return int(self.states.log_p.shape[0])

    def log_likelihood(self) -> float:
        """The exact log p(x), mean over the batch."""
        return float(self.states.log_likelihood().detach().mean())

    def target(self, estimates: str, num_particles: int) -> Tensor | None:
        """The exact value per example (differentiable) of what an estimator estimates; None where not computed."""
        if estimates in ("ELBO", "relaxed ELBO"):
            return self.states.elbo()
        examples = int(self.states.log_p.shape[1])
        if estimates == "IWAE bound" and self.num_states**num_particles * examples <= MAX_TUPLES:
            return self.states.iwae_bound(num_particles, MAX_TUPLES)
        return None

    def columns(
        self,
        estimates: str,
        num_particles: int,
        values: Tensor,
        groups: Sequence[tuple[Sequence[Tensor], Tensor]],
    ) -> dict[str, float]:
        """The comparison's exact columns for R draws: ``values`` (R,) per example, ``groups`` = [(params, draws of
        their flat gradient (R, P)), ...] for the encoder and the decoder."""
        target = self.target(estimates, num_particles)
        if target is None:
            return {}
        r = values.shape[0]
        n = target.shape[0]
        exact = float(target.detach().mean())
        found = {
            "exact_target": exact,
            "exact_bias": float(values.mean()) - exact,
            "exact_bias_stderr": float(values.std() / math.sqrt(r)),
        }
        for part, (params, grads) in zip(("encoder", "decoder"), groups, strict=True):
            if not params or grads.shape[-1] == 0:
                continue
            truth = torch.autograd.grad(-target.sum() / n, list(params), retain_graph=True, allow_unused=True)
            flat = torch.cat(
                [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(truth, params, strict=True)]
            )
            scale = float(flat.norm())
            if scale == 0:
                continue
            found[f"grad_bias_{part}"] = float((grads.mean(0) - flat).norm()) / scale
            found[f"grad_noise_{part}"] = math.sqrt(float(grads.var(0).sum()) / r) / scale
        return found


def exact_reference(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    x: Tensor,
    max_states: int = MAX_STATES,
    max_evaluations: int = MAX_EVALUATIONS,
) -> ExactReference | None:
    """The exact reference where every latent of the guide is discrete and they have at most ``max_states`` joint
    states, and states times examples is at most ``max_evaluations`` (the model runs once per pair, all at once, so
    this bounds its memory); None otherwise (continuous latents, too many states)."""
    try:
        cap = min(max_states, max_evaluations // max(1, int(x.shape[0])))
        return ExactReference(enumerate_states(model, guide, x, max_states=cap))
    except UserError:
        return None


def has_discrete_latents(model: Callable[..., Any], guide: Callable[..., Any], x: Tensor) -> bool:
    """Whether a latent site of the guide has no reparameterised sampler (a discrete latent)."""
    with poutine.block(), torch.no_grad():
        trace = poutine.trace(guide).get_trace(x)
    return any(is_latent(site) and not site["fn"].has_rsample for site in trace.nodes.values())
