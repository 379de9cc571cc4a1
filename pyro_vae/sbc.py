"""Simulation-based calibration of the amortised posterior q(z | x) (Talts et al. 2018 [1]).

For n = 1..N: z*_n ~ p(z), x*_n ~ p(x | z*_n) (the model run with its observation sampled), then L draws
z_1..z_L ~ q(z | x*_n), and for every latent coordinate j the rank r_nj = #{l : z_lj < z*_nj} in {0, ..., L}.
z*_n is a draw from the exact posterior p(z | x*_n), so if q(z | x) = p(z | x) the ranks are uniform on
{0, ..., L} for every j ([1], Theorem 1), whatever the prior (mixture, VampPrior, flow) and family. Departures have
shapes: a U (too many extreme ranks) is a guide narrower than the posterior, an inverted U (ranks bunched in the
middle) a wider one, and a slope a biased guide ([1], Fig. 3-5). The ranks are pooled into B bins of (L + 1) / B
ranks each and each coordinate's histogram is tested for uniformity with Pearson's chi-square (B - 1 degrees of
freedom; ``scipy.stats.chisquare``); with J coordinates tested, a coordinate is flagged when its p-value is below
alpha / J (Bonferroni, so the chance that a calibrated guide is flagged anywhere is at most alpha).

References:
    [1] S. Talts, M. Betancourt, D. Simpson, A. Vehtari, A. Gelman. Validating Bayesian Inference Algorithms with
        Simulation-Based Calibration. arXiv:1804.06788, 2018.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import prune_subsample_sites
from scipy import stats
from torch import Tensor

from pyro_vae.ais import simulate
from pyro_vae.checks import check_number
from pyro_vae.errors import UserError
from pyro_vae.estimators.log_weights import guess_plate_nesting

#: Default draws from q(z | x*) per simulation: L + 1 = 100 rank values, 5 per bin of the default 20 bins.
DEFAULT_DRAWS = 99
DEFAULT_BINS = 20
#: The familywise level of the uniformity tests (Bonferroni over coordinates).
DEFAULT_ALPHA = 0.01
#: Simulations per pass through the guide (L draws each).
BLOCK = 1000


@dataclass
class SBCResult:
    """Ranks (N, J) of z* among L draws of q(z | x*), coordinate names, and the uniformity tests.

    ``p_values``: chi-square test of each coordinate's B-bin rank histogram against uniform; ``flagged``: the
    coordinates whose p-value is below ``alpha`` / J (Bonferroni).
    """

    ranks: Tensor
    names: list[str]
    num_draws: int
    num_bins: int
    alpha: float
    p_values: list[float]
    flagged: list[str]

    @property
    def num_simulations(self) -> int:
        return int(self.ranks.shape[0])

    def histogram(self) -> Tensor:
        """Counts per bin and coordinate, shape (B, J): bin b holds ranks b (L+1)/B .. (b+1) (L+1)/B - 1."""
        return rank_histogram(self.ranks, self.num_draws, self.num_bins)

    def summary(self) -> dict[str, Any]:
        """What evaluation.json keeps: settings, p-values, flagged coordinates and the histograms."""
        return {
            "num_simulations": self.num_simulations,
            "num_posterior_draws": self.num_draws,
            "num_bins": self.num_bins,
            "alpha": self.alpha,
            "correction": f"Bonferroni over {len(self.names)} coordinates: flagged when p < {self.alpha} / "
            f"{len(self.names)}",
            "p_values": dict(zip(self.names, self.p_values, strict=True)),
            "min_p_value": min(self.p_values),
            "flagged": self.flagged,
            "histogram": {n: [int(c) for c in col] for n, col in zip(self.names, self.histogram().T, strict=True)},
        }


def rank_histogram(ranks: Tensor, num_draws: int, num_bins: int) -> Tensor:
    """Counts (B, J) of ranks in {0..L} pooled into ``num_bins`` equal bins (B must divide L + 1)."""
    width = (num_draws + 1) // num_bins
    bins = torch.div(ranks, width, rounding_mode="floor").long()
    return torch.stack([torch.bincount(bins[:, j], minlength=num_bins) for j in range(ranks.shape[1])], dim=1)


def uniformity_p_values(histogram: Tensor) -> list[float]:
    """Pearson chi-square p-value per column of a (B, J) histogram against equal bin probabilities."""
    return [float(stats.chisquare(col.double().numpy()).pvalue) for col in histogram.T]


def _simulate(model: Callable[..., Any], n: int, x_like: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
    """(x*, {site: z*}) from p(z) p(x | z): ``pyro_vae.ais.simulate(model, x_like)`` (the observation sampled
    through ``uncondition``), or, with no ``x_like`` to give the data's shape, the project's ``model(None,
    num_samples=n)``, whose data site is "x"."""
    if x_like is not None:
        return simulate(model, x_like)
    with torch.no_grad():
        trace = prune_subsample_sites(poutine.trace(model).get_trace(None, num_samples=n))
    if "x" not in trace.nodes:
        raise ValueError("SBC without x_like needs a model(None, num_samples=N) with a data site 'x'")
    latents = {
        name: site["value"]
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and name != "x" and not site["is_observed"]
    }
    return trace.nodes["x"]["value"], latents


@torch.no_grad()
def sbc_ranks(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    num_simulations: int,
    num_posterior_draws: int = DEFAULT_DRAWS,
    x_like: Tensor | None = None,
) -> tuple[Tensor, list[str]]:
    """Ranks (N, J) of each simulated z* among L draws of q(z | x*) per coordinate, and the coordinates' names
    ("z[0]", ...); see the module doc. ``x_like``: N data rows whose shape the model's simulation takes."""
    x_sim, latents = _simulate(model, num_simulations, x_like)
    nesting = guess_plate_nesting(model, guide, (x_sim[:1],), {})
    ranks: list[Tensor] = []
    for start in range(0, num_simulations, BLOCK):
        xb = x_sim[start : start + BLOCK]
        # L draws at once: a plate left of the guide's own (its encoder still runs once on the block).
        with pyro.plate("sbc_draws", num_posterior_draws, dim=-(nesting + 1)):
            trace = prune_subsample_sites(poutine.trace(guide).get_trace(xb))
        block = []
        for name, z_true in latents.items():
            if name not in trace.nodes:
                raise ValueError(f"the guide has no site {name!r} of the model's prior")
            truth = z_true[start : start + BLOCK].reshape(xb.shape[0], -1)
            draws = trace.nodes[name]["value"].reshape(num_posterior_draws, xb.shape[0], -1)
            block.append((draws < truth).sum(0))
        ranks.append(torch.cat(block, dim=1))
    names = [
        f"{name}[{j}]" if z.reshape(num_simulations, -1).shape[1] > 1 else name
        for name, z in latents.items()
        for j in range(z.reshape(num_simulations, -1).shape[1])
    ]
    return torch.cat(ranks), names


