"""Concrete / Gumbel-softmax relaxations (Maddison et al. 2017; Jang et al. 2017) of Bernoulli and OneHotCategorical
latents, and their straight-through variant.

An effect handler (``Relax``) swaps, at every latent site of BOTH the model and the guide, Bernoulli(logits) for
RelaxedBernoulli(temperature, logits) and OneHotCategorical(logits) for RelaxedOneHotCategorical(temperature, logits)
(keeping any ``to_event``), so the user's model and guide run as written; the relaxed pair is then a continuous,
reparameterised model, and ``Trace_ELBO`` (vectorised particles) does the rest.

- ``relaxed`` (default): value = the ELBO of the *relaxed* model, E_q~[log p~(x, z~) - log q~(z~ | x)] with the
  Concrete densities: a different objective, biased for the discrete ELBO (the bias vanishes only as the
  temperature goes to 0, where the gradient variance grows). Its gradient is the unbiased reparameterised gradient
  of that relaxed objective, hence biased for the discrete ELBO's.
- ``straight_through``: the guide draws a hard z = round(z~) (argmax for one-hot) with the gradient of the soft
  z~ (Pyro's RelaxedBernoulliStraightThrough / RelaxedOneHotCategoricalStraightThrough), and the densities are the
  discrete ones at the hard z: the value is an unbiased estimate of the discrete ELBO; the gradient is biased for
  it (Bengio et al. 2013; Jang et al. 2017), whatever the temperature.

How a plugin family supports ``relaxed``: a latent distribution that is neither Bernoulli nor OneHotCategorical
(under any ``to_event``) may define a method ``relaxed(temperature: float, straight_through: bool) -> Distribution``
giving its own relaxation, with the same batch and event shapes (``RelaxableDistribution``). Without
``straight_through`` it returns a reparameterised (``rsample``) continuous distribution with its relaxed density;
with it, one whose ``rsample`` is a hard value of the discrete support carrying a soft gradient and whose
``log_prob`` is the discrete density at that value. ``Relax`` calls it at guide sites (and, without
``straight_through``, at model sites too); the flat one-hot ``categorical`` family
(``FlatOneHotCategorical.relaxed``) is one. Any other latent family is refused in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO
from pyro.poutine.messenger import Messenger

from pyro_vae.checks import check_number
from pyro_vae.errors import UserError
from pyro_vae.estimators._score import base_distribution, is_latent, one_line_errors


@dataclass
class RelaxedOptions:
    """Fields:
    temperature: the Concrete temperature lambda > 0 (Maddison et al. recommend 2/3 for Bernoulli latents).
    straight_through: draw hard samples with the soft sample's gradient and score them with the discrete densities.
    """

    temperature: float = 0.5
    straight_through: bool = False

    def __post_init__(self) -> None:
        check_number(self.temperature, "temperature", positive=True)
        if not isinstance(self.straight_through, bool):
            raise ValueError(f"straight_through must be true or false, got {self.straight_through!r}")


class _DiscreteScoredBernoulliST(dist.RelaxedBernoulliStraightThrough):
    """Pyro's straight-through sample, scored by the Bernoulli density at the hard value (so the ELBO's value is
    the discrete one; Pyro's own scores the soft value under the Concrete density)."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return dist.Bernoulli(logits=self.logits).log_prob(value)


class _DiscreteScoredOneHotST(dist.RelaxedOneHotCategoricalStraightThrough):
    """As ``_DiscreteScoredBernoulliST``, for one-hot categorical latents."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return dist.OneHotCategorical(logits=self.logits).log_prob(value)


@runtime_checkable
class RelaxableDistribution(Protocol):
    """A latent distribution with its own Concrete-style relaxation (module doc, 'How a plugin family ...')."""

    def relaxed(self, temperature: float, straight_through: bool) -> torch.distributions.Distribution:
        """The relaxation at ``temperature``; ``straight_through``: hard draws scored by the discrete density."""
        ...


def _rewrap(fn: Any, relaxed: Any) -> Any:
    """``relaxed`` with the ``to_event`` dimensions of ``fn``."""
    _, dims = base_distribution(fn)
    return relaxed.to_event(dims) if dims else relaxed


class Relax(Messenger):
    """Replaces Bernoulli / OneHotCategorical latents (model and guide), and those that define ``relaxed``
    (``RelaxableDistribution``), by their Concrete relaxations; with
    ``straight_through``, guide sites draw hard values with soft gradients and model sites keep their discrete
    densities. Observed sites are left alone; any other latent family is a one-line UserError."""

    def __init__(self, temperature: float, straight_through: bool, in_guide: bool) -> None:
        super().__init__()
        self.temperature = temperature
        self.straight_through = straight_through
        self.in_guide = in_guide

    def _relaxed(self, base: Any) -> Any:
        if isinstance(base, RelaxableDistribution):
            return base.relaxed(self.temperature, self.straight_through)
        t = torch.tensor(self.temperature, dtype=base.logits.dtype, device=base.logits.device)
        if isinstance(base, torch.distributions.Bernoulli):
            cls = _DiscreteScoredBernoulliST if self.straight_through else dist.RelaxedBernoulli
        else:
            cls = _DiscreteScoredOneHotST if self.straight_through else dist.RelaxedOneHotCategorical
        return cls(t, logits=base.logits)

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if not is_latent(msg):
            return
        base, _ = base_distribution(msg["fn"])
        if not isinstance(
            base, (torch.distributions.Bernoulli, torch.distributions.OneHotCategorical, RelaxableDistribution)
        ):
            raise UserError(
                f"relaxed needs Bernoulli or OneHotCategorical latents, or a distribution with a relaxed(temperature, "
                f"straight_through) method; site {msg['name']!r} is {type(base).__name__}"
            )
        if self.straight_through and not self.in_guide:
            return  # the model scores the guide's hard value with its own discrete density
        msg["fn"] = _rewrap(msg["fn"], self._relaxed(base))


class RelaxedELBO(Trace_ELBO):
    """``Trace_ELBO`` on the model and guide with their Bernoulli / OneHotCategorical latents relaxed (module doc):
    value the relaxed ELBO (straight-through: the discrete ELBO), gradient reparameterised through the relaxation."""

    def __init__(
        self,
        temperature: float = 0.5,
        straight_through: bool = False,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = True,
    ) -> None:
        RelaxedOptions(temperature, straight_through)  # checks them
        super().__init__(
            num_particles=num_particles, max_plate_nesting=max_plate_nesting, vectorize_particles=vectorize_particles
        )
        self.temperature = float(temperature)
        self.straight_through = bool(straight_through)

    def _relax(self, fn: Any, in_guide: bool) -> Any:
        return Relax(self.temperature, self.straight_through, in_guide)(fn)

    def loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        with one_line_errors():
            return super().loss(self._relax(model, False), self._relax(guide, True), *args, **kwargs)

    def loss_and_grads(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        with one_line_errors():
            return super().loss_and_grads(self._relax(model, False), self._relax(guide, True), *args, **kwargs)

    def differentiable_loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        with one_line_errors():
            return super().differentiable_loss(self._relax(model, False), self._relax(guide, True), *args, **kwargs)
