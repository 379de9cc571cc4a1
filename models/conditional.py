"""The conditional VAE (Sohn, Lee & Yan 2015, "Learning Structured Output Representation using Deep Conditional
Generative Models"): a label y is an input of the prior p(z|y), the decoder p(x|z,y) and the guide q(z|x,y).

p(x, z | y) = N(z; mu_y, diag sigma_y^2) p(x | f([z, onehot(y)])), with one learned prior mean and scale per class:
the standard VAE loss (Odaibo eq. 43) holds with (mu_p, sigma_p) = (mu_y, sigma_y) in the KL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro_vae.models.labelled import join, one_hot, unpack
from pyro_vae.models.networks import check_count
from torch import Tensor, nn
from torch.distributions.transforms import SoftplusTransform


@dataclass
class ConditionalOptions:
    """Fields:
    classes: the number of classes K; the labels are 0 .. K-1.
    """

    classes: int = 10

    def __post_init__(self) -> None:
        check_count(self.classes, "classes", least=2)


class ClassConditionalPrior(nn.Module):
    """p(z|y) = N(mu_y, diag sigma_y^2): a learned mean and scale (softplus of a parameter) for each class.

    Starts at N(0, I) for every class; the decoder also sees y, so the classes need not separate in z."""

    def __init__(self, classes: int, z_dim: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(classes, z_dim))
        self.raw_scale = nn.Parameter(torch.full((classes, z_dim), float(SoftplusTransform().inv(torch.tensor(1.0)))))

    def loc_scale(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """(mu_y, sigma_y), each of shape ``(*y.shape, z_dim)``."""
        return self.loc[y], F.softplus(self.raw_scale[y])

    def forward(self, y: Tensor) -> dist.Distribution:
        return dist.Normal(*self.loc_scale(y)).to_event(1)


class ConditionalVAEModel(nn.Module):
    """Pyro model of a packed batch (``pyro_vae.models.labelled``; every row labelled): in ``plate("data")``,
    z ~ p(z|y) at site "z", x ~ p(x | decoder([z, onehot(y)])) observed at "x". Parameters under the name "model".

    The ``decoder`` takes z_dim + classes inputs. ``class_means(y)`` draws z ~ p(z|y) and decodes E[x|z,y].
    """

    labelled_input = True
    #: Every training row needs its label.
    needs_all_labels = True

    def __init__(
        self, prior: ClassConditionalPrior, decoder: nn.Module, likelihood: nn.Module, x_shape: Sequence[int]
    ) -> None:
        super().__init__()
        self.class_prior = prior
        self.decoder = decoder
        self.likelihood = likelihood
        self.x_shape = tuple(x_shape)
        self.classes = int(prior.loc.shape[0])

    def forward(self, packed: Tensor) -> Tensor:
        pyro.module("model", self)
        x, y = unpack(packed, self.x_shape)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.class_prior(y))
            return pyro.sample("x", self.likelihood(self.decoder(join(z, one_hot(y, self.classes, z)))), obs=x)

    def latent_prior(self, y: Tensor) -> dist.Distribution:
        """p(z|y), batch shape y.shape."""
        return self.class_prior(y)

    def class_log_prior(self) -> Tensor | None:
        """log p(y): None, y is an input here (not modelled)."""
        return None

    def decode(self, z: Tensor, y: Tensor) -> dist.Distribution:
        """p(x | z, y) for latents z (..., z_dim) and classes y (...)."""
        return self.likelihood(self.decoder(join(z, one_hot(y, self.classes, z))))

    def class_means(self, y: Tensor) -> Tensor:
        """E[x | z, y] for one z ~ p(z|y) per entry of ``y`` (N,): class-conditional samples, shape
        ``(N, *x_shape)``."""
        z = self.class_prior(y).sample()
        return self.likelihood.mean(self.decoder(join(z, one_hot(y, self.classes, z))))
