"""Held-out evaluation of a trained VAE: log p(x) with error bars, ELBO, AIS, the inference gaps, KL per latent
dimension, active units and the collapse diagnostics, in one ``Evaluation``.

- log p(x) ~= log (1/K) sum_k p(x, z_k) / q(z_k | x), z_k ~ q(z | x) (the IWAE_K bound of Burda et al. 2015,
  which converges to log p(x) as K grows), one value per example, with its delta-method standard error, the
  effective sample size and the Pareto k-hat of the weights (``pyro_vae.importance``, ``pyro_vae.psis``), and the
  estimate at K = 1, 10, 100, ... on the way.
- The ELBO per example is estimated from the same K samples, (1/K) sum_k log w_k, so gap = log p(x) - ELBO
  is >= 0 for every example.
- Optionally AIS (``pyro_vae.ais``) and the approximation and amortisation gaps (``pyro_vae.gaps``) on the first
  examples, and I(x; z) and KL(q(z) || p(z)) (``pyro_vae.collapse``).
- Optionally simulation-based calibration of q(z | x) (``pyro_vae.sbc``; Talts et al. 2018) on data simulated
  from the model.
- Active units (Burda et al. 2015): latent dimension j is active when Var_x(E_q[z_j | x]) > 0.01, counted per
  latent site too (per layer of a hierarchical VAE, ``active_units_per_site``). Where a site's q depends on an
  earlier-sampled site (q(z2 | z1) of a bottom-up guide, q(z1 | z2, x) of a ladder one), E_q[z_l | x] is the
  average of its conditional means over ``MEAN_DRAWS`` runs of the guide (the law of total expectation).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import Independent, kl_divergence

from pyro_vae.ais import AISOptions, AISResult, ais, bdmc, simulate
from pyro_vae.collapse import collapse_diagnostics, collapse_message
from pyro_vae.estimators.detached_q import guide_dependencies
from pyro_vae.gaps import GapOptions, local_optimisation_gaps
from pyro_vae.importance import (
    DEFAULT_SWEEP,
    MAX_ROWS,
    ImportanceEstimate,
    importance_sample,
    importance_sample_stats,
    log_likelihood,
)
from pyro_vae.psis import KhatSummary
from pyro_vae.sbc import DEFAULT_ALPHA, DEFAULT_BINS, DEFAULT_DRAWS, check_settings, simulation_based_calibration

ACTIVE_UNIT_THRESHOLD = 0.01

__all__ = [
    "ACTIVE_UNIT_THRESHOLD",
    "MAX_ROWS",
    "Evaluation",
    "SBCOptions",
    "active_units",
    "active_units_per_site",
    "check_collapse",
    "evaluate",
    "importance_sample_stats",
    "kl_per_dimension",
    "log_likelihood",
    "posterior_means",
    "posterior_means_by_site",
]


def _latent_sites(model: Callable[..., Any], guide: Callable[..., Any], x: Tensor) -> list[tuple[str, Any, Any]]:
    """(name, q, p) for every latent site, from one guide run and the model replayed on it."""
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    return [
        (name, site["fn"], model_trace.nodes[name]["fn"])
        for name, site in guide_trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    ]


def _factorised(d: Any) -> bool:
    return isinstance(d, Independent) and d.reinterpreted_batch_ndims == 1


@torch.no_grad()
def kl_per_dimension(
    model: Callable[..., Any], guide: Callable[..., Any], x: Tensor, num_samples: int = 100
) -> tuple[Tensor | None, float]:
    """(KL_j averaged over the examples, shape (J,), or None; total KL averaged over the examples).

    KL_j = KL(q(z_j | x) || p(z_j)) needs q and p to factorise over dimensions (Independent of univariate
    distributions): analytic where ``kl_divergence`` is registered, otherwise a ``num_samples`` Monte Carlo
    average. For a prior that does not factorise (a mixture, the VampPrior) there is no per-dimension KL;
    the total is then E_q[log q(z|x) - log p(z)] by Monte Carlo.
    """
    per_dim: list[Tensor] = []
    total = 0.0
    factorised = True
    for _, q, p in _latent_sites(model, guide, x):
        if _factorised(q) and _factorised(p):
            try:
                kl = kl_divergence(q.base_dist, p.base_dist)
            except NotImplementedError:
                z = q.base_dist.sample((num_samples,))
                kl = (q.base_dist.log_prob(z) - p.base_dist.log_prob(z)).mean(0)
            kl = kl.reshape(x.shape[0], -1).mean(0)
            per_dim.append(kl)
            total += float(kl.sum())
        else:
            factorised = False
            try:  # analytic where registered (the one-hot latents' sum over variables), else Monte Carlo
                total += float(kl_divergence(q, p).mean())
            except NotImplementedError:
                z = q.sample((num_samples,))  # no gradient is needed here, so discrete q (no rsample) is fine too
                total += float((q.log_prob(z) - p.log_prob(z)).mean())
    return (torch.cat(per_dim) if factorised and per_dim else None), total


#: Guide runs whose conditional means are averaged for E_q[z_l | x] when a site depends on an earlier-sampled one.
MEAN_DRAWS = 16


@torch.no_grad()
def posterior_means_by_site(model: Callable[..., Any], guide: Callable[..., Any], x: Tensor) -> dict[str, Tensor]:
    """E_q[z | x] of every latent site, in the guide's order: site -> (N, its dimension). A site whose q depends on
    earlier-sampled sites gets E[E_q[z_l | parents]], averaged over ``MEAN_DRAWS`` guide runs (so the spread of
    a single draw of the parents is not mistaken for activity: it is divided by ``MEAN_DRAWS``)."""
    with torch.enable_grad():  # the dependencies are read from the autograd graph
        runs = MEAN_DRAWS if any(guide_dependencies(guide, x).values()) else 1
    total: dict[str, Tensor] = {}
    for _ in range(runs):
        for name, q, _ in _latent_sites(model, guide, x):
            total[name] = total.get(name, 0) + q.mean.reshape(x.shape[0], -1)
    return {name: value / runs for name, value in total.items()}


@torch.no_grad()
def posterior_means(model: Callable[..., Any], guide: Callable[..., Any], x: Tensor) -> Tensor:
    """E_q[z | x] for every example, all latent sites concatenated (``posterior_means_by_site``): shape (N, total
    latent dimension)."""
    return torch.cat(list(posterior_means_by_site(model, guide, x).values()), dim=-1)


def active_units(
    model: Callable[..., Any], guide: Callable[..., Any], x: Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD
) -> tuple[int, Tensor]:
    """(number of active units, Var_x(E_q[z_j | x]) per dimension); active means variance > ``threshold``."""
    variances = posterior_means(model, guide, x).var(dim=0, unbiased=False)
    return int((variances > threshold).sum()), variances


def active_units_per_site(
    model: Callable[..., Any], guide: Callable[..., Any], x: Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD
) -> dict[str, dict[str, int]]:
    """Site -> {"active": its active units, "dimensions": its dimension}: per layer of a hierarchical VAE."""
    return _site_counts(posterior_means_by_site(model, guide, x), threshold)


def _site_counts(by_site: dict[str, Tensor], threshold: float) -> dict[str, dict[str, int]]:
    return {
        name: {"active": int((means.var(dim=0, unbiased=False) > threshold).sum()), "dimensions": means.shape[1]}
        for name, means in by_site.items()
    }


#: Examples ``check_collapse`` looks at, at most (the KL and active units settle well before).
COLLAPSE_CHECK_EXAMPLES = 2000


@torch.no_grad()
def check_collapse(
    model: Callable[..., Any], guide: Callable[..., Any], x: Tensor, max_examples: int = COLLAPSE_CHECK_EXAMPLES
) -> str | None:
    """``pyro_vae.collapse.collapse_message`` from the active units and KL per dimension on (the first
    ``max_examples`` of) ``x``: one line when the code shows posterior collapse, else None."""
    x = x[:max_examples]
    if x.shape[0] < 2:
        return None
    kl_dims, kl_total = kl_per_dimension(model, guide, x)
    count, variances = active_units(model, guide, x)
    return collapse_message(count, variances.numel(), kl_total, None if kl_dims is None else kl_dims.tolist())


@dataclass
class Evaluation:
    """Per-example averages in nats over ``num_examples`` held-out examples.

    ``log_likelihood_stderr`` is the Monte Carlo standard error of the average (sqrt(sum_i SE_i^2) / N, for
    comparing models on this test set); ``log_likelihood_std`` the spread of log p(x_i) over the examples.
    ``sweep`` holds the estimate from the first K samples for each K of the sweep; ``ais``, ``gaps``, ``bdmc``
    and ``collapse`` are None unless asked for. ``psis`` summarises the Pareto k-hat of the IS weights per example
    (``pyro_vae.psis.KhatSummary``).
    """

    elbo: float
    log_likelihood: float
    gap: float
    kl_per_dimension: list[float] | None
    kl_total: float
    active_units: int
    posterior_mean_variance: list[float]
    num_samples: int
    num_examples: int
    log_likelihood_stderr: float = math.nan
    log_likelihood_std: float = math.nan
    ess_mean: float = math.nan
    ess_min: float = math.nan
    sweep: list[dict[str, float]] = field(default_factory=list)
    collapse: dict[str, Any] | None = None
    ais: dict[str, Any] | None = None
    gaps: dict[str, Any] | None = None
    bdmc: dict[str, Any] | None = None
    psis: dict[str, Any] | None = None
    sbc: dict[str, Any] | None = None
    #: site -> {"active", "dimensions"}, in the guide's order (``posterior_mean_variance`` follows it too).
    active_units_per_site: dict[str, dict[str, int]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sweep_rows(estimate: ImportanceEstimate) -> list[dict[str, float]]:
    n = estimate.log_likelihood.numel()
    rows = [
        {"num_samples": k, "log_likelihood": float(lp.mean()), "stderr": float(se.pow(2).sum().sqrt() / n)}
        for k, (lp, se) in estimate.sweep.items()
    ]
    mean, stderr = estimate.mean_and_stderr()
    return [*rows, {"num_samples": estimate.num_samples, "log_likelihood": mean, "stderr": stderr}]


def _mean_se(values: Tensor, stderr: Tensor) -> tuple[float, float]:
    return float(values.mean()), float(stderr.pow(2).sum().sqrt() / values.numel())


def ais_summary(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    x: Tensor,
    estimate: ImportanceEstimate,
    options: AISOptions,
    progress: bool = False,
) -> tuple[dict[str, Any], AISResult]:
    """AIS on ``x`` next to the IS estimate of the same examples (the first ``len(x)`` of ``estimate``): the
    summary, and the per-example result."""
    result = ais(model, guide, x, options, progress=progress)
    n = x.shape[0]
    ais_mean, ais_se = _mean_se(result.log_likelihood, result.stderr)
    is_mean, is_se = _mean_se(estimate.log_likelihood[:n], estimate.stderr[:n])
    summary = {
        "num_examples": n,
        "log_likelihood": ais_mean,
        "stderr": ais_se,
        "is_log_likelihood": is_mean,
        "is_stderr": is_se,
        "ais_minus_is": ais_mean - is_mean,
        "acceptance": float(result.acceptance.mean()),
        "options": options.to_dict(),
        "per_example": [float(v) for v in result.log_likelihood],
        "per_example_stderr": [float(v) for v in result.stderr],
    }
    return summary, result


#: The sections of ``evaluate`` in the order they run; each is kept as soon as it is finished (``on_section``).
SECTIONS = ("importance", "collapse", "ais", "gaps", "bdmc", "sbc")

#: Per-example values of the importance-sampling section that a resumed evaluation needs (AIS and the gaps
#: compare with them), kept in a partial record under this key.
PER_EXAMPLE = "per_example"


def _importance_section(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    x: Tensor,
    num_samples: int,
    max_rows: int,
    sweep: Sequence[int],
    progress: bool,
) -> tuple[Evaluation, ImportanceEstimate]:
    estimate = importance_sample(model, guide, x, num_samples, max_rows, sweep=sweep, progress=progress)
    kl_dims, kl_total = kl_per_dimension(model, guide, x)
    by_site = posterior_means_by_site(model, guide, x)
    variances = torch.cat(list(by_site.values()), dim=-1).var(dim=0, unbiased=False)
    count = int((variances > ACTIVE_UNIT_THRESHOLD).sum())
    per_site = _site_counts(by_site, ACTIVE_UNIT_THRESHOLD)
    mean, stderr = estimate.mean_and_stderr()
    result = Evaluation(
        elbo=float(estimate.elbo.mean()),
        log_likelihood=mean,
        gap=float((estimate.log_likelihood - estimate.elbo).mean()),
        kl_per_dimension=None if kl_dims is None else [float(v) for v in kl_dims],
        kl_total=kl_total,
        active_units=count,
        posterior_mean_variance=[float(v) for v in variances],
        num_samples=num_samples,
        num_examples=int(x.shape[0]),
        log_likelihood_stderr=stderr,
        log_likelihood_std=float(estimate.log_likelihood.std()) if x.shape[0] > 1 else math.nan,
        ess_mean=float(estimate.ess.mean()),
        ess_min=float(estimate.ess.min()),
        sweep=_sweep_rows(estimate),
        psis=None if estimate.khat is None else KhatSummary.of(estimate.khat, num_samples).to_dict(),
        active_units_per_site=per_site,
    )
    return result, estimate


def per_example_record(estimate: ImportanceEstimate) -> dict[str, list[float]]:
    """The per-example IS values a resumed evaluation needs, as plain lists (for a JSON record)."""
    record = {
        "log_likelihood": estimate.log_likelihood.tolist(),
        "stderr": estimate.stderr.tolist(),
        "ess": estimate.ess.tolist(),
        "elbo": estimate.elbo.tolist(),
    }
    if estimate.khat is not None:
        record["khat"] = estimate.khat.tolist()
    return record


def _resumed(record: dict[str, Any], x: Tensor) -> tuple[Evaluation, ImportanceEstimate]:
    """The ``Evaluation`` and per-example estimate of a partial record's finished sections."""
    names = {f.name for f in dataclasses.fields(Evaluation)}
    result = Evaluation(**{k: v for k, v in record.items() if k in names})
    per = {k: torch.tensor(v, dtype=x.dtype, device=x.device) for k, v in record[PER_EXAMPLE].items()}
    estimate = ImportanceEstimate(
        per["log_likelihood"], per["stderr"], per["ess"], per["elbo"], result.num_samples, khat=per.get("khat")
    )
    return result, estimate


