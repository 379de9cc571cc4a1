"""A learned flow prior: N(0, I) pushed through a few learnable autoregressive transforms (Pyro's
``pyro.distributions.transforms``), a learned prior that is neither a mixture nor tied to the encoder.

p(z) is the density of z = g(u), u ~ N(0, I), with g = T_1^{-1} o ... o T_K^{-1} and each T_k autoregressive
(masked autoregressive flow, Papamakarios, Pavlakou & Murray 2017, or a linear-order neural spline, Durkan, Bekasov,
Murray & Papamakarios 2019). The prior is scored far more often (every training step, at the guide's samples)
than sampled (figures), so the flow is run in the direction that makes scoring cheap:

.. math:: \\log p(z) = \\log N(u_K; 0, I) + \\sum_{k=1}^K \\log \\left|\\det \\frac{\\partial T_k}{\\partial u_{k-1}}
          \\right|, \\quad u_0 = z,\\ u_k = T_k(u_{k-1}),

one network pass per step; drawing z needs the inverses, J sequential passes per step. No KL(q || p) has a closed
form, so ``TraceMeanField_ELBO`` estimates it by Monte Carlo.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import affine_autoregressive, spline_autoregressive
from torch import nn

from pyro_vae.checks import check_number

TRANSFORMS = ("affine", "spline")


@dataclass
class FlowPriorOptions:
    """Fields:
    steps: K, the number of learnable transforms after N(0, I).
    hidden: hidden widths of each transform's autoregressive network (MADE).
    transform: affine (masked autoregressive flow) or spline (neural spline flow, linear order).
    bins: spline segments per coordinate (spline only).
    bound: the spline maps [-bound, bound] to itself and is the identity outside (spline only).
    """

    steps: int = 2
    hidden: tuple[int, ...] = (64,)
    transform: Literal["affine", "spline"] = "affine"
    bins: int = 8
    bound: float = 3.0

    def __post_init__(self) -> None:
        check_number(self.steps, "steps", integer=True, low=1)
        self.hidden = tuple(self.hidden)
        if not self.hidden or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in self.hidden):
            raise ValueError(f"hidden must be one or more positive integers, got {list(self.hidden)}")
        if self.transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {', '.join(TRANSFORMS)}, got {self.transform!r}")
        check_number(self.bins, "bins", integer=True, low=2)
        check_number(self.bound, "bound", low=0, high=1e6, bounds="()")


class FlowPrior(nn.Module):
    """p(z): N(0, I) through ``steps`` learnable autoregressive transforms (``transform``: "affine" or "spline").

    ``forward()`` returns a ``TransformedDistribution`` with event shape (z_dim,) and batch shape (); its
    parameters are the model's (registered with Pyro under "model" by ``VAEModel``).
    """

    def __init__(
        self,
        z_dim: int,
        steps: int = 2,
        hidden: Sequence[int] = (64,),
        transform: str = "affine",
        bins: int = 8,
        bound: float = 3.0,
    ) -> None:
        super().__init__()
        if isinstance(z_dim, bool) or not isinstance(z_dim, int) or z_dim < 2:
            raise ValueError(
                f"the flow prior needs z_dim >= 2 (an autoregressive map of one coordinate is "
                f"unconditioned), got {z_dim!r}"
            )
        options = FlowPriorOptions(steps, tuple(hidden), transform, bins, bound)  # the command line's checks
        self.z_dim = z_dim
        self.register_buffer("loc", torch.zeros(z_dim))
        self.register_buffer("scale", torch.ones(z_dim))
        widths = list(options.hidden)
        if options.transform == "affine":
            steps_ = [affine_autoregressive(z_dim, hidden_dims=widths) for _ in range(options.steps)]
        else:
            steps_ = [
                spline_autoregressive(z_dim, hidden_dims=widths, count_bins=options.bins, bound=options.bound)
                for _ in range(options.steps)
            ]
        self.transforms = nn.ModuleList(steps_)

    def forward(self) -> dist.Distribution:
        # T_k.inv: the distribution scores z through T_k (one pass) and samples through its inverse.
        return dist.TransformedDistribution(
            dist.Normal(self.loc, self.scale).to_event(1), [t.inv for t in reversed(self.transforms)]
        )
