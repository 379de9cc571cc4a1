"""Bernoulli likelihood for binary pixels: log p(x|z) = sum_d x_d log p_d + (1 - x_d) log(1 - p_d)."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import Tensor, nn


class BernoulliLikelihood(nn.Module):
    """p(x|z) = prod_d Bernoulli(x_d; sigmoid(f(z)_d)); the decoder output is the logits.

    Grey pixels are outside the support: binarise them first (the training loop draws
    x ~ Bernoulli(pixels) afresh each epoch) rather than switching validation off.
    """

    binary_data = True

    def __init__(self, event_ndim: int = 1) -> None:
        super().__init__()
        self.event_ndim = event_ndim  # 1 for flat data (D,), 3 for images (C, H, W)

    def forward(self, decoded: Tensor) -> dist.Distribution:
        return dist.Bernoulli(logits=decoded).to_event(self.event_ndim)

    def mean(self, decoded: Tensor) -> Tensor:
        """E[x|z], the image a decoding shows."""
        return torch.sigmoid(decoded)

    @staticmethod
    def check_support(x: Tensor) -> None:
        if not torch.all((x == 0) | (x == 1)):
            raise ValueError(
                "bernoulli likelihood needs binary data (0 or 1); binarise grey pixels or use --likelihood gaussian"
            )
