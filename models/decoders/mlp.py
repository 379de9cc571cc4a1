"""A multilayer-perceptron decoder (Kingma & Welling 2013, appendix C)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, activation: type[nn.Module] = nn.Softplus) -> nn.Sequential:
    """An MLP in_dim -> hidden[0] -> ... -> out_dim with ``activation`` between layers, none at the end."""
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden:
        layers += [nn.Linear(width, h), activation()]
        width = h
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class MLPDecoder(nn.Module):
    """f(z) = MLP(z): the raw parameter of p(x|z) (Bernoulli logits or Gaussian mean)."""

    def __init__(self, z_dim: int, x_dim: int, hidden: Sequence[int] = (256,)) -> None:
        super().__init__()
        self.net = mlp(z_dim, tuple(hidden), x_dim)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)
