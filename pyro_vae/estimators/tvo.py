"""The thermodynamic variational objective (TVO, Masrani, Le & Wood 2019), with K particles per example.

log p(x) = int_0^1 E_{pi_beta}[log w] d beta, where pi_beta(z) is proportional to q(z | x)^(1 - beta) p(x, z)^beta =
q(z | x) w^beta and w = p(x, z) / q(z | x). The left Riemann sum over the partition 0 = beta_0 < beta_1 < ... <
beta_{S-1} < beta_S = 1 is a lower bound on log p(x) (the integrand rises with beta), equal to the ELBO for S = 1:

    TVO_L(x) = sum_j (beta_{j+1} - beta_j) E_{pi_{beta_j}}[log w].

Each expectation is estimated by self-normalised importance sampling from z_k ~ q(z | x): E_pi[f] ~ sum_k w~_k f_k with
w~ = softmax_k(beta log w_k). Gradient: the covariance estimator of the paper (its section 4),
grad E_pi[f] = E_pi[grad f] + Cov_pi(f, grad log q + beta grad log w), with f = log w, each expectation by the same
self-normalised weights; z is not reparameterised, so it works for discrete and continuous latents alike.

Value: the TVO lower bound, estimated with the bias of self-normalised importance sampling (O(1/K), to below; exact as K
grows). Gradient: biased for finite K for the same reason, consistent as K grows. Partition: ``partitions`` = S points,
beta_0 = 0 and beta_1..beta_{S-1} log-spaced from ``beta_min`` (the paper's log-uniform schedule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pyro_vae.checks import check_number
from pyro_vae.estimators._score import LogDensityScoreELBO


@dataclass
class TVOOptions:
    """Fields:
    partitions: the number S of points of the partition of [0, 1] (1: the ELBO).
    beta_min: the first non-zero point beta_1; beta_1..beta_{S-1} are log-spaced from it towards 1.
    """

    partitions: int = 5
    beta_min: float = 0.01

    def __post_init__(self) -> None:
        check_number(self.partitions, "partitions", integer=True, low=1)
        check_number(self.beta_min, "beta_min", low=0, high=1, bounds="()")


def partition(partitions: int, beta_min: float) -> torch.Tensor:
    """The S + 1 points 0 = beta_0 < beta_1 < ... < beta_{S-1} < beta_S = 1 (beta_1.. log-spaced from beta_min)."""
    if partitions == 1:
        return torch.tensor([0.0, 1.0])
    inner = torch.logspace(math.log10(beta_min), 0.0, partitions)[:-1]  # beta_min ... below 1
    return torch.cat([torch.zeros(1), inner, torch.ones(1)])


def tvo_from_log_weights(log_p: torch.Tensor, log_q: torch.Tensor, betas: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(TVO_L per example, surrogate per example) from (K, N) log densities of K draws per example (module doc)."""
    log_w = log_p - log_q
    lw = log_w.detach()
    value = torch.zeros(lw.shape[1:], dtype=lw.dtype)
    surrogate = torch.zeros(lw.shape[1:], dtype=lw.dtype)
    for beta, width in zip(betas[:-1].tolist(), (betas[1:] - betas[:-1]).tolist(), strict=True):
        weights = torch.softmax(beta * lw, 0)
        mean = (weights * lw).sum(0)
        value = value + width * mean
        centred = weights * (lw - mean)  # for the covariance with grad log pi~ = grad log q + beta grad log w
        surrogate = surrogate + width * ((weights * log_w).sum(0) + (centred * (log_q + beta * log_w)).sum(0))
    return value, surrogate


class TVOBound(LogDensityScoreELBO):
    """Estimates the TVO lower bound, summed over the batch; the covariance gradient (module doc)."""

    def __init__(
        self,
        partitions: int = 5,
        beta_min: float = 0.01,
        num_particles: int = 10,
        max_plate_nesting: float = float("inf"),
    ) -> None:
        TVOOptions(partitions, beta_min)  # checks them
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        self.betas = partition(partitions, beta_min)

    def _loss_and_surrogate(self, log_p: torch.Tensor, log_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        value, surrogate = tvo_from_log_weights(log_p, log_q, self.betas)
        return -value.sum(), -surrogate.sum()
