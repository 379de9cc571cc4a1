"""The categorical prior: D independent one-hot variables of C classes, z a flat vector of D * C values
(``pyro_vae.models.onehot``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pyro_vae.models.networks import check_count, check_flag
from pyro_vae.models.onehot import FlatOneHotCategorical, variables
from torch import nn


@dataclass
class CategoricalPriorOptions:
    """Fields:
    classes: C, the classes of each categorical variable; z_dim must be D * C, a multiple of it, and the guide's
        classes must be the same.
    learn: learn the prior's class logits, C per variable (otherwise every class has probability 1 / C).
    """

    classes: int = 2
    learn: bool = False

    def __post_init__(self) -> None:
        check_count(self.classes, "classes", least=2)
        check_flag(self.learn, "learn")


class CategoricalPrior(nn.Module):
    """p(z) = prod_d Cat(z_d | softmax(l_d)) over D = z_dim / C one-hot variables; uniform logits l unless learned."""

    def __init__(self, z_dim: int, classes: int, learnable: bool = False) -> None:
        super().__init__()
        logits = torch.zeros(variables(z_dim, classes), classes)
        self.learnable = learnable
        if learnable:
            self.logits = nn.Parameter(logits)
        else:
            self.register_buffer("logits", logits)

    def forward(self) -> FlatOneHotCategorical:
        return FlatOneHotCategorical(self.logits)
