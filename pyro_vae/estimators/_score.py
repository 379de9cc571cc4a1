"""Traces for the estimators of discrete latents: K particles per example with the guide's latent values *fixed*
(detached, or set by a sampler), so that log q(z | x) carries only the score gradient and log p(x, z) only the
model's.

``score_traces`` runs the guide inside a particle plate (left of the model's plates) under a *sampler*, a Pyro
messenger placed outside that plate so that it sees each site's distribution already broadcast to (K, N, ...):
``DetachedSampler`` draws as Pyro would and detaches the value (REINFORCE, VIMCO, RWS); the antithetic sampler of
DisARM and the enumeration of ``pyro_vae.estimators.exact`` set the values themselves. The model is replayed on the
guide's values. ``ScoreELBO`` is the base class of these estimators (its one abstract method is
``loss_and_surrogate_loss``; DisARM implements it with two antithetic passes); ``LogDensityScoreELBO`` is the base
of those computed from one pass's (K, N) log densities (VIMCO, RWS, TVO).
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from collections.abc import Callable, Iterator
from typing import Any

import pyro
import torch
from pyro.infer import ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import get_dependent_plate_dims, torch_sum
from pyro.poutine.messenger import Messenger
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample
from pyro.util import warn_if_nan

from pyro_vae.checks import check_number
from pyro_vae.errors import UserError
from pyro_vae.estimators.log_weights import PARTICLE_PLATE, guess_plate_nesting


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Re-raise a ``UserError`` as its first line: Pyro's trace appends the trace's shapes to an error raised inside
    a model or guide, and the user needs only what the estimator said."""
    try:
        yield
    except UserError as err:
        raise UserError(str(err).splitlines()[0]) from None


def is_latent(msg: dict[str, Any]) -> bool:
    """A sample site that is not observed and not a plate's subsample index (a latent variable)."""
    return msg["type"] == "sample" and not msg["is_observed"] and not site_is_subsample(msg)


def base_distribution(fn: Any) -> tuple[Any, int]:
    """(the distribution under any ``Independent`` wrappers, how many batch dims they reinterpret)."""
    dims = 0
    while isinstance(fn, torch.distributions.Independent):
        dims += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    return fn, dims


class DetachedSampler(Messenger):
    """Draws each latent as Pyro would, then detaches it: no path from z to the parameters (the score-function
    estimators' reading of a sample, even for a reparameterisable site)."""

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if is_latent(msg) and msg["value"] is None:
            msg["value"] = msg["fn"](*msg["args"], **msg["kwargs"]).detach()
            msg["done"] = True


def score_traces(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    num_particles: int,
    plate_nesting: int,
    args: tuple,
    kwargs: dict,
    sampler: Messenger | None = None,
) -> tuple[Trace, Trace]:
    """(model_trace, guide_trace), K particles in a plate at dim -(plate_nesting + 1), log densities computed.

    The guide runs under ``sampler`` (default ``DetachedSampler``), outside the particle plate (Pyro applies the
    innermost messenger first, so the plate broadcasts each site before the sampler sees it)."""
    particles = pyro.plate(PARTICLE_PLATE, num_particles, dim=-(plate_nesting + 1))
    sampler = sampler if sampler is not None else DetachedSampler()
    # Pyro's own importance trace (model/guide match and site-shape checks, subsample sites pruned, log densities),
    # with the guide under the sampler.
    return get_importance_trace("flat", plate_nesting + 1, particles(model), sampler(particles(guide)), args, kwargs)


