"""Annealed importance sampling (AIS) of log p(x) with HMC transitions, and bidirectional Monte Carlo (BDMC).

AIS (Neal 2001) moves S chains per example through intermediate densities f_t, t = 0..T, from a normalised
f_0 to the unnormalised posterior f_T(z) = p(x, z):

- from the prior: f_t(z) = p(z) p(x | z)^beta_t (Wu et al. 2017);
- from the guide: f_t(z) = q(z | x)^(1 - beta_t) p(x, z)^beta_t;

with 0 = beta_0 < ... < beta_T = 1. Each chain's log weight accumulates (beta_t - beta_{t-1}) log(f_T / f_0) at
its current state, then takes an HMC step that leaves f_t invariant. E[exp(log W)] = p(x), so
log (1/S) sum_s exp(log W_s) is a stochastic lower bound on log p(x) whose gap closes as T grows.

BDMC (Grosse, Ghahramani & Adams 2015) runs the same chain backwards, from an exact posterior sample to f_0. On
data simulated from the model, (x, z) ~ p(x, z), the latents that generated x are such a sample; the reverse
weights then estimate 1 / p(x), which gives a stochastic upper bound. The true log p(x) of the simulated data is
bracketed, and the distance between the bounds bounds the error of forward AIS on data like it.

HMC runs in the unconstrained space of each latent site (``biject_to`` of its support, with the log-Jacobian),
with an identity mass matrix, ``leapfrog_steps`` leapfrog steps and one step size per example, adapted after
every transition towards ``target_accept`` (x1.02 above it, x0.98 below, as in Wu et al.'s code). The
adaptation uses the chains' past, so the estimate is exact only in the limit of a fixed step size; with slow
adaptation the effect is far below the Monte Carlo error (the tests bound it against exact values).

References:
    - [1] R. M. Neal. Annealed importance sampling. Statistics and Computing 11, 2001.
    - [2] Y. Wu, Y. Burda, R. Salakhutdinov, R. Grosse. On the Quantitative Analysis of Decoder-Based Generative
      Models. ICLR 2017.
    - [3] R. B. Grosse, Z. Ghahramani, R. P. Adams. Sandwiching the marginal likelihood using bidirectional Monte
      Carlo. arXiv:1511.02543, 2015.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import pyro.poutine as poutine
import torch
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor

from pyro_vae.checks import check_number
from pyro_vae.densities import Densities, Values
from pyro_vae.estimators.detached_q import frozen_parameters
from pyro_vae.importance import delta_method_stderr
from pyro_vae.progress import progress_bar

SCHEDULES = ("sigmoid", "linear", "geometric")
STARTS = ("prior", "guide")


@dataclass
class AISOptions:
    """Settings of annealed importance sampling.

    Fields:
        num_steps: T, the number of intermediate distributions (more: a tighter bound, linear cost).
        num_chains: S, independent chains per example (their weights are averaged).
        leapfrog_steps: leapfrog steps per HMC transition.
        step_size: the initial HMC step size, adapted per example during the run.
        target_accept: the HMC acceptance rate the step size is adapted towards.
        schedule: beta_t against t: sigmoid (dense near both ends; Grosse et al. 2015), linear or geometric.
        start: the initial distribution: prior (p(z)) or guide (q(z|x)).
    """

    num_steps: int = 500
    num_chains: int = 16
    leapfrog_steps: int = 5
    step_size: float = 0.05
    target_accept: float = 0.65
    schedule: Literal["sigmoid", "linear", "geometric"] = "sigmoid"
    start: Literal["prior", "guide"] = "prior"

    def __post_init__(self) -> None:
        for name in ("num_steps", "num_chains", "leapfrog_steps"):
            check_number(getattr(self, name), f"AIS {name}", integer=True, low=1)
        check_number(self.step_size, "AIS step_size", positive=True)
        check_number(self.target_accept, "AIS target_accept", low=0, high=1, bounds="()")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"AIS schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.start not in STARTS:
            raise ValueError(f"AIS start must be one of {', '.join(STARTS)}, got {self.start!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def annealing_schedule(num_steps: int, kind: str = "sigmoid", sharpness: float = 4.0) -> Tensor:
    """beta_0 = 0 < beta_1 < ... < beta_T = 1 (float64, T + 1 values).

    sigmoid: sigma(sharpness (2t/T - 1)) rescaled to [0, 1]; geometric: 10^(-4 (1 - t/T)) for t >= 1.
    """
    t = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    if kind == "linear":
        return t
    if kind == "geometric":
        betas = 10.0 ** (-4.0 * (1.0 - t))
        betas[0] = 0.0
        return betas
    if kind == "sigmoid":
        s = torch.sigmoid(sharpness * (2 * t - 1))
        return (s - s[0]) / (s[-1] - s[0])
    raise ValueError(f"unknown schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")


@dataclass
class AISResult:
    """Per-example results (tensors of shape (N,) unless said otherwise), in nats.

    Attributes:
        log_likelihood: log (1/S) sum_s W_s (forward: a stochastic lower bound on log p(x); reverse: minus a
            stochastic upper bound).
        stderr: its delta-method standard error over the S chains.
        log_weights: log W per chain, (S, N).
        acceptance: the mean HMC acceptance rate over steps and chains.
        step_size: the adapted step size at the end.
    """

    log_likelihood: Tensor
    stderr: Tensor
    log_weights: Tensor
    acceptance: Tensor
    step_size: Tensor


class _Target:
    """log f_0 and log(f_T / f_0) in the unconstrained space, with gradients, for S chains of N examples."""

    def __init__(self, densities: Densities, start: str, transforms: dict[str, Any]) -> None:
        self.densities, self.start, self.transforms = densities, start, transforms

    def constrain(self, u: Values) -> tuple[Values, Tensor]:
        z = {name: t(u[name]) for name, t in self.transforms.items()}
        log_jac = sum(t.log_abs_det_jacobian(u[name], z[name]) for name, t in self.transforms.items())
        return z, log_jac  # type: ignore[return-value]

    def parts(self, u: Values) -> tuple[Tensor, Tensor]:
        """(log f_0 + log|J|, log f_T - log f_0) at u, each (S, N)."""
        z, log_jac = self.constrain(u)
        log_prior, log_lik = self.densities.log_joint(z)
        if self.start == "prior":
            return log_prior + log_jac, log_lik
        log_q = self.densities.log_guide(z)
        return log_q + log_jac, log_prior + log_lik - log_q

    def potential_and_grad(self, u: Values, beta: float) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(U = -(log f_0 + beta log(f_T/f_0) + log|J|), log(f_T / f_0), dU/du) at u."""
        with torch.enable_grad():
            leaves = {name: v.detach().requires_grad_(True) for name, v in u.items()}
            base, increment = self.parts(leaves)
            potential = -(base + beta * increment)
            grads = torch.autograd.grad(potential.sum(), list(leaves.values()))
        return potential.detach(), increment.detach(), dict(zip(leaves, grads, strict=True))


