"""Exact inference in the linear-Gaussian VAE (probabilistic PCA; Tipping & Bishop 1999).

With p(z) = N(mu_p, S_p) (S_p diagonal), p(x|z) = N(W z + b, sigma^2 I)::

    p(x)   = N(x; W mu_p + b, W S_p W^T + sigma^2 I),
    p(z|x) = N(z; m(x), S),  S = (S_p^-1 + W^T W / sigma^2)^-1,  m(x) = S (W^T (x - b) / sigma^2 + S_p^-1 mu_p).

m(x) is affine in x and S does not depend on x, so an affine encoder represents the exact posterior whenever
S is diagonal, i.e. when the columns of W are orthogonal (then W^T W is diagonal).

This is the project's ground truth for bounds and gradient estimators (decoder="linear", likelihood="gaussian");
``LinearGaussianChain`` is the same for the two-layer hierarchical VAE z2 -> z1 -> x.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from pyro_vae.models.decoders import LinearDecoder
from pyro_vae.models.gaussian_conditional import MIN_SCALE
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


def _conditional_params(link: torch.nn.Module) -> tuple[Tensor, Tensor, Tensor]:
    """(W, b, scale) of an affine ``GaussianConditional`` whose scale does not depend on its input."""
    layer = link.net[-1]
    if len(link.net) != 1:
        raise ValueError("exact inference needs affine links between the layers: the model option hidden=()")
    out = link.out_dim
    if layer.weight[out:].abs().max() > 0:
        raise ValueError("exact inference needs each link's scale to be a constant (zero scale weights)")
    scale = torch.nn.functional.softplus(layer.bias[out:]) + MIN_SCALE
    return layer.weight[:out].detach().clone(), layer.bias[:out].detach().clone(), scale.detach().clone()


@dataclass
class LinearGaussianChain:
    """The two-layer linear-Gaussian chain z2 -> z1 -> x, jointly Gaussian:

        p(z2) = N(mu_2, diag s_2^2),  p(z1 | z2) = N(W_2 z2 + b_2, diag t_1^2),  p(x | z1) = N(W_1 z1 + b_1, sigma^2 I).

    With u = (z1, z2): E[u] = (W_2 mu_2 + b_2, mu_2), Cov[u] = [[W_2 S_2 W_2^T + T_1, W_2 S_2], [S_2 W_2^T, S_2]],
    and x = H u + b_1 + noise with H = [W_1, 0], so (as for one layer, with a full prior covariance C)

        p(x)   = N(H E[u] + b_1, H C H^T + sigma^2 I),
        p(u|x) = N(P^-1 (C^-1 E[u] + H^T (x - b_1) / sigma^2), P^-1),  P = C^-1 + H^T H / sigma^2.

    Its top-down factors (``top_down``) are the Gaussian marginal q(z2|x) and conditional q(z1|z2, x), both
    affine in their inputs with constant covariances; they are diagonal when W_1 has orthogonal columns of equal
    norm, t_1 is the same for every dimension and W_2 has orthogonal columns, and then the ladder guide
    (``pyro_vae.guides.hierarchical.LadderGuide``) with affine networks represents the posterior exactly
    (``set_ladder_guide_to_posterior``).
    """

    weight1: Tensor
    bias1: Tensor
    sigma: Tensor
    weight2: Tensor
    bias2: Tensor
    scale1: Tensor
    prior_loc: Tensor
    prior_scale: Tensor

    @classmethod
    def of(cls, model: torch.nn.Module) -> LinearGaussianChain:
        """Read them from a two-layer ``HierarchicalModel`` with decoder="linear", likelihood="gaussian", a Normal
        prior and affine links (model option hidden=())."""
        if len(getattr(model, "conditionals", ())) != 1:
            raise ValueError("the exact chain needs a hierarchical model of two layers")
        if not isinstance(model.decoder, LinearDecoder) or type(model.likelihood) is not GaussianLikelihood:
            raise ValueError("exact inference needs decoder='linear' and likelihood='gaussian' (fixed sigma)")
        base = getattr(model.prior(), "base_dist", None)
        if not isinstance(base, Normal):
            raise ValueError(f"exact inference needs a diagonal Normal top prior, got {type(model.prior()).__name__}")
        w2, b2, t1 = _conditional_params(model.conditionals[0])
        j1, j2 = w2.shape
        with torch.no_grad():
            w1 = model.decoder.weight.detach().clone()
            return cls(
                weight1=w1,
                bias1=model.decoder.bias.detach().clone(),
                sigma=model.likelihood.sigma.detach().clone().to(w1.dtype),
                weight2=w2,
                bias2=b2,
                scale1=t1.expand(j1).clone(),
                prior_loc=base.loc.detach().clone().expand(j2),
                prior_scale=base.scale.detach().clone().expand(j2),
            )

    @property
    def sizes(self) -> tuple[int, int]:
        return self.weight1.shape[1], self.weight2.shape[1]

    def latent_moments(self) -> tuple[Tensor, Tensor]:
        """(E[u], Cov[u]) of u = (z1, z2) under the prior."""
        w2, s2 = self.weight2, torch.diag(self.prior_scale**2)
        mean = torch.cat([w2 @ self.prior_loc + self.bias2, self.prior_loc])
        top = torch.cat([w2 @ s2 @ w2.T + torch.diag(self.scale1**2), w2 @ s2], 1)
        return mean, torch.cat([top, torch.cat([s2 @ w2.T, s2], 1)], 0)

    def _observation(self) -> Tensor:
        j2 = self.sizes[1]
        return torch.cat([self.weight1, self.weight1.new_zeros(self.weight1.shape[0], j2)], 1)

    def marginal(self) -> MultivariateNormal:
        """p(x) = N(H E[u] + b_1, H Cov[u] H^T + sigma^2 I)."""
        mean, cov = self.latent_moments()
        h = self._observation()
        eye = torch.eye(h.shape[0], dtype=h.dtype)
        return MultivariateNormal(h @ mean + self.bias1, covariance_matrix=h @ cov @ h.T + self.sigma**2 * eye)

    def log_marginal(self, x: Tensor) -> Tensor:
        """log p(x) for each row of x, exactly."""
        return self.marginal().log_prob(x)

    def posterior_moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(means (N, J1 + J2), covariance (J1 + J2, J1 + J2), the same for every x) of p(z1, z2 | x)."""
        mean, cov = self.latent_moments()
        h = self._observation()
        c_inv = torch.linalg.inv(cov)
        s = torch.linalg.inv(c_inv + h.T @ h / self.sigma**2)
        return ((c_inv @ mean) + (x - self.bias1) @ h / self.sigma**2) @ s.T, s

    def posterior(self, x: Tensor) -> MultivariateNormal:
        """p(z1, z2 | x) for each row of x, over u = (z1, z2) (event shape (J1 + J2,))."""
        m, s = self.posterior_moments(x)
        return MultivariateNormal(m, covariance_matrix=s)

    def top_down(self, x: Tensor, z2: Tensor) -> tuple[MultivariateNormal, MultivariateNormal]:
        """(p(z2 | x), p(z1 | z2, x)): the exact posterior in the ladder guide's order, by Gaussian conditioning."""
        j1 = self.sizes[0]
        m, s = self.posterior_moments(x)
        s11, s12, s22 = s[:j1, :j1], s[:j1, j1:], s[j1:, j1:]
        gain = s12 @ torch.linalg.inv(s22)
        top = MultivariateNormal(m[..., j1:], covariance_matrix=s22)
        bottom = MultivariateNormal(m[..., :j1] + (z2 - m[..., j1:]) @ gain.T, covariance_matrix=s11 - gain @ s12.T)
        return top, bottom


