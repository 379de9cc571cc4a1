"""Exact inference in the linear-Gaussian VAE (probabilistic PCA; Tipping & Bishop 1999).

With p(z) = N(mu_p, S_p) (S_p diagonal), p(x|z) = N(W z + b, sigma^2 I)::

    p(x)   = N(x; W mu_p + b, W S_p W^T + sigma^2 I),
    p(z|x) = N(z; m(x), S),  S = (S_p^-1 + W^T W / sigma^2)^-1,  m(x) = S (W^T (x - b) / sigma^2 + S_p^-1 mu_p).

m(x) is affine in x and S does not depend on x, so an affine encoder represents the exact posterior whenever
S is diagonal, i.e. when the columns of W are orthogonal (then W^T W is diagonal).

This is the project's ground truth for bounds and gradient estimators (decoder="linear", likelihood="gaussian").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from pyro_vae.models.decoders import LinearDecoder
from pyro_vae.models.likelihoods import GaussianLikelihood


@dataclass
class LinearGaussian:
    """The parameters of a linear-Gaussian model: W (D, J), b (D,), sigma, prior mean (J,) and std (J,)."""

    weight: Tensor
    bias: Tensor
    sigma: Tensor
    prior_loc: Tensor
    prior_scale: Tensor

    @classmethod
    def of(cls, model: torch.nn.Module) -> LinearGaussian:
        """Read them from a ``VAEModel`` built with decoder="linear", likelihood="gaussian" and a Normal prior."""
        if not isinstance(model.decoder, LinearDecoder) or type(model.likelihood) is not GaussianLikelihood:
            raise ValueError("exact inference needs decoder='linear' and likelihood='gaussian' (fixed sigma)")
        prior = model.prior()
        base = getattr(prior, "base_dist", None)
        if not isinstance(base, Normal):
            raise ValueError(f"exact inference needs a diagonal Normal prior, got {type(prior).__name__}")
        with torch.no_grad():
            return cls(
                weight=model.decoder.weight.detach().clone(),
                bias=model.decoder.bias.detach().clone(),
                sigma=model.likelihood.sigma.detach().clone().to(model.decoder.weight.dtype),
                prior_loc=base.loc.detach().clone().expand(model.decoder.weight.shape[1]),
                prior_scale=base.scale.detach().clone().expand(model.decoder.weight.shape[1]),
            )

    def marginal(self) -> MultivariateNormal:
        """p(x) = N(W mu_p + b, W S_p W^T + sigma^2 I)."""
        w, d = self.weight, self.weight.shape[0]
        cov = (w * self.prior_scale**2) @ w.T + self.sigma**2 * torch.eye(d, dtype=w.dtype)
        return MultivariateNormal(w @ self.prior_loc + self.bias, covariance_matrix=cov)

    def log_marginal(self, x: Tensor) -> Tensor:
        """log p(x) for each row of x, exactly."""
        return self.marginal().log_prob(x)

    def posterior_covariance(self) -> Tensor:
        """S = (S_p^-1 + W^T W / sigma^2)^-1, the same for every x."""
        precision = torch.diag(self.prior_scale**-2) + self.weight.T @ self.weight / self.sigma**2
        return torch.linalg.inv(precision)

    def posterior_affine(self) -> tuple[Tensor, Tensor]:
        """(A, c) with m(x) = A x + c: A = S W^T / sigma^2, c = S (S_p^-1 mu_p - W^T b / sigma^2)."""
        s = self.posterior_covariance()
        a = s @ self.weight.T / self.sigma**2
        c = s @ (self.prior_loc / self.prior_scale**2 - self.weight.T @ self.bias / self.sigma**2)
        return a, c

    def posterior(self, x: Tensor) -> MultivariateNormal:
        """p(z|x) for each row of x, exactly (batch shape (N,), event shape (J,))."""
        a, c = self.posterior_affine()
        return MultivariateNormal(x @ a.T + c, covariance_matrix=self.posterior_covariance())


def set_guide_to_posterior(guide: torch.nn.Module, model: torch.nn.Module, scale_factor: float = 1.0) -> None:
    """Set an affine ``NormalGuide`` (encoder_hidden=()) to the exact posterior, its std times ``scale_factor``.

    Needs a diagonal posterior covariance, i.e. W with orthogonal columns (see ``orthogonal_weight``), unless the
    guide is full-covariance (``FullCovarianceGuide``, which has ``loc_scale_tril``): it takes any W, its
    Cholesky factor times ``scale_factor``.
    """
    lg = LinearGaussian.of(model)
    s = lg.posterior_covariance()
    if hasattr(guide, "loc_scale_tril"):
        a, c = lg.posterior_affine()
        guide.set_affine(a, c, torch.linalg.cholesky(s) * scale_factor)
        return
    off_diagonal = s - torch.diag(torch.diagonal(s))
    if off_diagonal.abs().max() > 1e-6 * torch.diagonal(s).abs().max():
        raise ValueError("the exact posterior is not diagonal: give the linear decoder a W with orthogonal columns")
    a, c = lg.posterior_affine()
    guide.set_affine(a, c, torch.sqrt(torch.diagonal(s)) * scale_factor)


def orthogonal_weight(x_dim: int, z_dim: int, column_norms: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A (x_dim, z_dim) matrix with orthogonal columns of the given norms (Q from a QR decomposition)."""
    if z_dim > x_dim:
        raise ValueError(f"orthogonal columns need z_dim <= x_dim, got z_dim={z_dim}, x_dim={x_dim}")
    q, _ = torch.linalg.qr(torch.randn(x_dim, z_dim, generator=generator, dtype=column_norms.dtype))
    return q * column_norms


def exact_elbo(model: torch.nn.Module, guide: torch.nn.Module, x: Tensor) -> Tensor:
    """The ELBO of each row of x in closed form, differentiable in every parameter of model and guide.

    For q(z|x) = N(m, diag s^2): E_q[log p(x|z)] = -D/2 log(2 pi sigma^2) - (||x - W m - b||^2
    + sum_j s_j^2 ||W_j||^2) / (2 sigma^2), minus KL(q || p) between diagonal Gaussians. For a full-covariance
    q = N(m, L L^T) (a ``MultivariateNormal``) the trace term is ||W L||_F^2 and the KL is the registered
    KL(MultivariateNormal || diagonal Normal). Its gradient is the expectation of every unbiased ELBO gradient
    estimator.
    """
    LinearGaussian.of(model)  # checks the model is linear-Gaussian
    q = guide.posterior(x)
    w, b, sigma = model.decoder.weight, model.decoder.bias, model.likelihood.sigma.to(x.dtype)
    d = x.shape[-1]
    residual = x - q.mean @ w.T - b
    if isinstance(q, MultivariateNormal):
        trace = ((w @ q.scale_tril) ** 2).sum((-2, -1))
        kl = kl_divergence(q, model.prior())
    else:
        q, p = q.base_dist, model.prior().base_dist
        trace = (q.scale**2 * (w**2).sum(0)).sum(-1)
        kl = kl_divergence(q, p).sum(-1)
    expected_sq = (residual**2).sum(-1) + trace
    expected_log_lik = -0.5 * d * torch.log(2 * torch.pi * sigma**2) - expected_sq / (2 * sigma**2)
    return expected_log_lik - kl
