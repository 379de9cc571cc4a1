"""The categorical guide q(z|x) = prod_d Cat(z_d | softmax(l_d(x))): D one-hot variables of C classes, z a flat
vector of D * C values (``pyro_vae.models.onehot``).

Its samples are discrete: train it with an estimator that uses score functions or relaxations (docs/estimators.md,
"Supported latents"); the reparameterised-only estimators are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
from pyro_vae.models.networks import check_count
from pyro_vae.models.onehot import FlatOneHotCategorical, variables
from torch import Tensor, nn


@dataclass
class CategoricalGuideOptions:
    """Fields:
    classes: C, the classes of each categorical variable; z_dim must be D * C, a multiple of it, and the prior's
        classes must be the same.
    """

    classes: int = 2

    def __post_init__(self) -> None:
        check_count(self.classes, "classes", least=2)


class CategoricalGuide(nn.Module):
    """An affine ``head`` maps the encoder's features to D x C logits; site "z" in ``pyro.plate("data", N)``, and
    ``posterior(x)`` has batch shape (N,), event shape (D * C,)."""

    def __init__(self, encoder: nn.Module, z_dim: int, classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.z_dim = z_dim
        self.classes = classes
        self.variables = variables(z_dim, classes)
        self.head = nn.Linear(encoder.out_features, z_dim)

    def forward(self, x: Tensor, num_samples: int | None = None) -> Tensor:
        pyro.module("guide", self)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", self.posterior(x))

    def logits(self, x: Tensor) -> Tensor:
        """l(x) of shape (N, D, C)."""
        out = self.head(self.encoder(x))
        return out.reshape(*out.shape[:-1], self.variables, self.classes)

    def posterior(self, x: Tensor) -> FlatOneHotCategorical:
        """q(z|x) as a distribution with batch shape (N,) and event shape (D * C,)."""
        return FlatOneHotCategorical(self.logits(x))