def _per_chain(t: Tensor, like: Tensor) -> Tensor:
    """Broadcast a (S, N) or (1, N) tensor against a site value (S, N, *event)."""
    return t.reshape(t.shape + (1,) * (like.dim() - t.dim()))


def _hmc(target: _Target, u: Values, beta: float, eps: Tensor, steps: int) -> tuple[Values, Tensor, Tensor]:
    """One HMC transition per chain leaving f_beta invariant: (new u, log(f_T/f_0) there, accepted (S, N))."""
    potential, increment, grad = target.potential_and_grad(u, beta)
    p = {name: torch.randn_like(v) for name, v in u.items()}
    kinetic = sum(_sum_event(0.5 * v**2, potential) for v in p.values())
    h0 = potential + kinetic
    q = dict(u)
    for step in range(steps):
        p = {n: p[n] - _per_chain(eps, p[n]) * (0.5 if step == 0 else 1.0) * grad[n] for n in p}
        q = {n: q[n] + _per_chain(eps, q[n]) * p[n] for n in q}
        new_potential, new_increment, grad = target.potential_and_grad(q, beta)
    p = {n: p[n] - 0.5 * _per_chain(eps, p[n]) * grad[n] for n in p}
    h1 = new_potential + sum(_sum_event(0.5 * v**2, potential) for v in p.values())
    log_accept = (h0 - h1).nan_to_num(nan=-math.inf)
    accept = torch.rand_like(h0).log() < log_accept
    new_u = {n: torch.where(_per_chain(accept, u[n]), q[n], u[n]) for n in u}
    return new_u, torch.where(accept, new_increment, increment), accept


def _sum_event(t: Tensor, like: Tensor) -> Tensor:
    """Sum a site-shaped tensor (S, N, *event) down to (S, N)."""
    return t.reshape(*like.shape, -1).sum(-1)


def _anneal(
    densities: Densities, z0: Values, betas: Tensor, options: AISOptions, desc: str, progress: bool
) -> AISResult:
    """Run the chains from ``z0`` through ``betas`` (increasing: forward AIS; decreasing: reverse)."""
    with torch.no_grad():
        transforms = densities.transforms(z0)
    target = _Target(densities, options.start, transforms)
    u = {name: transforms[name].inv(v).detach() for name, v in z0.items()}
    with torch.no_grad():
        increment = target.parts(u)[1]
    s, n = increment.shape
    log_w = torch.zeros_like(increment)
    eps = torch.full((1, n), options.step_size, dtype=increment.dtype, device=increment.device)
    accepted = torch.zeros(n, dtype=increment.dtype, device=increment.device)
    num_steps = betas.numel() - 1
    with progress_bar(num_steps, desc, progress, unit="step") as bar:
        for t in range(1, num_steps + 1):
            log_w = log_w + float(betas[t] - betas[t - 1]) * increment
            if t < num_steps:  # the last state does not enter the weights
                u, increment, accept = _hmc(target, u, float(betas[t]), eps, options.leapfrog_steps)
                rate = accept.to(increment.dtype).mean(0)
                accepted += rate
                eps = (eps * torch.where(rate > options.target_accept, 1.02, 0.98)).clamp(1e-4, 1.0)
            bar.update(1)
    log_sum = torch.logsumexp(log_w, 0)
    return AISResult(
        log_likelihood=log_sum - math.log(s),
        stderr=delta_method_stderr(log_sum, torch.logsumexp(2 * log_w, 0), s),
        log_weights=log_w,
        acceptance=accepted / max(1, num_steps - 1),
        step_size=eps.reshape(-1),
    )


