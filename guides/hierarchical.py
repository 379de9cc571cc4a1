"""Guides q(z_1, ..., z_L | x) of the hierarchical VAE (``pyro_vae.models.hierarchical``), one sample site per layer
("z1" bottom ... "zL" top), in either order:

- bottom-up (Burda et al. 2015): q(z_1 | x) prod_{l>1} q(z_l | z_{l-1}), with q(z_1 | x) any registered
  guide family on the encoder's features and each q(z_l | z_{l-1}) a ``GaussianConditional``;
- ladder, top-down (Sonderby et al. 2016): a deterministic upward pass d_1 = encoder(x),
  d_{l+1} = MLP_l(d_l); q(z_L | x) any registered guide family on d_L; then downwards

      q(z_l | z_{l+1}, x) = N(mu, sigma^2),  sigma^-2 = sigma_b^-2 + sigma_t^-2,  mu = sigma^2 (mu_b sigma_b^-2 +
      mu_t sigma_t^-2),

  the precision-weighted combination of a bottom-up Gaussian N(mu_b, sigma_b^2) from d_l and a top-down one
  N(mu_t, sigma_t^2) from z_{l+1}. (Sonderby et al. share the top-down network with the model's p(z_l | z_{l+1});
  here the guide has its own, so model and guide keep separate parameters as everywhere in the project.) Its
  order is the model's, so TraceMeanField_ELBO's analytic KL per layer is exact in expectation, and with affine
  networks it contains the exact posterior of a linear-Gaussian chain (``pyro_vae.linear_gaussian``).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro_vae.models.gaussian_conditional import MIN_SCALE, GaussianConditional
from pyro_vae.models.hierarchical import site_name
from pyro_vae.models.networks import ACTIVATIONS, mlp
from torch import Tensor, nn
from torch.distributions.transforms import SoftplusTransform


class Features(nn.Module):
    """An identity "encoder" of ``out_features`` inputs: a guide family applied to features computed elsewhere."""

    def __init__(self, out_features: int) -> None:
        super().__init__()
        self.out_features = int(out_features)

    def forward(self, h: Tensor) -> Tensor:
        return h


class BottomUpGuide(nn.Module):
    """q(z_1 | x) q(z_2 | z_1) ... q(z_L | z_{L-1}) (Burda et al. 2015). ``first`` is a guide family with
    ``posterior(x)`` (e.g. ``NormalGuide``) for q(z_1 | x); ``ups[l-2]`` is q(z_l | z_{l-1}), l = 2 ... L.
    Parameters are registered with Pyro under the name "guide"."""

    def __init__(self, first: nn.Module, ups: list[GaussianConditional]) -> None:
        super().__init__()
        self.first = first
        self.ups = nn.ModuleList(ups)

    def forward(self, x: Tensor, num_samples: int | None = None) -> Tensor:
        pyro.module("guide", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample(site_name(1), self.first.posterior(x))
            for layer, up in enumerate(self.ups, start=2):
                z = pyro.sample(site_name(layer), up(z))
        return z

    @torch.no_grad()
    def code_mean(self, x: Tensor) -> Tensor:
        """E_q[z_1 | x], the bottom layer's mean (what the decoder takes)."""
        return self.first.posterior(x).mean


class LadderGuide(nn.Module):
    """The top-down (ladder) guide q(z_L | x) prod_{l<L} q(z_l | z_{l+1}, x) of the module doc.

    ``encoder`` gives d_1; ``ups[l-1]`` maps d_l to d_{l+1}; ``top`` is a guide family with ``posterior(h)`` on a
    ``Features`` encoder of d_L's width, for q(z_L | x); for layer l < L, ``heads[l-1]`` maps d_l to (mu_b, s_b) and
    ``downs[l-1]`` is the top-down N(mu_t, sigma_t^2) from z_{l+1}.
    """

    def __init__(
        self,
        encoder: nn.Module,
        ups: list[nn.Module],
        top: nn.Module,
        heads: list[nn.Linear],
        downs: list[GaussianConditional],
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.ups = nn.ModuleList(ups)
        self.top = top
        self.heads = nn.ModuleList(heads)
        self.downs = nn.ModuleList(downs)

    @property
    def layers(self) -> int:
        return len(self.heads) + 1

    def features(self, x: Tensor) -> list[Tensor]:
        """The upward pass [d_1, ..., d_L]."""
        ds = [self.encoder(x)]
        for up in self.ups:
            ds.append(up(ds[-1]))
        return ds

    def top_posterior(self, x: Tensor) -> dist.Distribution:
        """q(z_L | x) for a batch x ``(N, *x_shape)``: batch shape (N,), event shape (size of z_L,). A VampPrior on the
        top layer is built from it (Tomczak & Welling 2018 use this top-down order too)."""
        return self.top.posterior(self.features(x)[-1])

    def conditional(self, layer: int, d: Tensor, z_above: Tensor) -> dist.Distribution:
        """q(z_l | z_{l+1}, x) for ``layer`` = l < L, from d_l and z_{l+1}: the precision-weighted combination."""
        head, down = self.heads[layer - 1], self.downs[layer - 1]
        out = head(d)
        size = down.out_dim
        loc_b, scale_b = out[..., :size], F.softplus(out[..., size:]) + MIN_SCALE
        loc_t, scale_t = down.loc_scale(z_above)
        prec_b, prec_t = scale_b.pow(-2), scale_t.pow(-2)
        var = 1.0 / (prec_b + prec_t)
        return dist.Normal(var * (loc_b * prec_b + loc_t * prec_t), var.sqrt()).to_event(1)

    def forward(self, x: Tensor, num_samples: int | None = None) -> Tensor:
        pyro.module("guide", self)
        ds = self.features(x)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample(site_name(self.layers), self.top.posterior(ds[-1]))
            for layer in range(self.layers - 1, 0, -1):
                z = pyro.sample(site_name(layer), self.conditional(layer, ds[layer - 1], z))
        return z

    @torch.no_grad()
    def code_mean(self, x: Tensor) -> Tensor:
        """z_1 at the guide's means layer by layer, top down (z_{l+1} set to its conditional mean): a plug-in
        value of E_q[z_1 | x], exact when the conditional means are affine (the linear-Gaussian chain)."""
        ds = self.features(x)
        z = self.top.posterior(ds[-1]).mean
        for layer in range(self.layers - 1, 0, -1):
            z = self.conditional(layer, ds[layer - 1], z).mean
        return z

    @torch.no_grad()
    def set_bottom_up(self, layer: int, weight: Tensor, bias: Tensor, scale: Tensor) -> None:
        """Make layer ``layer``'s bottom-up Gaussian N(weight @ d_l + bias, diag scale^2) with a fixed scale (for
        setting the guide to a known posterior, e.g. the exact one of the linear-Gaussian chain)."""
        head = self.heads[layer - 1]
        size = self.downs[layer - 1].out_dim
        head.weight.zero_()
        head.weight[:size] = weight
        head.bias[:size] = bias
        s = torch.as_tensor(scale, dtype=head.bias.dtype) - MIN_SCALE
        head.bias[size:] = SoftplusTransform().inv(s)


def upward_network(in_features: int, hidden: tuple[int, ...], activation: str) -> tuple[nn.Module, int]:
    """(MLP d_l -> d_{l+1} with ``hidden`` widths, ending at its last hidden layer; its output width). With no
    hidden widths it is the identity, d_{l+1} = d_l."""
    return mlp(in_features, hidden, None, ACTIVATIONS[activation]), (hidden[-1] if hidden else in_features)
