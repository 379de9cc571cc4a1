"""Exact enumeration of small discrete latents in the guide, by Pyro's ``TraceEnum_ELBO``.

The user's guide runs as written: an effect handler (``EnumerateLatents``) marks each discrete latent site
``infer={"enumerate": "parallel"}`` (what ``config_enumerate`` does) and, because ``torch``'s ``Independent`` has no
enumerable support, gives a ``Bernoulli(...).to_event(d)`` site all 2^size of its joint values
(``EnumerableIndependentBernoulli``). ``TraceEnum_ELBO`` then sums over every value of the guide's discrete latents.

Value: the exact ELBO, sum_z q(z | x) [log p(x, z) - log q(z | x)] (continuous latents, if any, by Monte Carlo).
Gradient: its exact gradient (guide and model parameters). Cost grows as the number of joint states: a site of D
Bernoulli latents costs 2^D evaluations of the model; ``max_states`` (default 2^16) bounds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pyro.distributions as dist
import torch
from pyro.infer import TraceEnum_ELBO
from pyro.poutine.messenger import Messenger

from pyro_vae.checks import check_number
from pyro_vae.errors import UserError
from pyro_vae.estimators._score import base_distribution, is_latent, one_line_errors
from pyro_vae.estimators.exact import binary_vectors


@dataclass
class EnumOptions:
    """Fields:
    max_states: the most values one latent site may have (2^D for D Bernoulli latents) before enum refuses it.
    """

    max_states: int = 2**16

    def __post_init__(self) -> None:
        check_number(self.max_states, "max_states", integer=True, low=2)


class EnumerableIndependentBernoulli(dist.Independent):
    """``Bernoulli(...).to_event(d)`` with its 2^size joint values as enumerable support."""

    @property
    def has_enumerate_support(self) -> bool:
        return True

    def enumerate_support(self, expand: bool = True) -> torch.Tensor:
        event = tuple(self.event_shape)
        grid = binary_vectors(math.prod(event), self.base_dist.logits.dtype)
        values = grid.reshape(-1, *([1] * len(self.batch_shape)), *event)
        return values.expand(-1, *self.batch_shape, *event) if expand else values


class EnumerateLatents(Messenger):
    """Marks discrete latents for parallel enumeration, making Independent Bernoulli sites enumerable."""

    def __init__(self, max_states: int) -> None:
        super().__init__()
        self.max_states = max_states

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if not is_latent(msg):
            return
        fn = msg["fn"]
        base, dims = base_distribution(fn)
        if dims and isinstance(base, torch.distributions.Bernoulli):
            size = math.prod(fn.event_shape)
            if 2**size > self.max_states:
                raise UserError(
                    f"enum: site {msg['name']!r} has 2^{size} states, more than max_states = {self.max_states} "
                    "(raise --elbo-max-states, or use reinforce, vimco, rws or disarm)"
                )
            msg["fn"] = EnumerableIndependentBernoulli(base, dims)
        elif not fn.has_enumerate_support:
            return  # a continuous latent: TraceEnum_ELBO samples it
        msg["infer"] = {**msg["infer"], "enumerate": "parallel"}


class EnumELBO(TraceEnum_ELBO):
    """``TraceEnum_ELBO`` with the guide's discrete latents enumerated (module doc): the exact ELBO and gradient."""

    def __init__(
        self,
        max_states: int = 2**16,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = True,
    ) -> None:
        EnumOptions(max_states)
        super().__init__(
            num_particles=num_particles, max_plate_nesting=max_plate_nesting, vectorize_particles=vectorize_particles
        )
        self.max_states = max_states

    def _enumerated(self, guide: Any) -> Any:
        return EnumerateLatents(self.max_states)(guide)

    def loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        with one_line_errors():
            return super().loss(model, self._enumerated(guide), *args, **kwargs)

    def loss_and_grads(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        with one_line_errors():
            return super().loss_and_grads(model, self._enumerated(guide), *args, **kwargs)

    def differentiable_loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        with one_line_errors():
            return super().differentiable_loss(model, self._enumerated(guide), *args, **kwargs)
