"""The amortised full-covariance Gaussian guide q(z|x) = N(mu(x), L(x) L(x)^T), and its closed-form KL to the
diagonal Gaussian priors.

A diagonal guide cannot represent a correlated posterior; the smallest KL(q || p(z|x)) it reaches for a Gaussian
posterior with precision Lambda is (1/2) (sum_j log Lambda_jj - log det Lambda) > 0 (the mean-field optimum has
q_j = N(m_j, 1 / Lambda_jj)). The full-covariance family removes that part of the approximation gap: it contains
the exact posterior of the linear-Gaussian VAE (``pyro_vae.linear_gaussian``).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro_vae.guides.normal_guide import MIN_SCALE
from torch import Tensor, nn
from torch.distributions import Independent, MultivariateNormal, Normal, register_kl
from torch.distributions.transforms import SoftplusTransform

from pyro_vae.checks import check_number


class FullCovarianceGuide(nn.Module):
    """Pyro guide q(z|x) = N(mu(x), L(x) L(x)^T), L lower triangular with a positive diagonal.

    An affine ``head`` maps the encoder's features h to mu (J values), the pre-softplus diagonal of L (J values,
    L_jj = softplus(s_j) + MIN_SCALE, as the diagonal guide's sigma) and the J (J - 1) / 2 entries below it, so
    any covariance matrix (any Cholesky factor) can be reached. Samples site "z" in ``pyro.plate("data", N)``
    like ``NormalGuide``; ``posterior(x)`` is a ``MultivariateNormal`` with batch shape (N,), event shape (J,).
    """

    def __init__(self, encoder: nn.Module, z_dim: int) -> None:
        super().__init__()
        check_number(z_dim, "z_dim", integer=True, low=1)
        self.encoder = encoder
        self.z_dim = z_dim
        self.num_off_diagonal = z_dim * (z_dim - 1) // 2
        self.head = nn.Linear(encoder.out_features, 2 * z_dim + self.num_off_diagonal)
        rows, cols = torch.tril_indices(z_dim, z_dim, offset=-1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def forward(self, x: Tensor, num_samples: int | None = None) -> Tensor:
        pyro.module("guide", self)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", self.posterior(x))

    def loc_scale_tril(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mu(x) of shape (N, J), L(x) of shape (N, J, J))."""
        out = self.head(self.encoder(x))
        j = self.z_dim
        loc, raw_diag, below = out[..., :j], out[..., j : 2 * j], out[..., 2 * j :]
        tril = torch.diag_embed(F.softplus(raw_diag) + MIN_SCALE)
        tril[..., self.rows, self.cols] = below  # a fresh tensor: writing into it keeps the gradients
        return loc, tril

    def posterior(self, x: Tensor) -> dist.Distribution:
        """q(z|x) as a distribution with batch shape (N,) and event shape (z_dim,)."""
        loc, tril = self.loc_scale_tril(x)
        return dist.MultivariateNormal(loc, scale_tril=tril)

    @torch.no_grad()
    def set_affine(self, weight: Tensor, bias: Tensor, scale_tril: Tensor) -> None:
        """Make q(z|x) = N(weight @ x + bias, scale_tril scale_tril^T), for an identity encoder (``hidden=()``).

        Used to set the guide to a known posterior, e.g. the exact one of the linear-Gaussian model, whose
        covariance does not depend on x.
        """
        if any(True for _ in self.encoder.parameters()):
            raise ValueError("set_affine needs an affine guide: build it with encoder_hidden=()")
        j = self.z_dim
        scale_tril = torch.as_tensor(scale_tril, dtype=self.head.bias.dtype)
        self.head.weight.zero_()
        self.head.weight[:j] = weight
        self.head.bias[:j] = bias
        self.head.bias[j : 2 * j] = SoftplusTransform().inv(torch.diagonal(scale_tril) - MIN_SCALE)
        self.head.bias[2 * j :] = scale_tril[self.rows, self.cols]


@register_kl(MultivariateNormal, Independent)
def kl_mvn_diagonal_normal(q: MultivariateNormal, p: Independent) -> Tensor:
    """KL(N(m, S) || N(mu, diag s^2)) for S = L L^T, in closed form (Kullback 1959; the Gaussian case of
    Odaibo's tutorial with a full covariance):

    .. math:: \\tfrac12 \\Big[\\sum_j \\frac{S_{jj} + (m_j - \\mu_j)^2}{s_j^2} - J + 2 \\sum_j \\log s_j
              - 2 \\sum_j \\log L_{jj}\\Big].

    Registered for (MultivariateNormal, Independent); only an ``Independent`` of a ``Normal`` over the last
    dimension (the ``standard`` and ``gaussian`` priors) has it, anything else raises ``NotImplementedError`` so
    that ``TraceMeanField_ELBO`` falls back to its Monte Carlo estimate as it would without this function.
    """
    if not (isinstance(p.base_dist, Normal) and p.reinterpreted_batch_ndims == 1):
        raise NotImplementedError
    loc, scale = p.base_dist.loc, p.base_dist.scale
    variances = q.scale_tril.pow(2).sum(-1)  # S_jj = sum_k L_jk^2
    log_det_q = 2 * torch.diagonal(q.scale_tril, dim1=-2, dim2=-1).log().sum(-1)
    terms = (variances + (q.loc - loc) ** 2) / scale**2 + 2 * scale.log()
    return 0.5 * (terms.sum(-1) - q.event_shape[0] - log_det_q)
