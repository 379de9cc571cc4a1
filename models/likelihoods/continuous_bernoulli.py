"""Continuous Bernoulli likelihood for grey pixels in [0, 1] (Loaiza-Ganem & Cunningham 2019).

The Bernoulli "log-likelihood" x log lambda + (1 - x) log(1 - lambda) applied to grey x is not a
normalised density on [0, 1]. The continuous Bernoulli adds the normaliser:

    p(x | lambda) = C(lambda) lambda^x (1 - lambda)^(1 - x),
    C(lambda) = 2 atanh(1 - 2 lambda) / (1 - 2 lambda)   (C(1/2) = 2, the limit),

and its mean is E[x] = lambda / (2 lambda - 1) + 1 / (2 atanh(1 - 2 lambda)), not lambda.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import Tensor, nn


class ContinuousBernoulliLikelihood(nn.Module):
    """p(x|z) = prod_d CB(x_d; lambda_d) with lambda = sigmoid(f(z)); the decoder output is the logits.

    Uses ``torch.distributions.ContinuousBernoulli`` (through ``pyro.distributions``), which switches to a
    Taylor expansion of log C near lambda = 1/2 where the closed form is 0/0.
    """

    binary_data = False

    def __init__(self, event_ndim: int = 1) -> None:
        super().__init__()
        self.event_ndim = event_ndim

    def forward(self, decoded: Tensor) -> dist.Distribution:
        return dist.ContinuousBernoulli(logits=decoded).to_event(self.event_ndim)

    def mean(self, decoded: Tensor) -> Tensor:
        """E[x|z], which differs from lambda (it is pulled towards 1/2)."""
        return dist.ContinuousBernoulli(logits=decoded).mean

    @staticmethod
    def check_support(x: Tensor) -> None:
        if not (torch.isfinite(x).all() and (x >= 0).all() and (x <= 1).all()):
            raise ValueError(
                "continuous-bernoulli likelihood needs data in [0, 1]; rescale the pixels "
                "(e.g. divide by their maximum) or use --likelihood gaussian"
            )