def evaluate(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    x: Tensor,
    num_samples: int = 5000,
    max_rows: int = MAX_ROWS,
    sweep: Sequence[int] = DEFAULT_SWEEP,
    ais_options: AISOptions | None = None,
    ais_examples: int = 100,
    gap_options: GapOptions | None = None,
    gap_examples: int = 100,
    collapse: bool = True,
    bdmc_examples: int = 0,
    progress: bool = False,
    on_section: Callable[[Evaluation, list[str], ImportanceEstimate], None] | None = None,
    resume: dict[str, Any] | None = None,
    sbc: SBCOptions | None = None,
) -> Evaluation:
    """ELBO and IS log-likelihood per example (with standard errors, ESS and the K-sweep), KL per latent dimension,
    active units and collapse diagnostics; AIS (given ``ais_options``) and the inference gaps (given
    ``gap_options``) on the first ``ais_examples`` / ``gap_examples`` examples (the gaps take log p(x) from AIS
    when it covers their examples, else from IS), and BDMC bounds (with
    ``ais_options``) on ``bdmc_examples`` data sets simulated from the model, and simulation-based calibration
    of the guide (given ``sbc``, ``pyro_vae.sbc``) on data simulated from the model. ``progress`` shows bars with the
    time left on a terminal.

    Sections (``SECTIONS``) run one after the other; after each, ``on_section(result so far, finished section
    names, the IS estimate)`` is called (``pyro-vae evaluate`` writes a partial record there, so that an
    interruption keeps what was finished). ``resume``: such a record (``Evaluation.to_dict()`` with
    ``sections_done`` and the ``PER_EXAMPLE`` values of ``per_example_record``) of the same evaluation; its
    finished sections are taken as they are and only the others run (on the random stream as it is then, so
    their draws differ from an uninterrupted run's)."""
    done: list[str] = list(resume.get("sections_done", [])) if resume else []

    def finished(name: str) -> None:
        done.append(name)
        if on_section is not None:
            on_section(result, list(done), estimate)

    if "importance" in done:
        result, estimate = _resumed(resume or {}, x)
    else:
        result, estimate = _importance_section(model, guide, x, num_samples, max_rows, sweep, progress)
        finished("importance")
    if collapse and x.shape[0] > 1 and "collapse" not in done:
        result.collapse = collapse_diagnostics(model, guide, x).to_dict()
        finished("collapse")
    log_px, log_px_se, source = estimate.log_likelihood, estimate.stderr, f"IS, K = {num_samples}"
    if ais_options is not None and ais_examples > 0 and gap_examples <= ais_examples:
        log_px, log_px_se, source = _ais_log_px(result, estimate, log_px_se, source)
    if ais_options is not None and ais_examples > 0 and "ais" not in done:
        result.ais, ais_result = ais_summary(model, guide, x[:ais_examples], estimate, ais_options, progress)
        if gap_examples <= ais_examples:  # AIS is the better log p(x) for the gaps (Cremer et al. use it too)
            log_px, log_px_se, source = ais_result.log_likelihood, ais_result.stderr, "AIS"
        finished("ais")
    if gap_options is not None and "gaps" not in done:
        n = min(gap_examples, x.shape[0])
        gaps = local_optimisation_gaps(model, guide, x[:n], gap_options, log_px[:n], progress, log_px_se[:n])
        result.gaps = {**gaps.summary(), "log_likelihood_source": source, **gap_options.to_dict()}
        finished("gaps")
    _simulation_sections(result, model, guide, x, ais_options, bdmc_examples, sbc, progress, done, finished)
    return result


