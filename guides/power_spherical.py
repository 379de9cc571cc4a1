"""The power spherical guide for hyperspherical latents (De Cao & Aziz 2020, "The Power Spherical distribution").

q(z|x) = PowerSpherical(mu(x), kappa(x)) on the unit sphere S^{J-1} in R^J:

.. math:: q(z) = C(\\kappa, J)\\, (1 + \\mu^\\top z)^\\kappa, \\quad
          C(\\kappa, J)^{-1} = 2^{\\alpha + \\beta} \\pi^\\beta \\frac{\\Gamma(\\alpha)}{\\Gamma(\\alpha + \\beta)},
          \\quad \\alpha = \\tfrac{J - 1}{2} + \\kappa, \\ \\beta = \\tfrac{J - 1}{2}.

Why power spherical rather than the von Mises-Fisher of Davidson et al. (2018): its samples are a reparameterised
Beta draw and a Householder reflection, with no rejection sampling (the vMF sampler's rejection step needs an extra
gradient correction), and its KL to the uniform on the sphere is closed form with digamma functions only (the vMF's
needs modified Bessel functions, unstable for large kappa). The distribution and that KL come from the maintained
``power-spherical`` package; here they get Pyro's batch shapes.
"""

from __future__ import annotations

import pyro
import torch
import torch.nn.functional as F
from power_spherical import PowerSpherical as _PackagePowerSpherical
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistributionMixin
from torch import Tensor, nn

from pyro_vae.checks import check_number

#: Floor of the concentration, kappa = softplus(s) + MIN_CONCENTRATION, as Davidson et al. (2018) add 1 to the vMF's:
#: at kappa = 0 q is the uniform whatever mu is, so mu gets no gradient, and an example whose kappa falls near 0 is
#: never encoded again (with a floor of 1e-5, 5 of 8 patterns of a toy data set ended there; with 1, none).
MIN_CONCENTRATION = 1.0


class PowerSpherical(_PackagePowerSpherical, TorchDistributionMixin):
    """The package's ``PowerSpherical(loc, scale)`` (``loc`` (..., J) on the sphere, concentration ``scale`` (...,))
    with batch shape ``loc.shape[:-1]``, event shape (J,), support ``sphere`` and Pyro's mixin.

    Corrected from the package (0.8.1): its batch and event shapes are () whatever the parameters, so Pyro's plates
    cannot broadcast it; its ``mean`` multiplies ``loc`` (N, J) by E[t] (N,) without aligning them; its
    ``variance`` is a covariance matrix where torch expects the per-coordinate variance; and its samples are off
    the sphere by up to ``1e-7 / |v|`` (the inner uniform divides by ``|v| + 1e-7``), enough to fail Pyro's ``sphere``
    check on rare draws. Its density, sampler, entropy and KL to the uniform are used as they are.
    """

    support = constraints.sphere
    # The package declares loc real; it is a unit vector (the density and the rotation assume it), and saying so
    # lets code that moves parameters in an unconstrained space (the inference gaps) keep it on the sphere.
    arg_constraints = {"loc": constraints.sphere, "scale": constraints.positive}

    def __init__(self, loc: Tensor, scale: Tensor, validate_args: bool | None = None) -> None:
        if loc.dim() < 1 or loc.shape[-1] < 2:
            raise ValueError(f"power spherical loc must have a last dimension J >= 2, got shape {tuple(loc.shape)}")
        if scale.shape != loc.shape[:-1]:
            raise ValueError(
                f"scale must have shape loc.shape[:-1] = {tuple(loc.shape[:-1])}, got {tuple(scale.shape)}"
            )
        super().__init__(loc, scale, validate_args=validate_args)  # checks loc and scale when validating
        validate = self._validate_args
        torch.distributions.Distribution.__init__(self, loc.shape[:-1], loc.shape[-1:], validate_args=False)
        self._validate_args = validate

    def expand(self, batch_shape: torch.Size, _instance: PowerSpherical | None = None) -> PowerSpherical:
        batch_shape = torch.Size(batch_shape)
        loc = self.loc.expand(batch_shape + self.event_shape)
        return PowerSpherical(loc, self.scale.expand(batch_shape), validate_args=self._validate_args)

    def rsample(self, sample_shape: tuple[int, ...] | torch.Size = ()) -> Tensor:
        z = super().rsample(sample_shape)
        return z / torch.linalg.vector_norm(z, dim=-1, keepdim=True)

    def sample(self, sample_shape: tuple[int, ...] | torch.Size = ()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return super().log_prob(value)

    @property
    def mean(self) -> Tensor:
        """E[z] = E[t] mu, with t = mu^T z = 2 B - 1, B ~ Beta(alpha, beta)."""
        return self.loc * self.base_dist.marginal_t.mean.unsqueeze(-1)

    @property
    def variance(self) -> Tensor:
        """Var(z_i) = Var(t) mu_i^2 + E[1 - t^2] (1 - mu_i^2) / (J - 1): z = t mu + sqrt(1 - t^2) v with v
        uniform on the unit sphere of the J - 1 dimensions orthogonal to mu, so E[v_i^2] = (1 - mu_i^2) / (J - 1)."""
        t = self.base_dist.marginal_t
        var_t, mean_t = t.variance.unsqueeze(-1), t.mean.unsqueeze(-1)
        j = self.event_shape[0]
        return var_t * self.loc**2 + (1 - var_t - mean_t**2) * (1 - self.loc**2) / (j - 1)


class PowerSphericalGuide(nn.Module):
    """Pyro guide q(z|x) = PowerSpherical(mu(x), kappa(x)) on S^{J-1}, J = ``z_dim`` >= 2.

    An affine ``head`` maps the encoder's features h to J + 1 values: the direction ``mu = v / |v|`` and
    kappa = softplus(s) + MIN_CONCENTRATION. Samples site "z" in ``pyro.plate("data", N)``; ``posterior(x)`` has
    batch shape (N,) and event shape (J,).
    """

    def __init__(self, encoder: nn.Module, z_dim: int) -> None:
        super().__init__()
        check_number(z_dim, "the power spherical guide's z_dim", integer=True, low=2, note="z on S^1 or larger")
        self.encoder = encoder
        self.z_dim = z_dim
        self.head = nn.Linear(encoder.out_features, z_dim + 1)

    def forward(self, x: Tensor, num_samples: int | None = None) -> Tensor:
        pyro.module("guide", self)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", self.posterior(x))

    def loc_concentration(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mu(x) of shape (N, J), unit norm; kappa(x) of shape (N,))."""
        out = self.head(self.encoder(x))
        return F.normalize(out[..., : self.z_dim], dim=-1), F.softplus(out[..., self.z_dim]) + MIN_CONCENTRATION

    def posterior(self, x: Tensor) -> PowerSpherical:
        """q(z|x) as a distribution with batch shape (N,) and event shape (z_dim,)."""
        loc, concentration = self.loc_concentration(x)
        return PowerSpherical(loc, concentration)
