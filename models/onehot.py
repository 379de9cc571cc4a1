"""D independent one-hot categorical variables of C classes each, as one flat vector z in {0, 1}^(D*C).

.. math:: p(z) = \\prod_{d=1}^{D} \\mathrm{Cat}(z_d \\mid \\pi_d), \\quad z = (z_1, \\dots, z_D),
          \\ z_d \\in \\{e_1, \\dots, e_C\\}

Why a flat event rather than ``OneHotCategorical(logits of shape (D, C)).to_event(1)``: every decoder, figure and
diagnostic of the project takes z as a vector of ``z_dim`` numbers, so the categorical latent is that vector with
z_dim = D * C (the first C entries are variable 1's one-hot code, the next C variable 2's, ...). The density,
sampler, entropy and KL are torch's ``OneHotCategorical``'s, summed over the D variables; the KL between two of
these is registered with ``register_kl``, so Pyro's ``TraceMeanField_ELBO`` finds it.

``FlatOneHotCategorical.relaxed`` gives the family's Concrete / Gumbel-softmax relaxation (Maddison et al. 2017;
Jang et al. 2017) on the same flat event, ``FlatRelaxedOneHotCategorical``: the ``relaxed`` estimator
(pyro_vae.estimators.relaxed) calls it, as it does for any distribution that defines ``relaxed``.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor
from torch.distributions import constraints, kl_divergence, register_kl


def variables(z_dim: int, classes: int) -> int:
    """D = z_dim / C; ValueError (one line) when C does not divide z_dim."""
    if z_dim % classes:
        raise ValueError(f"z_dim = {z_dim} is not a multiple of classes = {classes} (z_dim = D variables x C classes)")
    return z_dim // classes


class _GroupedOneHot(constraints.Constraint):
    """Vectors of D * C values that are D one-hot codes of C classes, one after the other."""

    event_dim = 1
    is_discrete = True

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes

    def check(self, value: Tensor) -> Tensor:
        grouped = value.reshape(*value.shape[:-1], -1, self.classes)
        is_binary = ((grouped == 0) | (grouped == 1)).all(-1)
        return (is_binary & (grouped.sum(-1) == 1)).all(-1)


class FlatOneHotCategorical(TorchDistribution):
    """D one-hot categoricals of C classes, from ``logits`` of shape ``(*batch, D, C)``, with event shape (D * C,)."""

    arg_constraints = {"logits": constraints.independent(constraints.real, 2)}
    has_rsample = False
    has_enumerate_support = True

    def __init__(self, logits: Tensor, validate_args: bool | None = None) -> None:
        if logits.dim() < 2:
            raise ValueError(f"logits must have shape (..., D, C), got {tuple(logits.shape)}")
        self.logits = logits - logits.logsumexp(-1, keepdim=True)
        self._base = dist.OneHotCategorical(logits=self.logits)
        d, c = logits.shape[-2:]
        super().__init__(logits.shape[:-2], torch.Size((d * c,)), validate_args=validate_args)

    @property
    def classes(self) -> int:
        return int(self.logits.shape[-1])

    @constraints.dependent_property(is_discrete=True, event_dim=1)
    def support(self) -> constraints.Constraint:
        return _GroupedOneHot(self.classes)

    @property
    def probs(self) -> Tensor:
        """``(*batch, D, C)``: the class probabilities of each variable."""
        return self._base.probs

    def _flat(self, t: Tensor) -> Tensor:
        return t.reshape(*t.shape[:-2], -1)

    def _grouped(self, value: Tensor) -> Tensor:
        return value.reshape(*value.shape[:-1], -1, self.classes)

    def expand(self, batch_shape: torch.Size, _instance: FlatOneHotCategorical | None = None) -> FlatOneHotCategorical:
        batch_shape = torch.Size(batch_shape)
        return FlatOneHotCategorical(self.logits.expand(batch_shape + self.logits.shape[-2:]))

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        return self._flat(self._base.sample(torch.Size(sample_shape)))

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return self._base.log_prob(self._grouped(value)).sum(-1)

    def entropy(self) -> Tensor:
        return self._base.entropy().sum(-1)

    @property
    def mean(self) -> Tensor:
        return self._flat(self.probs)

    @property
    def mode(self) -> Tensor:
        """The most probable z: each variable's most probable class, one-hot."""
        return self._flat(torch.nn.functional.one_hot(self.logits.argmax(-1), self.classes).to(self.logits.dtype))

    @property
    def support_size(self) -> int:
        """C^D, the number of values of z (read by pyro_vae.estimators.exact before it enumerates them)."""
        d, c = self.logits.shape[-2:]
        return int(c) ** int(d)

    def enumerate_support(self, expand: bool = True) -> Tensor:
        """All C^D values of z, shape ``(C^D, *batch, D * C)`` (``expand``) or (C^D, 1, ..., D * C); the first
        variable varies slowest."""
        d, c = self.logits.shape[-2:]
        classes = torch.cartesian_prod(*[torch.arange(c, device=self.logits.device)] * d).reshape(-1, d)
        values = self._flat(torch.nn.functional.one_hot(classes, c).to(self.logits.dtype))
        values = values.reshape(values.shape[:1] + (1,) * len(self.batch_shape) + values.shape[1:])
        return values.expand(values.shape[:1] + self.batch_shape + values.shape[-1:]) if expand else values

    @property
    def variance(self) -> Tensor:
        return self._flat(self.probs * (1 - self.probs))

    def relaxed(self, temperature: float, straight_through: bool) -> FlatRelaxedOneHotCategorical:
        """The Concrete relaxation of the D variables at ``temperature``, on the flat event (the ``relaxed``
        estimator's protocol, pyro_vae.estimators.relaxed); ``straight_through``: hard draws, discrete density."""
        return FlatRelaxedOneHotCategorical(temperature, self.logits, straight_through=straight_through)


