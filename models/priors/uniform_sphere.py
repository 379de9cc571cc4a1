"""The uniform prior on the unit sphere S^{J-1} in R^J, for hyperspherical latents (Davidson, Falorsi, De Cao, Kipf &
Tomczak 2018, "Hyperspherical Variational Auto-Encoders"), with the power spherical guide.

.. math:: p(z) = \\frac{\\Gamma(J/2)}{2 \\pi^{J/2}}, \\qquad z \\in S^{J-1},

one over the sphere's surface area. The distribution is the ``power-spherical`` package's ``HypersphericalUniform``
(De Cao & Aziz 2020), which registers the closed-form KL(power spherical || uniform) = ``log |S^{J-1}| - H(q)``; it is
given Pyro's batch shapes here, as a Pyro prior needs inside the model's ``pyro.plate``.
"""

from __future__ import annotations

import math

import torch
from power_spherical import HypersphericalUniform
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistributionMixin
from pyro.distributions.util import broadcast_shape
from torch import Tensor, nn

from pyro_vae.checks import check_number


class UniformSphere(HypersphericalUniform, TorchDistributionMixin):
    """The package's ``HypersphericalUniform(dim)`` with a batch shape, Pyro's mixin and support ``sphere``.

    The package's distribution has batch shape () and event shape () whatever it is asked for, so inside a plate
    Pyro would wrap it in an ``ExpandedDistribution``, for which no KL is registered (the KL would silently become
    Monte Carlo). Here ``expand`` keeps the class, and samples and densities take the batch shape.
    """

    arg_constraints: dict = {}
    support = constraints.sphere
    has_rsample = True

    def __init__(
        self,
        dim: int,
        batch_shape: tuple[int, ...] | torch.Size = (),
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        validate_args: bool | None = None,
    ) -> None:
        check_number(dim, "the uniform distribution on the sphere's dim", integer=True, low=2, note="S^1 or larger")
        super().__init__(dim, device=device, dtype=dtype or torch.get_default_dtype(), validate_args=False)
        torch.distributions.Distribution.__init__(self, torch.Size(batch_shape), torch.Size([dim]), validate_args)

    @property
    def log_surface_area(self) -> float:
        """``log |S^{J-1}| = log 2 + (J/2) log pi - log Gamma(J/2)``."""
        j = int(self.dim)
        return math.log(2) + 0.5 * j * math.log(math.pi) - math.lgamma(0.5 * j)

    def expand(self, batch_shape: torch.Size, _instance: UniformSphere | None = None) -> UniformSphere:
        return UniformSphere(int(self.dim), batch_shape, self.device, self.dtype, self._validate_args)

    def rsample(self, sample_shape: tuple[int, ...] | torch.Size = ()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        v = torch.randn(shape, device=self.device, dtype=self.dtype)
        # Normalised exactly: the package divides by |v| + 1e-7, which leaves rare short draws off the sphere.
        return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        shape = broadcast_shape(value.shape[:-1], self.batch_shape)
        return super().log_prob(value).to(value.dtype).expand(shape)

    def entropy(self) -> Tensor:
        return torch.full(self.batch_shape, self.log_surface_area, device=self.device, dtype=self.dtype)


class UniformSpherePrior(nn.Module):
    """p(z) = Uniform(S^{J-1}) over ``z_dim`` = J >= 2 coordinates (one event of shape (J,); nothing learned)."""

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        check_number(z_dim, "the uniform prior on the sphere's z_dim", integer=True, low=2)
        self.z_dim = z_dim
        # A buffer only to follow .to(device, dtype), so the distribution matches the data.
        self.register_buffer("origin", torch.zeros(z_dim))

    def forward(self) -> UniformSphere:
        return UniformSphere(self.z_dim, device=self.origin.device, dtype=self.origin.dtype)