def set_ladder_guide_to_posterior(guide: torch.nn.Module, model: torch.nn.Module) -> None:
    """Set an affine two-layer ``LadderGuide`` (encoder hidden=(), model option hidden=()) to the exact posterior.

    q(z2|x) = p(z2|x) (affine in x, ``posterior`` read off the chain). For q(z1|z2, x), completing the square in
    log p(x|z1) + log p(z1|z2) gives precision T_1^-1 + W_1^T W_1 / sigma^2 and precision-times-mean
    W_1^T (x - b_1) / sigma^2 + T_1^-1 (W_2 z2 + b_2): the top-down Gaussian is the model's own link
    N(W_2 z2 + b_2, T_1), the bottom-up one has precision W_1^T W_1 / sigma^2 and mean its inverse times
    W_1^T (x - b_1) / sigma^2. Needs diagonal covariances (see ``LinearGaussianChain``).
    """
    chain = LinearGaussianChain.of(model)
    w1, b1, var = chain.weight1, chain.bias1, chain.sigma**2
    gram = w1.T @ w1 / var
    if (gram - torch.diag(torch.diagonal(gram))).abs().max() > 1e-6 * torch.diagonal(gram).max():
        raise ValueError("the exact q(z1|z2,x) is not diagonal: give the linear decoder a W with orthogonal columns")
    x0 = torch.zeros(1, w1.shape[0], dtype=w1.dtype)
    loc0, cov = chain.posterior_moments(x0)
    j1 = chain.sizes[0]
    cov2 = cov[j1:, j1:]
    if (cov2 - torch.diag(torch.diagonal(cov2))).abs().max() > 1e-6 * torch.diagonal(cov2).max():
        raise ValueError("the exact q(z2|x) is not diagonal: see LinearGaussianChain for when it is")
    # q(z2|x) = N(A x + c, cov2): the posterior mean is affine in x; read A column by column off unit inputs.
    c = loc0[0, j1:]
    eye = torch.eye(w1.shape[0], dtype=w1.dtype)
    a = (chain.posterior_moments(eye)[0][:, j1:] - c).T
    guide.top.set_affine(a, c, torch.sqrt(torch.diagonal(cov2)))
    precision_b = torch.diagonal(gram)
    guide.set_bottom_up(1, (w1 / var).T / precision_b[:, None], -(w1.T @ b1) / var / precision_b, precision_b**-0.5)
    guide.downs[0].set_affine(chain.weight2, chain.bias2, chain.scale1)
