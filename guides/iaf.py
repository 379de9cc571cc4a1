"""The inverse autoregressive flow guide (IAF; Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling 2016, "Improving
Variational Inference with Inverse Autoregressive Flow").

q(z|x): z_0 ~ N(mu(x), diag sigma(x)^2), then K steps z_k = f_k(z_{k-1}; h(x)), each an affine autoregressive map
whose shift and scale come from a MADE network of z_{k-1} and the encoder's hidden state h (Pyro's
``ConditionalAffineAutoregressive``). Its density is the change of variables

.. math:: \\log q(z_K | x) = \\log N(z_0; \\mu, \\sigma^2) - \\sum_{k=1}^K \\log \\left|\\det \\frac{\\partial f_k}
          {\\partial z_{k-1}}\\right|,

cheap for the guide's own samples (Pyro caches each step's scale) and d sequential network passes per step for any
other z. No KL(q || p) has a closed form, so ``TraceMeanField_ELBO`` estimates it by Monte Carlo (and says so).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.transforms import conditional_affine_autoregressive
from pyro.distributions.util import broadcast_shape
from pyro_vae.guides.normal_guide import MIN_SCALE
from torch import Tensor, nn

from pyro_vae.checks import check_number

#: Draws (half of them antithetic) of the Monte Carlo estimate of E_q[z|x]; the flow has no closed-form mean.
MEAN_SAMPLES = 128
#: Seed of those draws, so that the estimate is the same at every call (and the caller's random stream is untouched).
MEAN_SEED = 0


@dataclass
class IAFOptions:
    """Fields:
    steps: K, the number of inverse autoregressive flow steps after the diagonal Normal.
    hidden: hidden widths of each step's autoregressive network (MADE); widths below z_dim leave some
        dimensions unconnected.
    stable: the numerically stable step Kingma et al. (2016) recommend, z' = s z + (1 - s) m with s in (0, 1);
        off: z' = s z + m with log s clipped to [-5, 3].
    """

    steps: int = 2
    hidden: tuple[int, ...] = (128,)
    stable: bool = True

    def __post_init__(self) -> None:
        check_number(self.steps, "steps", integer=True, low=1)
        self.hidden = tuple(self.hidden)
        if not self.hidden or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in self.hidden):
            raise ValueError(f"hidden must be one or more positive integers, got {list(self.hidden)}")
        if not isinstance(self.stable, bool):
            raise ValueError(f"stable must be true or false, got {self.stable!r}")


class FlowPosterior(dist.TransformedDistribution):
    """The base Normal pushed through the conditional flow steps ``flows`` conditioned on ``context`` (N, H).

    Batch shape (N,), event shape (J,), as every guide's posterior. ``log_prob`` broadcasts its value against the
    batch shape first: the autoregressive networks need their input and context to agree in shape (the VampPrior
    scores z under the K posteriors of its pseudo-inputs at once). ``mean`` is a Monte Carlo estimate
    (``MEAN_SAMPLES`` draws, in antithetic pairs, exact when the flow is affine) on a fixed seed.
    """

    def __init__(self, base: dist.Distribution, flows: Sequence[nn.Module], context: Tensor) -> None:
        self.flows = flows
        self.context = context
        super().__init__(base, [flow.condition(context) for flow in flows])

    def expand(self, batch_shape: torch.Size, _instance: FlowPosterior | None = None) -> FlowPosterior:
        batch_shape = torch.Size(batch_shape)
        new = FlowPosterior(self.base_dist.expand(batch_shape), self.flows, self.context)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value: Tensor) -> Tensor:
        """log N(z_0; mu, sigma^2) - sum_k log ``|det df_k / dz_{k-1}|``, z_0 the flow's inverse of ``value``, as
        ``TransformedDistribution.log_prob``; -inf where that inverse leaves the floating-point range.

        Why -inf: the inverse of a stable step divides by s = sigmoid(.), which underflows to 0 for a z far from
        where q puts its mass (another example's code, as the collapse diagnostics score), giving inf or inf - inf
        there. Such a z_0 is beyond 1e38, where log N(z_0) is below -1e76 while the log-determinants stay within
        J log(1e38) ~ 88 J per step: the density is 0 to float precision.
        """
        if self._validate_args:
            self._validate_sample(value)
        shape = broadcast_shape(value.shape[:-1], self.batch_shape) + self.event_shape
        # Only when needed: the guide's own sample must stay the very tensor the flow cached.
        y = value if value.shape == shape else value.expand(shape)
        log_det: Tensor | float = 0.0
        for transform in reversed(self.transforms):  # each step maps vectors to vectors (event_dim 1)
            x = transform.inv(y)
            log_det = log_det + transform.log_abs_det_jacobian(x, y)
            y = x
        finite = torch.isfinite(y).all(-1) & torch.isfinite(torch.as_tensor(log_det))
        base = self.base_dist.log_prob(torch.where(finite.unsqueeze(-1), y, torch.zeros_like(y)))
        return torch.where(finite, base - log_det, torch.full_like(base, -torch.inf))

    @property
    def mean(self) -> Tensor:
        base = self.base_dist.base_dist
        devices = [base.loc.device] if base.loc.device.type == "cuda" else []
        half = MEAN_SAMPLES // 2
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(MEAN_SEED)
            eps = torch.randn((half, *self.base_dist.batch_shape, *self.event_shape), dtype=base.loc.dtype)
            eps = eps.to(base.loc.device)
            z = torch.cat([base.loc + base.scale * eps, base.loc - base.scale * eps])
            # Fresh conditioned steps: calling this distribution's own would overwrite their cached scales.
            for step in [flow.condition(self.context) for flow in self.flows]:
                z = step(z)
            return z.mean(0)


class IAFGuide(nn.Module):
    """Pyro guide q(z|x): the diagonal Normal of ``NormalGuide`` followed by ``steps`` IAF steps conditioned on h.

    ``encoder`` maps x to h (``encoder.out_features``); an affine ``head`` maps h to (mu, s), sigma =
    softplus(s) + MIN_SCALE, and h is also the context of every step. Samples site "z" in
    ``pyro.plate("data", N)``; ``posterior(x)`` is a ``FlowPosterior``.
    """

    def __init__(
        self, encoder: nn.Module, z_dim: int, steps: int = 2, hidden: Sequence[int] = (128,), stable: bool = True
    ) -> None:
        super().__init__()
        check_number(z_dim, "z_dim", integer=True, low=1)
        IAFOptions(steps, tuple(hidden), stable)  # the same checks as the command line's
        self.encoder = encoder
        self.z_dim = z_dim
        self.head = nn.Linear(encoder.out_features, 2 * z_dim)
        self.flows = nn.ModuleList(
            conditional_affine_autoregressive(z_dim, encoder.out_features, hidden_dims=list(hidden), stable=stable)
            for _ in range(steps)
        )

    def forward(self, x: Tensor, num_samples: int | None = None) -> Tensor:
        pyro.module("guide", self)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", self.posterior(x))

    def posterior(self, x: Tensor) -> FlowPosterior:
        """q(z|x) as a distribution with batch shape (N,) and event shape (z_dim,)."""
        h = self.encoder(x)
        loc, raw_scale = self.head(h).split(self.z_dim, dim=-1)
        base = dist.Normal(loc, F.softplus(raw_scale) + MIN_SCALE).to_event(1)
        return FlowPosterior(base, self.flows, h)
