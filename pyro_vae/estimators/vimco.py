"""VIMCO (Mnih & Rezende 2016): the K-sample importance-weighted bound with leave-one-out score-function baselines.

Value: L = log (1/K) sum_k w_k, w_k = p(x, z_k) / q(z_k | x), z_k ~ q(z | x) (the IWAE bound, Burda et al. 2015).
Gradient (eq. 10 of the paper): sum_k (L - L_{-k}) grad log q(z_k | x) + sum_k w~_k grad log w_k, with w~ = w / sum w
and the leave-one-out baseline L_{-k} = log (1/K) (sum_{j != k} w_j + w^_{-k}), where w^_{-k} is the geometric mean
of the other K - 1 weights. The baseline does not depend on z_k, so the estimator is unbiased for the gradient of
E[L] (the K-sample IWAE bound) with respect to guide and model parameters; it needs K >= 2.
"""

from __future__ import annotations

import math

import torch

from pyro_vae.estimators._score import LogDensityScoreELBO


def leave_one_out_bounds(log_w: torch.Tensor) -> torch.Tensor:
    """L_{-k} for each k along dim 0 (K >= 2): log w_k replaced by the mean of the other log w_j."""
    k = log_w.shape[0]
    others_mean = (log_w.sum(0, keepdim=True) - log_w) / (k - 1)
    # Row k of the (K, K, N) grid is log w with its k-th entry swapped for the geometric mean of the others.
    eye = torch.eye(k, dtype=torch.bool).reshape(k, k, *([1] * (log_w.dim() - 1)))
    grid = torch.where(eye, others_mean.unsqueeze(1), log_w.unsqueeze(0))
    return torch.logsumexp(grid, 1) - math.log(k)


class VIMCOBound(LogDensityScoreELBO):
    """Estimates the K-sample IWAE bound, summed over the batch; VIMCO's unbiased gradient of its expectation."""

    min_particles = 2

    def __init__(self, num_particles: int = 10, max_plate_nesting: float = float("inf")) -> None:
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)

    def _loss_and_surrogate(self, log_p: torch.Tensor, log_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_w = log_p - log_q
        lw = log_w.detach()
        bound = torch.logsumexp(lw, 0) - math.log(lw.shape[0])
        signal = bound.unsqueeze(0) - leave_one_out_bounds(lw)
        weights = torch.exp(lw - torch.logsumexp(lw, 0, keepdim=True))
        surrogate = (signal * log_q).sum() + (weights * log_w).sum()
        return -bound.sum(), -surrogate
