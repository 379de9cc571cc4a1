"""A learnable mixture-of-Gaussians prior p(z) = sum_k pi_k N(z; mu_k, diag sigma_k^2).

No KL(Normal || mixture) has a closed form, so ``TraceMeanField_ELBO`` falls back to the one-sample
Monte Carlo estimate log q(z) - log p(z) for it (``pyro_vae.kl_check.kl_kinds`` reports "monte-carlo").
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro_vae.models.networks import check_count
from torch import nn
from torch.distributions.transforms import SoftplusTransform

from pyro_vae.checks import check_number


@dataclass
class MixturePriorOptions:
    """Fields:
    components: K, the number of Gaussians of the mixture prior.
    """

    components: int = 10

    def __post_init__(self) -> None:
        check_count(self.components, "components")


class MixturePrior(nn.Module):
    """p(z) = sum_{k=1}^K pi_k N(z; mu_k, diag sigma_k^2) with learnable pi, mu and sigma.

    pi = softmax(logits) starts uniform, the means mu_k start at independent N(0, I) draws (so the
    components are distinct and the prior starts spread over the region N(0, I) covers), and the scales
    sigma_k = softplus(rho_k) start at ``init_scale``. The distribution is
    ``MixtureSameFamily(Categorical(logits), Normal(mu, sigma).to_event(1))``: event shape (z_dim,),
    batch shape ().
    """

    def __init__(self, z_dim: int, num_components: int = 10, init_scale: float = 1.0) -> None:
        super().__init__()
        check_number(z_dim, "z_dim", integer=True, low=1)
        check_number(num_components, "the mixture prior's number of components", integer=True, low=1)
        check_number(init_scale, "mixture prior init_scale", positive=True)
        self.z_dim = z_dim
        self.num_components = num_components
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.locs = nn.Parameter(torch.randn(num_components, z_dim))
        self.raw_scales = nn.Parameter(SoftplusTransform().inv(torch.full((num_components, z_dim), float(init_scale))))

    @property
    def scales(self) -> torch.Tensor:
        """sigma_k, shape (K, z_dim)."""
        return F.softplus(self.raw_scales)

    @property
    def weights(self) -> torch.Tensor:
        """pi_k = softmax(logits)_k, shape (K,)."""
        return torch.softmax(self.logits, -1)

    def forward(self) -> dist.Distribution:
        components = dist.Normal(self.locs, self.scales).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), components)
