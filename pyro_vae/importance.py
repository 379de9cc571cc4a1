"""Importance-sampled log p(x) with error bars: per-example estimates, standard errors, effective sample sizes and
the estimate at growing K, from one pass over the samples.

With w_k = p(x, z_k) / q(z_k | x), z_k ~ q(z | x) (Burda et al. 2015):

- log p(x) ~= log (1/K) sum_k w_k, a stochastic lower bound that converges to log p(x) as K grows;
- its standard error by the delta method, SE = std(w) / (sqrt(K) mean(w)), which in normalised weights
  w~_k = w_k / sum_j w_j reads SE^2 = (K sum_k w~_k^2 - 1) / (K - 1);
- the effective sample size ESS = 1 / sum_k w~_k^2 (Kong 1992), between 1 and K; when ESS is a small fraction
  of K the weights are heavy-tailed and the standard error itself is unreliable (Owen 2013, ch. 9);
- the ELBO from the same samples, (1/K) sum_k log w_k, so log p(x) - ELBO >= 0 for every example;
- the Pareto k-hat of the K weights (``pyro_vae.psis``; Vehtari et al. 2024), which says when the estimate and its
  standard error cannot be trusted (k-hat above min(1 - 1/log10(K), 0.7)), from the largest weights kept on the way.

Only three running sums per example are kept (logsumexp of log w and of 2 log w, and the sum of log w), plus the
ceil(min(0.2 K, 3 sqrt(K))) + 1 largest log weights for k-hat, so K can be large; at most ``max_rows`` (particle,
example) pairs go through the model at once: blocks of ``min(N, max_rows // min(K, MIN_CHUNK))`` examples, each
with chunks of ``min(K, max_rows // block)`` particles.

References:
    [1] Y. Burda, R. Grosse, R. Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016.
    [2] A. Kong. A note on importance sampling using standardized weights. Tech. report 348, U. Chicago, 1992.
    [3] A. B. Owen. Monte Carlo theory, methods and examples. 2013.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.util import is_validation_enabled
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from pyro_vae.checks import check_number
from pyro_vae.errors import UserError
from pyro_vae.estimators.log_weights import guess_plate_nesting, per_example_log_weights
from pyro_vae.progress import progress_bar
from pyro_vae.psis import TopLogWeights

#: Default bound on (particles x examples) rows pushed through the decoder at once.
MAX_ROWS = 2**15

#: Particles per model call that a block of examples leaves room for, at least (when K allows): the guide's
#: encoder runs once per call, so one block of all 10,000 MNIST test images would leave 3 particles per call and
#: encode the images once for every 3 decodings (0.83x a hand-written sampler's throughput at K = 5000, which
#: encodes once per block; benchmarks/eval_speed.py, docs/performance.md).
MIN_CHUNK = 128

#: The K of the convergence sweep that ``evaluate`` reports (those up to its K).
DEFAULT_SWEEP = (1, 10, 100, 1000, 5000)


def delta_method_stderr(log_sum: Tensor, log_sum_sq: Tensor, k: int) -> Tensor:
    """SE of log (1/K) sum_k w_k from logsumexp(log w) and logsumexp(2 log w): sqrt((K sum w~^2 - 1) / (K - 1)).

    NaN for K = 1 (one sample says nothing about its spread).
    """
    if k < 2:
        return torch.full_like(log_sum, math.nan)
    sum_sq_normalised = torch.exp(log_sum_sq - 2 * log_sum)
    return ((k * sum_sq_normalised - 1).clamp(min=0) / (k - 1)).sqrt()


def effective_sample_size(log_sum: Tensor, log_sum_sq: Tensor) -> Tensor:
    """ESS = (sum w)^2 / sum w^2 = 1 / sum w~^2."""
    return torch.exp(2 * log_sum - log_sum_sq)


@dataclass
class ImportanceEstimate:
    """Per-example results of importance sampling, each a tensor of shape (N,), in nats.

    Attributes:
        log_likelihood: log (1/K) sum_k w_k.
        stderr: its delta-method standard error.
        ess: the effective sample size of the K weights.
        elbo: (1/K) sum_k log w_k from the same samples.
        num_samples: K.
        sweep: K' -> (log_likelihood, stderr) from the first K' of the samples, for each K' < K asked for
            (nested, so successive values are correlated, as in a running estimate).
        khat: the Pareto k-hat of the K weights (``pyro_vae.psis.pareto_khat``), or None where not computed.
    """

    log_likelihood: Tensor
    stderr: Tensor
    ess: Tensor
    elbo: Tensor
    num_samples: int
    sweep: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    khat: Tensor | None = None

    def mean_and_stderr(self) -> tuple[float, float]:
        """The average over examples and its Monte Carlo standard error, sqrt(sum_i SE_i^2) / N."""
        n = self.log_likelihood.numel()
        return float(self.log_likelihood.mean()), float(self.stderr.pow(2).sum().sqrt() / n)


def _chunks(num_samples: int, chunk: int, marks: Sequence[int]) -> list[int]:
    """Particle counts per model call: at most ``chunk`` each, with a boundary at every K in ``marks``."""
    sizes, done = [], 0
    for stop in [*sorted(m for m in set(marks) if 0 < m < num_samples), num_samples]:
        while done < stop:
            sizes.append(min(chunk, stop - done))
            done += sizes[-1]
    return sizes


def check_weighable(model: Callable[..., Any], guide: Callable[..., Any], x: Tensor) -> None:
    """One-line ``UserError`` for a latent site of the model that the guide does not sample (one marked
    ``infer={"enumerate": ...}`` for ``TraceEnum_ELBO`` to sum out, as the model's y of Pyro's ss_vae_M2 when the
    guide leaves it out): the replayed model would draw it from its prior and the weight would count p(y) without
    q(y|x), a wrong log p(x). Discrete sites that the guide samples, enumerated or not, are weighed like any other:
    z ~ q, w = p(x, z) / q(z|x) is an unbiased estimate of p(x) whatever z's space (Burda et al. 2015)."""
    # On a forked random stream: checking must not change the draws of the estimate that follows.
    devices = [x.device] if x.device.type == "cuda" else []
    with poutine.block(), torch.no_grad(), torch.random.fork_rng(devices=devices):
        guide_trace = poutine.trace(guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    for name, site in model_trace.nodes.items():
        latent = site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
        if latent and name not in guide_trace.nodes:
            how = (
                f"marked infer={{'enumerate': {site['infer']['enumerate']!r}}} to be summed out by TraceEnum_ELBO"
                if site["infer"].get("enumerate")
                else "not in the guide"
            )
            raise UserError(
                f"importance sampling of log p(x) needs the guide to sample every latent site, but model site {name!r} "
                f"is {how}, which it does not do: sample {name!r} in the guide (q({name}|x)) to evaluate this model"
            )


@torch.no_grad()
def importance_sample(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    x: Tensor,
    num_samples: int = 5000,
    max_rows: int = MAX_ROWS,
    sweep: Sequence[int] = (),
    progress: bool = False,
) -> ImportanceEstimate:
    """Importance sampling of log p(x_i) for every row of ``x`` with the guide as proposal; see the module doc.

    ``sweep`` lists smaller K whose estimates (from the first K samples) are recorded on the way; ``progress``
    shows a bar with the time left on a terminal.
    """
    check_number(num_samples, "num_samples", integer=True, low=1)
    n = x.shape[0]
    if n == 0:
        raise ValueError("no examples to evaluate")
    block = min(n, max(1, max_rows // min(num_samples, MIN_CHUNK)))
    chunk = max(1, min(num_samples, max_rows // block))
    sizes = _chunks(num_samples, chunk, sweep)
    check_weighable(model, guide, x[:block])
    nesting = guess_plate_nesting(model, guide, (x[:block],), {})
    validate = is_validation_enabled()
    parts: dict[str, list[Tensor]] = {"lse": [], "lse2": [], "total": [], "khat": []}
    marks: dict[int, list[tuple[Tensor, Tensor]]] = {}
    with progress_bar(n * num_samples, f"log p(x), K={num_samples}", progress, unit="sample") as bar:
        for start in range(0, n, block):
            xb = x[start : start + block]
            lse = torch.full((xb.shape[0],), -math.inf, dtype=x.dtype, device=x.device)
            lse2, total, done = lse.clone(), torch.zeros_like(lse), 0
            top = TopLogWeights(num_samples)
            for k in sizes:
                # Validation (as the caller set it) on the first chunk only: the later chunks run the same model
                # on the same images, and checking the support of every expanded (K, N, D) observation cost ~7%
                # of the evaluation (benchmarks/eval_speed.py, docs/performance.md).
                with pyro.validation_enabled(validate and start == 0 and done == 0):
                    log_w = per_example_log_weights(model, guide, xb, num_particles=k, plate_nesting=nesting)
                lse = torch.logaddexp(lse, torch.logsumexp(log_w, 0))
                lse2 = torch.logaddexp(lse2, torch.logsumexp(2 * log_w, 0))
                total += log_w.sum(0)
                top.add(log_w)
                done += k
                bar.update(k * xb.shape[0])
                if done in sweep and done < num_samples:
                    marks.setdefault(done, []).append((lse - math.log(done), delta_method_stderr(lse, lse2, done)))
            parts["lse"].append(lse)
            parts["lse2"].append(lse2)
            parts["total"].append(total)
            parts["khat"].append(top.khat().to(dtype=x.dtype, device=x.device))
    lse, lse2 = torch.cat(parts["lse"]), torch.cat(parts["lse2"])
    return ImportanceEstimate(
        log_likelihood=lse - math.log(num_samples),
        stderr=delta_method_stderr(lse, lse2, num_samples),
        ess=effective_sample_size(lse, lse2),
        elbo=torch.cat(parts["total"]) / num_samples,
        num_samples=num_samples,
        sweep={k: (torch.cat([m[0] for m in v]), torch.cat([m[1] for m in v])) for k, v in sorted(marks.items())},
        khat=torch.cat(parts["khat"]),
    )


def importance_sample_stats(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    x: Tensor,
    num_samples: int = 5000,
    max_rows: int = MAX_ROWS,
) -> tuple[Tensor, Tensor]:
    """(ELBO_i, log p(x_i)) per example from the same ``num_samples`` importance samples of q(z | x_i)."""
    result = importance_sample(model, guide, x, num_samples, max_rows)
    return result.elbo, result.log_likelihood


def log_likelihood(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    x: Tensor,
    num_samples: int = 5000,
    max_rows: int = MAX_ROWS,
    return_stderr: bool = False,
    progress: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Importance-sampled log p(x_i) for each row of x, with the guide as proposal (Burda et al. 2015).

    With ``return_stderr`` also the per-example delta-method standard errors: ``(log_px, stderr)``. Chunked
    over particles and examples so memory stays bounded for large ``num_samples``.
    """
    result = importance_sample(model, guide, x, num_samples, max_rows, progress=progress)
    return (result.log_likelihood, result.stderr) if return_stderr else result.log_likelihood
