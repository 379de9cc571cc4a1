"""The VAE generative model p(z) p(x|z) as a Pyro model (Kingma & Welling 2013)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
from torch import Tensor, nn


class VAEModel(nn.Module):
    """Pyro model: for each row of x, z ~ prior at site "z", x ~ likelihood(decoder(z)) observed at "x".

    Calling ``model(x)`` with ``x`` of shape ``(N, *x_shape)`` runs the model; ``model(None, num_samples=n)``
    draws n fresh samples. All parameters (decoder, likelihood, learnable prior) are registered
    with Pyro under the name "model", so ``pyro.infer.SVI`` with ``pyro.optim`` finds them.
    """

    def __init__(self, prior: nn.Module, decoder: nn.Module, likelihood: nn.Module) -> None:
        super().__init__()
        self.prior = prior
        self.decoder = decoder
        self.likelihood = likelihood

    def forward(self, x: Tensor | None, num_samples: int | None = None) -> Tensor:
        pyro.module("model", self)
        n = x.shape[0] if x is not None else num_samples
        if n is None:
            raise ValueError("give a batch x or num_samples")
        with pyro.plate("data", n):
            z = pyro.sample("z", self.prior())
            return pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def likelihood_dist(self, z: Tensor) -> dist.Distribution:
        """p(x|z) for a batch of latents."""
        return self.likelihood(self.decoder(z))

    def decode_mean(self, z: Tensor) -> Tensor:
        """E[x|z] for a batch of latents (what a decoded image shows)."""
        return self.likelihood.mean(self.decoder(z))