class _GroupedSimplex(constraints.Constraint):
    """Vectors of D * C values that are D points of the C-simplex, one after the other."""

    event_dim = 1

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes

    def check(self, value: Tensor) -> Tensor:
        return constraints.simplex.check(value.reshape(*value.shape[:-1], -1, self.classes)).all(-1)


class FlatRelaxedOneHotCategorical(TorchDistribution):
    """D independent Concrete (RelaxedOneHotCategorical) variables of C classes, temperature lambda, from
    ``logits`` of shape ``(*batch, D, C)``, as one flat vector of D * C numbers (Maddison et al. 2017, eq. 2;
    Jang et al. 2017):

    .. math:: \\log \\tilde p(z) = \\sum_{d=1}^{D} \\log \\mathrm{Concrete}(z_d \\mid \\pi_d, \\lambda)

    With ``straight_through`` (Bengio et al. 2013; Jang et al. 2017) a draw is the one-hot argmax of each soft
    z_d with the soft draw's gradient (Pyro's ``RelaxedOneHotCategoricalStraightThrough``), and ``log_prob`` is
    the discrete density ``FlatOneHotCategorical`` at that hard value, so an ELBO's value is the discrete one's.
    """

    arg_constraints = {"logits": constraints.independent(constraints.real, 2)}
    has_rsample = True

    def __init__(
        self,
        temperature: float | Tensor,
        logits: Tensor,
        straight_through: bool = False,
        validate_args: bool | None = None,
    ) -> None:
        if logits.dim() < 2:
            raise ValueError(f"logits must have shape (..., D, C), got {tuple(logits.shape)}")
        self.logits = logits - logits.logsumexp(-1, keepdim=True)
        self.temperature = torch.as_tensor(temperature, dtype=logits.dtype, device=logits.device)
        self.straight_through = straight_through
        cls = dist.RelaxedOneHotCategoricalStraightThrough if straight_through else dist.RelaxedOneHotCategorical
        self._base = cls(self.temperature, logits=self.logits)
        d, c = logits.shape[-2:]
        super().__init__(logits.shape[:-2], torch.Size((d * c,)), validate_args=validate_args)

    @property
    def classes(self) -> int:
        return int(self.logits.shape[-1])

    @constraints.dependent_property(is_discrete=False, event_dim=1)
    def support(self) -> constraints.Constraint:
        return _GroupedOneHot(self.classes) if self.straight_through else _GroupedSimplex(self.classes)

    def expand(
        self, batch_shape: torch.Size, _instance: FlatRelaxedOneHotCategorical | None = None
    ) -> FlatRelaxedOneHotCategorical:
        logits = self.logits.expand(torch.Size(batch_shape) + self.logits.shape[-2:])
        return FlatRelaxedOneHotCategorical(self.temperature, logits, self.straight_through)

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        z = self._base.rsample(torch.Size(sample_shape))
        return z.reshape(*z.shape[:-2], -1)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        if self.straight_through:
            return FlatOneHotCategorical(self.logits).log_prob(value)
        return self._base.log_prob(value.reshape(*value.shape[:-1], -1, self.classes)).sum(-1)


@register_kl(FlatOneHotCategorical, FlatOneHotCategorical)
def _kl_flat_onehot(q: FlatOneHotCategorical, p: FlatOneHotCategorical) -> Tensor:
    """KL(q || p) = sum_d KL(Cat(q_d) || Cat(p_d)): the variables are independent under both."""
    return kl_divergence(q._base, p._base).sum(-1)


def kl_per_variable(q: FlatOneHotCategorical, p: FlatOneHotCategorical) -> Tensor:
    """KL(Cat(q_d) || Cat(p_d)) for each of the D variables: shape ``(*batch, D)``."""
    return kl_divergence(q._base, p._base)
