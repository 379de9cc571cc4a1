"""Guides that read a label: q(z|x,y) of the conditional VAE, and q(y|x) q(z|x,y) of M2 (Kingma et al. 2014)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch.nn.functional as F
from pyro_vae.guides.normal_guide import MIN_SCALE
from pyro_vae.models.labelled import join, one_hot, unpack
from torch import Tensor, nn


class LabelledNormalHead(nn.Module):
    """q(z|x,y) = N(mu, diag sigma^2) with (mu, s) = W [h(x), onehot(y)] + b, sigma = softplus(s) + MIN_SCALE."""

    def __init__(self, encoder: nn.Module, z_dim: int, classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.z_dim = z_dim
        self.classes = classes
        self.head = nn.Linear(encoder.out_features + classes, 2 * z_dim)

    def forward(self, x: Tensor, y: Tensor) -> dist.Distribution:
        h = self.encoder(x)
        out = self.head(join(h, one_hot(y, self.classes, h)))
        return dist.Normal(out[..., : self.z_dim], F.softplus(out[..., self.z_dim :]) + MIN_SCALE).to_event(1)


class ConditionalGuide(nn.Module):
    """Pyro guide of ``ConditionalVAEModel``: z ~ q(z|x,y) at site "z" in ``plate("data")``, parameters "guide"."""

    def __init__(self, encoder: nn.Module, z_dim: int, classes: int, x_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.q_z = LabelledNormalHead(encoder, z_dim, classes)
        self.x_shape = tuple(x_shape)

    def forward(self, packed: Tensor) -> Tensor:
        pyro.module("guide", self)
        x, y = unpack(packed, self.x_shape)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", self.q_z(x, y))

    def posterior_given(self, x: Tensor, y: Tensor) -> dist.Distribution:
        """q(z|x,y), batch shape (N,), event shape (z_dim,)."""
        return self.q_z(x, y)


class Classifier(nn.Module):
    """q(y|x) = Cat(softmax(W h(x) + b)): M2's classifier, on an encoder of its own."""

    def __init__(self, encoder: nn.Module, classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.out_features, classes)

    def forward(self, x: Tensor) -> Tensor:
        """The logits of q(y|x), shape (N, classes)."""
        return self.head(self.encoder(x))


class M2Guide(nn.Module):
    """Pyro guide of ``M2Model``: labelled rows z ~ q(z|x,y) at "z_l"; unlabelled rows y ~ q(y|x) at "y_u",
    enumerated in parallel (``infer={"enumerate": "parallel"}``), then z ~ q(z|x,y) at "z_u"."""

    def __init__(self, q_z: LabelledNormalHead, classifier: Classifier, x_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.q_z = q_z
        self.classifier = classifier
        self.x_shape = tuple(x_shape)
        self.labelled_scale = 1.0  # as the model's: scales the labelled plate (pyro_vae.labelled_batches)

    def forward(self, packed: Tensor) -> None:
        pyro.module("guide", self)
        x, y = unpack(packed, self.x_shape)
        known = y >= 0
        if known.any():
            xl = x[known]
            with pyro.plate("labelled", xl.shape[0]), poutine.scale(scale=self.labelled_scale):
                pyro.sample("z_l", self.q_z(xl, y[known]))
        if not known.all():
            xu = x[~known]
            with pyro.plate("unlabelled", xu.shape[0]):
                yu = pyro.sample("y_u", dist.Categorical(logits=self.classifier(xu)), infer={"enumerate": "parallel"})
                pyro.sample("z_u", self.q_z(xu, yu))

    def posterior_given(self, x: Tensor, y: Tensor) -> dist.Distribution:
        """q(z|x,y), batch shape (N,), event shape (z_dim,)."""
        return self.q_z(x, y)

    def predict(self, x: Tensor) -> Tensor:
        """argmax_y q(y|x), shape (N,)."""
        return self.classifier(x).argmax(-1)
