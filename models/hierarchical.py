"""A hierarchical VAE with L stochastic layers, z_L -> ... -> z_1 -> x, as a Pyro model (Burda et al. 2015;
Sonderby et al. 2016):

    p(x, z_1, ..., z_L) = p(z_L) prod_{l=1}^{L-1} p(z_l | z_{l+1}) p(x | z_1),

with p(z_L) any registered prior, each p(z_l | z_{l+1}) a diagonal Gaussian from an MLP
(``GaussianConditional``) and p(x | z_1) the registered decoder and likelihood. One sample site per layer:
"z1" (the bottom one, next to x) ... "zL" (the top), inside ``pyro.plate("data", N)``; x at "x".

References:
    [1] Y. Burda, R. Grosse, R. Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016.
    [2] C. K. Sonderby, T. Raiko, L. Maaloe, S. K. Sonderby, O. Winther. Ladder Variational Autoencoders. NIPS 2016.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pyro
import pyro.distributions as dist
from pyro_vae.models.gaussian_conditional import GaussianConditional
from pyro_vae.models.networks import check_activation, check_count, check_widths
from torch import Tensor, nn

#: The guide orders: Burda et al.'s bottom-up q(z1|x) q(z2|z1) ..., or Sonderby et al.'s top-down (ladder) one.
ORDERS = ("bottomup", "ladder")


def site_name(layer: int) -> str:
    """The sample site of stochastic layer ``layer`` (1 = the bottom one): "z1", "z2", ..."""
    return f"z{layer}"


@dataclass
class HierarchicalOptions:
    """Fields:
    layers: L, the number of stochastic layers z_L -> ... -> z_1 -> x (at least 2).
    sizes: the dimension of each layer, bottom (z1) first, L of them (none: z_dim for every layer).
    hidden: hidden widths of the networks between two stochastic layers, p(z_l|z_l+1) and the guide's (none: the
        VAEConfig's hidden).
    order: the guide's order: ladder (top-down, q(zL|x) q(zL-1|zL,x) ..., precision-weighted, Sonderby et al.
        2016) or bottomup (q(z1|x) q(z2|z1) ..., Burda et al. 2015; needs a Monte Carlo-KL estimator, not meanfield).
    activation: softplus or tanh, between the hidden layers of the networks between stochastic layers.
    """

    layers: int = 2
    sizes: tuple[int, ...] | None = None
    hidden: tuple[int, ...] | None = None
    order: Literal["ladder", "bottomup"] = "ladder"
    activation: Literal["softplus", "tanh"] = "softplus"

    def __post_init__(self) -> None:
        check_count(self.layers, "layers", least=2)
        self.sizes = check_widths(self.sizes, "sizes")
        self.hidden = check_widths(self.hidden, "hidden")
        if self.sizes is not None and len(self.sizes) != self.layers:
            raise ValueError(f"sizes needs one dimension per layer ({self.layers}), got {list(self.sizes)}")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {self.order!r}")
        check_activation(self.activation)

    def layer_sizes(self, z_dim: int) -> tuple[int, ...]:
        """The dimension of z1 ... zL: ``sizes``, or ``z_dim`` for every layer."""
        return tuple(self.sizes) if self.sizes is not None else (z_dim,) * self.layers

    def check_estimator(self, elbo: str) -> str | None:
        """Why the estimator ``elbo`` cannot train this model, or None. TraceMeanField_ELBO integrates each site's
        KL analytically holding the *later-sampled* sites of the guide fixed: with the bottom-up guide z2 ~ q(z2|z1)
        is drawn after z1, so KL(q(z1|x) || p(z1|z2)) at that z2 is biased (Pyro warns that the sites are ordered
        differently); the ladder guide samples in the model's order, so there it is exact."""
        if self.order == "bottomup" and elbo == "meanfield":
            return (
                "the bottomup hierarchical guide samples z1 before z2, so the meanfield ELBO's analytic KL of z1 "
                "would be biased; use --elbo trace, iwae, stl or dreg, or --model-order ladder"
            )
        return None


class HierarchicalModel(nn.Module):
    """Pyro model: z_L ~ prior at "zL", z_l ~ ``conditionals[l-1](z_{l+1})`` at "zl", x ~ likelihood(decoder(z_1)).

    ``conditionals[l-1]`` is p(z_l | z_{l+1}) for l = 1 ... L-1. ``model(x)`` runs it on a batch; ``model(None,
    num_samples=n)`` draws n fresh samples. Parameters are registered with Pyro under the name "model".
    ``prior`` is the top layer's p(z_L) (so a VampPrior's ``init_from_data`` is found as for ``VAEModel``).
    """

    def __init__(
        self, prior: nn.Module, conditionals: list[GaussianConditional], decoder: nn.Module, likelihood: nn.Module
    ) -> None:
        super().__init__()
        self.prior = prior
        self.conditionals = nn.ModuleList(conditionals)
        self.decoder = decoder
        self.likelihood = likelihood

    @property
    def layers(self) -> int:
        return len(self.conditionals) + 1

    @property
    def sites(self) -> list[str]:
        """The latent sites, bottom ("z1") first."""
        return [site_name(layer) for layer in range(1, self.layers + 1)]

    def forward(self, x: Tensor | None, num_samples: int | None = None) -> Tensor:
        pyro.module("model", self)
        n = x.shape[0] if x is not None else num_samples
        if n is None:
            raise ValueError("give a batch x or num_samples")
        with pyro.plate("data", n):
            z = pyro.sample(site_name(self.layers), self.prior())
            for layer in range(self.layers - 1, 0, -1):
                z = pyro.sample(site_name(layer), self.conditionals[layer - 1](z))
            return pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def sample_code(self, num_samples: int) -> Tensor:
        """z_1 drawn from the model's prior p(z_1) = E_{p(z_2..z_L)} p(z_1 | z_2): what ``decode_mean`` takes."""
        z = self.prior().sample((num_samples,))
        for layer in range(self.layers - 1, 0, -1):
            z = self.conditionals[layer - 1](z).sample()
        return z

    def likelihood_dist(self, z: Tensor) -> dist.Distribution:
        """p(x|z_1) for a batch of bottom-layer latents."""
        return self.likelihood(self.decoder(z))

    def decode_mean(self, z: Tensor) -> Tensor:
        """E[x|z_1] for a batch of bottom-layer latents (what a decoded image shows)."""
        return self.likelihood.mean(self.decoder(z))
