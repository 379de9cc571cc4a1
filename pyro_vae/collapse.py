"""Posterior-collapse diagnostics beyond the KL per dimension: "ELBO surgery" (Hoffman & Johnson 2016).

Over the N evaluation examples, q(x, z) = (1/N) sum_i delta(x - x_i) q(z | x_i) has the aggregate posterior
q(z) = (1/N) sum_i q(z | x_i) as its z-marginal, and the average KL term of the ELBO splits exactly as

    (1/N) sum_i KL(q(z | x_i) || p(z)) = I_q(x; z) + KL(q(z) || p(z)),

the mutual information between the example and its code under q (at most log N) plus the marginal KL, how far
the aggregate posterior is from the prior. A KL that is all marginal KL and no information means collapse (the
codes carry nothing about x); a large marginal KL means the prior is a poor model of the codes.

Estimates: I = (1/N) sum_i E_{z ~ q(z|x_i)} [log q(z | x_i) - log q(z)], by Monte Carlo over ``num_samples``
draws per example, with log q(z) = logsumexp_j log q(z | x_j) - log N over all N examples (N^2 terms, in
chunks). The marginal KL is the average KL minus I when the KL is analytic (``kl_divergence`` registered for
every site, so the identity holds exactly and the marginal KL's error is I's); otherwise both come from the
same draws.

Standard errors are Monte Carlo errors over the draws for these N examples, from the spread of each example's
``num_samples`` draws: SE^2 = (1/N^2) sum_i Var_i / M, with Var_i the sample variance (denominator M - 1) of the
M terms of example i (draws for different examples are independent, and log q(z) is computed exactly from all N
posteriors, so the terms are independent too); it needs M >= 2 (NaN at M = 1). The spread of the per-example
terms over the examples (how much x_i contributes, not an error of the estimate) is reported apart, as a
standard deviation over the examples.

References:
    [1] M. D. Hoffman, M. J. Johnson. ELBO surgery: yet another way to carve up the variational evidence lower
        bound. NIPS 2016 Workshop on Advances in Approximate Bayesian Inference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pyro.poutine as poutine
import torch
from torch import Tensor
from torch.distributions import kl_divergence

from pyro_vae.checks import check_number
from pyro_vae.densities import Densities, Values
from pyro_vae.estimators.detached_q import guide_dependencies, latent_sites

#: Elements of log q(z_b | x_j) computed at once (chunks of the N^2 pairs).
MAX_ELEMENTS = 2**22


@dataclass
class CollapseDiagnostics:
    """Averages over the ``num_examples`` examples, in nats.

    Attributes:
        kl: the average KL(q(z|x_i) || p(z)); ``kl_analytic`` says whether it is exact or Monte Carlo.
        mutual_information: I_q(x; z), with its Monte Carlo standard error; at most log N.
        marginal_kl: KL(q(z) || p(z)), with its Monte Carlo standard error.
        mutual_information_example_std, marginal_kl_example_std: the standard deviation over the examples of
            the per-example terms (each averaged over its draws): the between-example spread, not an error.
    """

    kl: float
    kl_analytic: bool
    mutual_information: float
    mutual_information_stderr: float
    marginal_kl: float
    marginal_kl_stderr: float
    num_examples: int
    num_samples: int
    mutual_information_example_std: float = math.nan
    marginal_kl_example_std: float = math.nan

    @property
    def max_mutual_information(self) -> float:
        """log N, the largest I_q(x; z) can be over N examples."""
        return math.log(self.num_examples)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "max_mutual_information": self.max_mutual_information}


def _analytic_kl(guide: Callable[..., Any], model: Callable[..., Any], x: Tensor) -> Tensor | None:
    """KL(q(z|x_i) || p(z)) per example, summed over sites, or None where a site has no registered KL or
    depends on an earlier site (its KL given the sampled earlier value is then one draw, not the KL)."""
    if any(guide_dependencies(guide, x).values()):
        return None
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    total: Tensor | float = 0.0
    for name, site in latent_sites(guide_trace).items():
        try:
            kl = kl_divergence(site["fn"], model_trace.nodes[name]["fn"])
        except NotImplementedError:
            return None
        total = total + kl.reshape(x.shape[0], -1).sum(-1)
    return total if torch.is_tensor(total) else None


@torch.no_grad()
def aggregate_log_density(densities: Densities, values: Values, rerun: bool | None = None) -> Tensor:
    """log q(z) = log (1/N) sum_j q(z | x_j) at every point of ``values`` ({site: (M, N, ...)}): shape (M, N).

    A mean-field guide's N distributions are evaluated at the points by broadcasting; a guide whose sites depend
    on earlier ones (or ``rerun=True``) is run again, conditioned on each point repeated for every x_j.
    """
    x = densities.x
    n = x.shape[0]
    trace = poutine.trace(densities.guide).get_trace(x)
    sites = latent_sites(trace)
    if rerun is None:
        rerun = any(guide_dependencies(densities.guide, x).values()) or any(
            s["fn"].batch_shape != (n,) for s in sites.values()
        )
    m = next(iter(values.values())).shape[0]
    points = {name: v.reshape(m * n, *v.shape[2:]) for name, v in values.items()}
    width = sum(int(v[0].numel()) for v in points.values())
    chunk = max(1, MAX_ELEMENTS // (n * max(1, width)))
    out = []
    for start in range(0, m * n, chunk):
        part = {name: v[start : start + chunk] for name, v in points.items()}
        if rerun:
            tiled = {name: v.unsqueeze(1).expand(v.shape[0], n, *v.shape[1:]) for name, v in part.items()}
            log_q = densities.log_guide(tiled)
        else:
            log_q = sum(site["fn"].log_prob(part[name].unsqueeze(1)) for name, site in sites.items())
        out.append(torch.logsumexp(log_q, dim=1) - math.log(n))  # type: ignore[arg-type]
    return torch.cat(out).reshape(m, n)


def monte_carlo_stderr(terms: Tensor) -> float:
    """SE of the mean of ``terms`` (M draws, N examples) over the draws only: sqrt(sum_i Var_i / M) / N, Var_i
    the sample variance of column i; NaN for M < 2."""
    m, n = terms.shape
    if m < 2:
        return math.nan
    return float(terms.var(0).sum().div(m).sqrt() / n)


def _example_std(per_example: Tensor) -> float:
    return float(per_example.std()) if per_example.numel() > 1 else math.nan


@torch.no_grad()
def collapse_diagnostics(
    model: Callable[..., Any], guide: Callable[..., Any], x: Tensor, num_samples: int = 2
) -> CollapseDiagnostics:
    """I_q(x; z) and KL(q(z) || p(z)) over the examples ``x``, and the average KL they add up to (see the module
    doc). ``num_samples`` draws of z per example (at least 2 for a standard error)."""
    check_number(num_samples, "num_samples", integer=True, low=1)
    if x.shape[0] < 2:
        raise ValueError("the aggregate posterior needs at least 2 examples")
    densities = Densities.of(model, guide, x)
    values, log_q = densities.sample_guide(num_samples)
    log_prior, _ = densities.log_joint(values)
    log_q_aggregate = aggregate_log_density(densities, values)
    n = int(x.shape[0])
    information = (log_q - log_q_aggregate).reshape(num_samples, n)
    mi, mi_se = float(information.mean()), monte_carlo_stderr(information)
    analytic = _analytic_kl(guide, model, x)
    if analytic is not None:
        # The KL is exact, so the marginal KL's Monte Carlo error is I's.
        kl, marginal, marginal_se = float(analytic.mean()), float(analytic.mean()) - mi, mi_se
        marginal_per_example = analytic.reshape(n) - information.mean(0)
    else:
        marginal_terms = (log_q_aggregate - log_prior).reshape(num_samples, n)
        kl = float((log_q - log_prior).mean())
        marginal, marginal_se = float(marginal_terms.mean()), monte_carlo_stderr(marginal_terms)
        marginal_per_example = marginal_terms.mean(0)
    return CollapseDiagnostics(
        kl=kl,
        kl_analytic=analytic is not None,
        mutual_information=mi,
        mutual_information_stderr=mi_se,
        marginal_kl=marginal,
        marginal_kl_stderr=marginal_se,
        num_examples=n,
        num_samples=num_samples,
        mutual_information_example_std=_example_std(information.mean(0)),
        marginal_kl_example_std=_example_std(marginal_per_example),
    )


#: KL(q(z_j|x) || p(z_j)) averaged over examples below which a latent dimension carries nothing (nats).
COLLAPSED_KL = 0.01

#: What to try against posterior collapse.
COLLAPSE_REMEDIES = (
    "try KL warm-up (--kl-warmup EPOCHS or --kl-schedule cyclical), free bits (--free-bits NATS, a floor on each "
    "dimension's KL; Kingma et al. 2016) or a smaller decoder"
)


def collapse_message(
    active_units: int, num_dimensions: int, kl_total: float, kl_per_dimension: Sequence[float] | None = None
) -> str | None:
    """One line when the latent code shows posterior collapse, else None.

    Collapse: no active unit (Var_x E_q[z_j|x] above the threshold of ``pyro_vae.evaluation.active_units``) or a
    total KL below ``COLLAPSED_KL`` per dimension: q(z|x) is the prior for every x and the code carries no
    information about x. Partial collapse: some dimensions active and others with KL_j < ``COLLAPSED_KL``, said
    as a count (common and often harmless, so without remedies).
    """
    if num_dimensions < 1:
        return None
    collapsed = None if kl_per_dimension is None else sum(kl < COLLAPSED_KL for kl in kl_per_dimension)
    if active_units == 0 or kl_total < COLLAPSED_KL * num_dimensions:
        return (
            f"posterior collapse: {active_units} of {num_dimensions} latent dimensions active, KL {kl_total:.3f} "
            f"nats per example: the code carries (almost) no information about x; {COLLAPSE_REMEDIES}"
        )
    if collapsed:
        line = (
            f"partial collapse: {collapsed} of {num_dimensions} latent dimensions have KL < {COLLAPSED_KL} nats "
            f"(unused by the decoder); {active_units} active"
        )
        if collapsed + active_units > num_dimensions:
            # Two measures with their own thresholds: a dimension whose posterior mean moves a little with x can be
            # active by Var_x E_q[z_j|x] and still carry less KL than COLLAPSED_KL. Said, so the counts don't read
            # as a contradiction.
            both = collapsed + active_units - num_dimensions
            which = (
                "1 dimension near both thresholds counts"
                if both == 1
                else f"{both} dimensions near both thresholds count"
            )
            line += f" by Var_x E_q[z_j|x] (Burda et al.'s measure: {which} in both)"
        return line
    return None