def _simulation_sections(
    result: Evaluation,
    model: Callable[..., Any],
    guide: Callable[..., Any],
    x: Tensor,
    ais_options: AISOptions | None,
    bdmc_examples: int,
    sbc: SBCOptions | None,
    progress: bool,
    done: list[str],
    finished: Callable[[str], None],
) -> None:
    """``evaluate``'s sections on data simulated from the model: BDMC and SBC (those asked for and not done)."""
    if bdmc_examples and ais_options is not None and "bdmc" not in done:
        result.bdmc = bdmc_summary(model, guide, x[:bdmc_examples], ais_options, progress)
        finished("bdmc")
    if sbc is not None and "sbc" not in done:
        result.sbc = sbc_summary(model, guide, x, sbc)
        finished("sbc")


@dataclass
class SBCOptions:
    """Settings of simulation-based calibration (``pyro_vae.sbc``): N simulations, L draws of q(z | x*) each,
    B rank bins, familywise level ``alpha`` (Bonferroni over the latent coordinates)."""

    num_simulations: int
    num_posterior_draws: int = DEFAULT_DRAWS
    num_bins: int = DEFAULT_BINS
    alpha: float = DEFAULT_ALPHA

    def __post_init__(self) -> None:
        check_settings(self.num_simulations, self.num_posterior_draws, self.num_bins, self.alpha)


