"""Bernoulli likelihood for binary pixels: log p(x|z) = sum_d x_d log p_d + (1 - x_d) log(1 - p_d)."""

from __future__ import annotations

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.util import sum_rightmost
from torch import Tensor, nn


class IndependentBernoulli(dist.Independent):
    """``Bernoulli(logits=...).to_event(n)`` whose log-density negates the summed cross-entropy.

    The same density and the same numbers (negation is exact, so summing before negating changes no bit); only
    the order differs: torch's ``Bernoulli.log_prob`` negates every per-pixel term before ``Independent`` sums
    them, one more pass over a (K, N, 784) tensor in importance sampling, which was ~9% of ``log_likelihood``'s
    time on MNIST (benchmarks/eval_speed.py, docs/performance.md).
    """

    def log_prob(self, value: Tensor) -> Tensor:
        base = self.base_dist
        if base._validate_args:
            base._validate_sample(value)  # grey pixels still fail here, as under torch's Bernoulli
        logits = base.logits
        if logits.shape != value.shape:  # e.g. K particles' logits against N rows; in a training step they match
            logits, value = torch.broadcast_tensors(logits, value)
        terms = F.binary_cross_entropy_with_logits(logits, value, reduction="none")
        n = self.reinterpreted_batch_ndims
        # One event dim (flat data) sums the last one directly; sum_rightmost would first view it as itself.
        return -(terms.sum(-1) if n == 1 else sum_rightmost(terms, n))


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
        return IndependentBernoulli(dist.Bernoulli(logits=decoded), self.event_ndim)

    def mean(self, decoded: Tensor) -> Tensor:
        """E[x|z], the image a decoding shows."""
        return torch.sigmoid(decoded)

    @staticmethod
    def check_support(x: Tensor) -> None:
        if not torch.all((x == 0) | (x == 1)):
            raise ValueError(
                "bernoulli likelihood needs binary data (0 or 1); binarise grey pixels or use --likelihood gaussian"
            )
