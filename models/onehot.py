"""D independent one-hot categorical variables of C classes each, as one flat vector z in {0, 1}^(D*C).

.. math:: p(z) = \\prod_{d=1}^{D} \\mathrm{Cat}(z_d \\mid \\pi_d), \\quad z = (z_1, \\dots, z_D),
          \\ z_d \\in \\{e_1, \\dots, e_C\\}

Why a flat event rather than ``OneHotCategorical(logits of shape (D, C)).to_event(1)``: every decoder, figure and
diagnostic of the project takes z as a vector of ``z_dim`` numbers, so the categorical latent is that vector with
z_dim = D * C (the first C entries are variable 1's one-hot code, the next C variable 2's, ...). The density,
sampler, entropy and KL are torch's ``OneHotCategorical``'s, summed over the D variables; the KL between two of
these is registered with ``register_kl``, so Pyro's ``TraceMeanField_ELBO`` finds it.
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
    """D one-hot categoricals of C classes, from ``logits`` of shape (*batch, D, C), with event shape (D * C,)."""

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
        """(*batch, D, C): the class probabilities of each variable."""
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

    def enumerate_support(self, expand: bool = True) -> Tensor:
        """All C^D values of z, shape (C^D, *batch, D * C) (``expand``) or (C^D, 1, ..., D * C); the first
        variable varies slowest."""
        d, c = self.logits.shape[-2:]
        classes = torch.cartesian_prod(*[torch.arange(c, device=self.logits.device)] * d).reshape(-1, d)
        values = self._flat(torch.nn.functional.one_hot(classes, c).to(self.logits.dtype))
        values = values.reshape(values.shape[:1] + (1,) * len(self.batch_shape) + values.shape[1:])
        return values.expand(values.shape[:1] + self.batch_shape + values.shape[-1:]) if expand else values

    @property
    def variance(self) -> Tensor:
        return self._flat(self.probs * (1 - self.probs))


@register_kl(FlatOneHotCategorical, FlatOneHotCategorical)
def _kl_flat_onehot(q: FlatOneHotCategorical, p: FlatOneHotCategorical) -> Tensor:
    """KL(q || p) = sum_d KL(Cat(q_d) || Cat(p_d)): the variables are independent under both."""
    return kl_divergence(q._base, p._base).sum(-1)


def kl_per_variable(q: FlatOneHotCategorical, p: FlatOneHotCategorical) -> Tensor:
    """KL(Cat(q_d) || Cat(p_d)) for each of the D variables: shape (*batch, D)."""
    return kl_divergence(q._base, p._base)