def sbc_summary(model: Callable[..., Any], guide: Callable[..., Any], x: Tensor, options: SBCOptions) -> dict[str, Any]:
    """SBC of the guide on N data sets simulated from the model, each shaped like a row of ``x`` (cycled)."""
    x_like = x[torch.arange(options.num_simulations) % x.shape[0]]
    return simulation_based_calibration(model, guide, x_like=x_like, **asdict(options)).summary()


def _ais_log_px(
    result: Evaluation, estimate: ImportanceEstimate, log_px_se: Tensor, source: str
) -> tuple[Tensor, Tensor, str]:
    """log p(x) for the gaps from a finished AIS section of a resumed evaluation (its per-example values and
    standard errors), else the IS values as they are."""
    if result.ais is None or "per_example_stderr" not in result.ais:
        return estimate.log_likelihood, log_px_se, source
    values = torch.tensor(result.ais["per_example"], dtype=log_px_se.dtype, device=log_px_se.device)
    errors = torch.tensor(result.ais["per_example_stderr"], dtype=log_px_se.dtype, device=log_px_se.device)
    return values, errors, "AIS"


def bdmc_summary(
    model: Callable[..., Any], guide: Callable[..., Any], x_like: Tensor, options: AISOptions, progress: bool = False
) -> dict[str, Any]:
    """BDMC's lower and upper bounds, averaged over data simulated from the model (one per row of ``x_like``)."""
    x_sim, latents = simulate(model, x_like)
    bounds = bdmc(model, guide, x_sim, latents, options, progress=progress)
    lower, lower_se = _mean_se(bounds.lower, bounds.lower_stderr)
    upper, upper_se = _mean_se(bounds.upper, bounds.upper_stderr)
    return {
        "num_examples": int(x_sim.shape[0]),
        "lower": lower,
        "lower_stderr": lower_se,
        "upper": upper,
        "upper_stderr": upper_se,
        "upper_minus_lower": upper - lower,
        "options": options.to_dict(),
    }