def check_settings(num_simulations: int, num_posterior_draws: int, num_bins: int, alpha: float = DEFAULT_ALPHA) -> None:
    """Raise UserError (a ValueError) unless N >= 1, L >= 1, B >= 2 divides L + 1 (equal bins) and the
    familywise level alpha is in (0, 1)."""
    check_number(alpha, "SBC alpha", low=0, high=1, bounds="()")
    for label, value in (("simulations", num_simulations), ("posterior draws", num_posterior_draws)):
        check_number(value, f"SBC {label}", integer=True, low=1)
    check_number(num_bins, "SBC bins", integer=True, low=2)
    if (num_posterior_draws + 1) % num_bins:
        raise UserError(
            f"SBC bins must be an integer >= 2 that divides posterior draws + 1 = {num_posterior_draws + 1}, "
            f"got {num_bins!r}"
        )


def simulation_based_calibration(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    num_simulations: int,
    num_posterior_draws: int = DEFAULT_DRAWS,
    num_bins: int = DEFAULT_BINS,
    alpha: float = DEFAULT_ALPHA,
    x_like: Tensor | None = None,
) -> SBCResult:
    """SBC of the guide (Talts et al. 2018; module doc): ranks of N simulated z* among L draws of q(z | x*), a
    chi-square uniformity test per latent coordinate on B bins, and the coordinates flagged at familywise level
    ``alpha`` (Bonferroni). ``x_like`` (N rows) is needed for a model that cannot run as ``model(None,
    num_samples=N)``."""
    check_settings(num_simulations, num_posterior_draws, num_bins, alpha)
    if x_like is not None and x_like.shape[0] != num_simulations:
        raise ValueError(f"x_like has {x_like.shape[0]} rows for {num_simulations} simulations")
    ranks, names = sbc_ranks(model, guide, num_simulations, num_posterior_draws, x_like)
    p_values = uniformity_p_values(rank_histogram(ranks, num_posterior_draws, num_bins))
    flagged = [n for n, p in zip(names, p_values, strict=True) if p < alpha / len(names)]
    return SBCResult(ranks, names, num_posterior_draws, num_bins, alpha, p_values, flagged)