def per_example_log_p_and_q(model_trace: Trace, guide_trace: Trace) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(x, z), log q(z | x)) per particle and example, shape (K, N): each summed over its trace's sample sites
    and over the plates not every site of the two traces shares (as ``log_weights_from_traces``)."""
    sites = [s for t in (model_trace, guide_trace) for s in t.nodes.values() if s["type"] == "sample"]
    sum_dims = get_dependent_plate_dims(sites)
    parts = []
    for trace in (model_trace, guide_trace):
        total: torch.Tensor | float = 0.0
        for site in trace.nodes.values():
            if site["type"] == "sample":
                total = total + torch_sum(site["log_prob"], sum_dims)
        parts.append(total)
    log_p, log_q = parts
    if not torch.is_tensor(log_q):
        raise UserError("the guide has no latent sample sites: there is nothing for this estimator to estimate")
    if log_p.dim() != 2 or log_q.dim() != 2:  # type: ignore[union-attr]
        raise UserError(
            "this estimator needs every sample site inside one data plate (per-example weights); got log densities "
            f"of shape {tuple(log_p.shape)}"  # type: ignore[union-attr]
        )
    return log_p, log_q  # type: ignore[return-value]


class ScoreELBO(ELBO):
    """A Pyro ELBO from K particles per example whose latent values are fixed (no path gradient).

    Subclasses implement ``loss_and_surrogate_loss(model, guide, *args, **kwargs) -> (loss, surrogate)``: the
    value (negated, summed over the batch) and a scalar whose gradient is the estimator's gradient; ``loss``,
    ``differentiable_loss`` and ``loss_and_grads`` are built on it here. They trace with ``score_traces`` (through
    ``_get_trace`` / ``log_p_and_q``, or with their own sampler, as DisARM). An estimator that is a function of one
    pass's (K, N) log densities subclasses ``LogDensityScoreELBO`` instead.
    ``max_plate_nesting`` counts the model's own plates; left at infinity it is found at the first call.
    """

    #: The fewest particles the estimator works with.
    min_particles = 1

    def __init__(self, num_particles: int = 1, max_plate_nesting: float = float("inf")) -> None:
        check_number(num_particles, "num_particles", integer=True, low=1)
        if num_particles < self.min_particles:
            raise UserError(f"{type(self).__name__} needs num_particles >= {self.min_particles}, got {num_particles}")
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)

    def _nesting(self, model: Any, guide: Any, args: tuple, kwargs: dict) -> int:
        if self.max_plate_nesting == float("inf"):
            self.max_plate_nesting = guess_plate_nesting(model, guide, args, kwargs)
        return int(self.max_plate_nesting)

    def _get_trace(self, model: Any, guide: Any, args: tuple, kwargs: dict) -> tuple[Trace, Trace]:
        """(model_trace, guide_trace) of ``score_traces``: K particles, the guide's draws detached."""
        return score_traces(model, guide, self.num_particles, self._nesting(model, guide, args, kwargs), args, kwargs)

    def log_p_and_q(self, model: Any, guide: Any, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p(x, z_k), log q(z_k | x)) of shape (K, N), z_k drawn by the guide and detached."""
        return per_example_log_p_and_q(*self._get_trace(model, guide, args, kwargs))

    @abstractmethod
    def loss_and_surrogate_loss(
        self, model: Any, guide: Any, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, surrogate loss) as tensors: the negated estimate summed over the batch, and a scalar whose
        gradient is the estimator's gradient."""
        raise NotImplementedError

    def loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        """The negated estimate, summed over the batch."""
        with torch.no_grad():
            loss, _ = self.loss_and_surrogate_loss(model, guide, *args, **kwargs)
        value = float(loss)
        warn_if_nan(value, "loss")
        return value

    def differentiable_loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """A tensor whose value is ``loss`` and whose gradient is this estimator's gradient."""
        loss, surrogate = self.loss_and_surrogate_loss(model, guide, *args, **kwargs)
        return loss.detach() + (surrogate - surrogate.detach())

    def loss_and_grads(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        loss, surrogate = self.loss_and_surrogate_loss(model, guide, *args, **kwargs)
        if surrogate.requires_grad:
            surrogate.backward(retain_graph=self.retain_graph)
        value = float(loss)
        warn_if_nan(value, "loss")
        return value


class LogDensityScoreELBO(ScoreELBO):
    """A ``ScoreELBO`` computed from the (K, N) log densities of one pass, log p(x, z_k) and log q(z_k | x) with
    z_k drawn by the guide and detached (``log_p_and_q``).

    Subclasses implement ``_loss_and_surrogate(log_p, log_q) -> (loss, surrogate)`` on them.
    """

    @abstractmethod
    def _loss_and_surrogate(self, log_p: torch.Tensor, log_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def loss_and_surrogate_loss(
        self, model: Any, guide: Any, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, surrogate loss) as tensors, from ``_loss_and_surrogate`` of one pass's log densities."""
        return self._loss_and_surrogate(*self.log_p_and_q(model, guide, args, kwargs))