def ais(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    x: Tensor,
    options: AISOptions | None = None,
    progress: bool = False,
) -> AISResult:
    """Forward AIS from ``options.start`` (prior or guide) to the posterior of every example of ``x``."""
    options = options or AISOptions()
    densities = Densities.of(model, guide, x)
    densities.refuse_discrete("AIS (and BDMC)", "drop --ais and --bdmc; importance sampling (log p(x)) handles it")
    with frozen_parameters(model, guide):
        with torch.no_grad():
            if options.start == "prior":
                z0 = densities.sample_prior(options.num_chains)
            else:
                z0 = densities.sample_guide(options.num_chains)[0]
        betas = annealing_schedule(options.num_steps, options.schedule)
        return _anneal(densities, z0, betas, options, f"AIS, {options.num_steps} steps", progress)


def ais_log_likelihood(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    x: Tensor,
    num_steps: int = 500,
    return_stderr: bool = False,
    progress: bool = False,
    **options: Any,
) -> Tensor | tuple[Tensor, Tensor]:
    """AIS estimates of log p(x_i), one per row of ``x`` (a stochastic lower bound; see the module doc).

    ``options`` are the other ``AISOptions`` fields (num_chains, leapfrog_steps, step_size, target_accept,
    schedule, start). With ``return_stderr``: ``(estimates, standard errors over the chains)``.
    """
    result = ais(model, guide, x, AISOptions(num_steps=num_steps, **options), progress=progress)
    return (result.log_likelihood, result.stderr) if return_stderr else result.log_likelihood


@torch.no_grad()
def simulate(model: Callable[..., Any], x_like: Tensor) -> tuple[Tensor, Values]:
    """(x, latents) drawn from the model p(z) p(x|z), one per row of ``x_like`` (which gives the shape).

    The model's observed sites are sampled instead of observed (``poutine.uncondition``); ``x`` is the value
    of its single observed site.
    """
    trace = prune_subsample_sites(poutine.trace(poutine.uncondition(model)).get_trace(x_like))
    sampled = [s for s in trace.nodes.values() if s["type"] == "sample" and s["infer"].get("was_observed")]
    if len(sampled) != 1:
        raise ValueError(f"simulate needs a model with one observed site, found {len(sampled)}")
    latents = {
        name: site["value"]
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site["infer"].get("was_observed")
    }
    return sampled[0]["value"].reshape(x_like.shape), latents


@dataclass
class BDMCResult:
    """Stochastic lower and upper bounds on log p(x_i) of simulated data, each (N,), with standard errors."""

    lower: Tensor
    lower_stderr: Tensor
    upper: Tensor
    upper_stderr: Tensor
    forward: AISResult
    reverse: AISResult


def bdmc(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    x: Tensor,
    latents: Values,
    options: AISOptions | None = None,
    progress: bool = False,
) -> BDMCResult:
    """Bidirectional Monte Carlo on simulated data ``x`` with the ``latents`` that generated it (``simulate``).

    Forward AIS gives the lower bound; reverse AIS, every chain started at the generating latents (an exact
    posterior sample), gives -log of an unbiased estimate of 1 / p(x), the upper bound.
    """
    options = options or AISOptions()
    forward = ais(model, guide, x, options, progress=progress)
    densities = Densities.of(model, guide, x)
    start = {name: v.detach().unsqueeze(0).expand(options.num_chains, *v.shape) for name, v in latents.items()}
    if set(start) != set(densities.sites):
        raise ValueError(f"latents {sorted(start)} do not match the guide's latent sites {sorted(densities.sites)}")
    betas = annealing_schedule(options.num_steps, options.schedule).flip(0)
    with frozen_parameters(model, guide):
        reverse = _anneal(densities, start, betas, options, f"reverse AIS, {options.num_steps} steps", progress)
    return BDMCResult(
        lower=forward.log_likelihood,
        lower_stderr=forward.stderr,
        upper=-reverse.log_likelihood,
        upper_stderr=reverse.stderr,
        forward=forward,
        reverse=reverse,
    )
