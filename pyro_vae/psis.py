"""Pareto k-hat of importance weights, per example, from log weights already drawn (Vehtari et al. 2015, 2024).

The tail of the importance weights w = p(x, z) / q(z | x) is fitted with a generalized Pareto distribution; its
shape k-hat says how many moments the weights have (1/k of them), and so whether the importance-sampled estimate
can be trusted: k-hat < 0.5 is good, up to the sample-size-dependent threshold min(1 - 1/log10(S), 0.7) the
estimate is usable, and above it (and always above 0.7) the estimate is unreliable, whatever its standard error
says [1]. For a VAE, k-hat also says whether q(z | x) covers the posterior (Yao et al. 2018 [2]).

The fit is Pyro's (``pyro.ops.stats.fit_generalized_pareto``, Zhang & Stephens 2009 as in [1]) and the tail is
chosen exactly as in ``pyro.infer.importance.psis_diagnostic``: the largest M = ceil(min(0.2 S, 3 sqrt(S))) of S
weights, above the (M+1)-th. Only this thin glue is ours, because ``psis_diagnostic`` draws its own samples and
sums the log weights over the data plate (one k for the whole batch), while the project wants one k per example
from the weights its estimates already used. Only the M + 1 largest log weights per example are needed, so a
sampler that streams its weights can keep just those (``TopLogWeights``).

References:
    [1] A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry. Pareto Smoothed Importance Sampling. JMLR 25, 2024.
    [2] Y. Yao, A. Vehtari, D. Simpson, A. Gelman. Yes, but Did It Work?: Evaluating Variational Inference. ICML 2018.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from pyro.ops.stats import fit_generalized_pareto
from torch import Tensor

#: Above this k-hat an importance-sampled estimate is unreliable at any sample size (Vehtari et al. 2024).
KHAT_LIMIT = 0.7

#: Log weights whose largest M + 1 differ by less than this (or than ``ROUNDING_ULPS`` rounding errors of their
#: dtype at their size, if more) are equal to rounding: k-hat is -inf (no tail).
EQUAL_LOG_WEIGHTS = 1e-8
ROUNDING_ULPS = 64

#: The fewest tail weights Pyro's ``psis_diagnostic`` fits (it returns inf below; we return nan).
MIN_TAIL = 10


def tail_size(num_samples: int) -> int:
    """M = ceil(min(0.2 S, 3 sqrt(S))), the number of largest weights fitted (Vehtari et al. 2024, sec. 3)."""
    return int(math.ceil(min(0.2 * num_samples, 3.0 * math.sqrt(num_samples))))


def khat_threshold(num_samples: int) -> float:
    """min(1 - 1/log10(S), 0.7): above it, S weights are too few for a reliable estimate (Vehtari et al. 2024)."""
    if num_samples <= 10:
        return -math.inf  # 1 - 1/log10(S) <= 0: no k-hat is small enough with so few samples
    return min(1.0 - 1.0 / math.log10(num_samples), KHAT_LIMIT)


def _khat_one(top: Tensor, num_samples: int) -> float:
    """k-hat of one example from its largest log weights (at least M + 1 of them), as ``psis_diagnostic`` does."""
    m = tail_size(num_samples)
    largest = float(top.max())
    lw = torch.sort(top.double() - largest, descending=False).values
    cutoff = max(math.log(1.0e-15), float(lw[-m - 1]))
    rounding = ROUNDING_ULPS * torch.finfo(top.dtype).eps * max(1.0, abs(largest))
    if -cutoff < max(EQUAL_LOG_WEIGHTS, rounding):
        # The largest weights are equal to rounding (the proposal is the posterior): no tail, weights bounded.
        # Pyro's fit would divide by zero on such a "tail" of rounding errors, or see too few distinct values.
        return -math.inf
    tail = lw[lw > cutoff]
    # Too few samples, or too many ties (a discrete latent has finitely many weights), to fit: distinct values count.
    if torch.unique(tail).numel() < MIN_TAIL:
        return math.nan
    try:
        k, _ = fit_generalized_pareto(tail.exp() - math.exp(cutoff))
    except ZeroDivisionError:  # Pyro's fit on a degenerate tail (near-ties it cannot separate): undefined, not 0
        return math.nan
    return float(k)


def pareto_khat(log_weights: Tensor, num_samples: int | None = None) -> Tensor:
    """k-hat per example (column) of ``log_weights``, shape (S, N) or (S,), along dim 0; shape (N,) or ().

    ``log_weights`` may hold all S log weights of each example, or only their largest (at least M + 1, e.g. from
    ``TopLogWeights``) with ``num_samples`` = S. NaN where the tail has fewer than 10 distinct weights (S < 50, or
    ties), where Pyro's ``psis_diagnostic`` returns inf; -inf where the largest M + 1 weights are equal to
    rounding (``EQUAL_LOG_WEIGHTS``, ``ROUNDING_ULPS``: the proposal is the posterior, the weights are constant).
    """
    s = log_weights.shape[0] if num_samples is None else num_samples
    if log_weights.shape[0] < min(s, tail_size(s) + 1):
        raise ValueError(f"k-hat of {s} samples needs the largest {tail_size(s) + 1} log weights")
    # On the CPU: the fit is a few dozen small operations per example, each synchronising on a GPU (``.item()``).
    columns = log_weights.detach().reshape(log_weights.shape[0], -1).cpu()
    if s < 5:  # fewer than M + 1 = 2 weights
        khat = torch.full((columns.shape[1],), math.nan, dtype=torch.float64)
    else:
        khat = torch.tensor([_khat_one(columns[:, i], s) for i in range(columns.shape[1])], dtype=torch.float64)
    return khat.reshape(log_weights.shape[1:]).to(log_weights.device)


class TopLogWeights:
    """The largest M + 1 log weights of each example, kept while chunks of log weights (K_chunk, N) stream past."""

    def __init__(self, num_samples: int) -> None:
        self.num_samples = num_samples
        self.keep = min(num_samples, tail_size(num_samples) + 1)
        self.top: Tensor | None = None

    def add(self, log_w: Tensor) -> None:
        both = log_w if self.top is None else torch.cat([self.top, log_w])
        self.top = torch.topk(both, min(self.keep, both.shape[0]), dim=0).values

    def khat(self) -> Tensor:
        if self.top is None:
            raise ValueError("no log weights were added")
        return pareto_khat(self.top, self.num_samples)


@dataclass
class KhatSummary:
    """k-hat over the examples: median, max, the fraction above 0.7 and above the sample-size threshold."""

    median: float
    max: float
    fraction_above_0_7: float
    threshold: float
    fraction_above_threshold: float
    num_samples: int
    num_examples: int
    num_undefined: int

    @classmethod
    def of(cls, khat: Tensor, num_samples: int) -> KhatSummary:
        """Summarise per-example k-hat (NaN entries, where the tail was too short, are counted, not averaged)."""
        defined = khat[~torch.isnan(khat)]
        threshold = khat_threshold(num_samples)
        n = max(1, defined.numel())
        return cls(
            median=float(defined.median()) if defined.numel() else math.nan,
            max=float(defined.max()) if defined.numel() else math.nan,
            fraction_above_0_7=float((defined > KHAT_LIMIT).sum()) / n,
            threshold=threshold,
            fraction_above_threshold=float((defined > threshold).sum()) / n,
            num_samples=num_samples,
            num_examples=int(khat.numel()),
            num_undefined=int(khat.numel() - defined.numel()),
        )

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def line(self) -> str:
        """One line for printed output."""
        return (
            f"Pareto k-hat: median {self.median:.2f}, max {self.max:.2f}; {100 * self.fraction_above_threshold:.1f}% "
            f"of examples above {self.threshold:.2f} = min(1 - 1/log10(S), 0.7) at S = {self.num_samples}"
        )

    def warning(self, what: str) -> str | None:
        """A one-line warning when k-hat says ``what`` is unreliable for some examples, else None."""
        if self.num_undefined == self.num_examples:
            return f"warning: k-hat is undefined for {what} (S = {self.num_samples} samples is too few for the fit)"
        if self.fraction_above_threshold == 0:
            return None
        return (
            f"warning: k-hat > {self.threshold:.2f} for {100 * self.fraction_above_threshold:.1f}% of examples: "
            f"{what} is unreliable there (heavy-tailed weights: the proposal misses posterior mass; "
            "Vehtari et al. 2024)"
        )
