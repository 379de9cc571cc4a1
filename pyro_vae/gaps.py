"""The inference gaps of an amortised guide (Cremer, Li & Duvenaud 2018).

For each example, with q_enc the guide's q(z | x) and q* the best member of its family for that x:

    log p(x) - ELBO(q_enc) = [log p(x) - ELBO(q*)] + [ELBO(q*) - ELBO(q_enc)]
                           =  approximation gap    +  amortisation gap.

q* is found by optimising, for every example separately, the parameters of each guide site's distribution
(loc and scale of a Normal, loc and scale_tril of a full-covariance Gaussian, direction and concentration of a
power spherical, ...; for a flow those of its base), started at the encoder's output: the optimised variables are
offsets in the unconstrained space of each parameter (``biject_to`` of its constraint, else ``transform_to``),
initialised at zero, so the search starts exactly at q_enc. For a guide of Gaussian or power spherical sites this
is the whole family, as in the paper; where a site's
distribution also has global parts (the layers of a flow, q(z2 | z1)'s dependence on z1) those stay the
encoder's, and the amortisation gap is then that of the per-example parameters alone (a lower bound on the
gap of the full family). The objective is the ELBO with the path-derivative (STL) gradient, whose variance
vanishes as q approaches the posterior (Roeder et al. 2017); Adam with a learning rate decayed tenfold.

ELBO(q_enc) and ELBO(q*) are then estimated from ``elbo_samples`` samples each, and log p(x), unless given
(e.g. from AIS), by importance sampling from the mixture (q* + q_enc) / 2, half the samples from each, with
weights p(x, z) / ((q*(z) + q_enc(z)) / 2) (multiple importance sampling with the balance heuristic; Veach &
Guibas 1995). q* alone is a poor proposal where it is narrower than the posterior, as the best mean-field
Gaussian of a correlated posterior is (measured: 1.8 standard errors low on the linear-Gaussian test); the
mixture is as wide as the wider of the two.

References:
    [1] C. Cremer, X. Li, D. Duvenaud. Inference Suboptimality in Variational Autoencoders. ICML 2018.
    [2] G. Roeder, Y. Wu, D. Duvenaud. Sticking the Landing. NeurIPS 2017.
    [3] E. Veach, L. J. Guibas. Optimally combining sampling techniques for Monte Carlo rendering. SIGGRAPH 1995.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from torch import Tensor, nn
from torch.distributions import biject_to, transform_to

from pyro_vae.checks import check_number
from pyro_vae.densities import Densities
from pyro_vae.errors import UserError
from pyro_vae.estimators.detached_q import frozen_parameters, latent_sites
from pyro_vae.estimators.log_weights import guess_plate_nesting, per_example_log_weights
from pyro_vae.estimators.stl import STLELBO
from pyro_vae.importance import MAX_ROWS, delta_method_stderr
from pyro_vae.progress import progress_bar
from pyro_vae.psis import KhatSummary, TopLogWeights

#: The parametrisation rebuilt for distributions that accept several (the others: their stored arg_constraints).
_PARAMETRISATIONS: dict[type, tuple[str, ...]] = {
    torch.distributions.MultivariateNormal: ("loc", "scale_tril"),
    torch.distributions.LowRankMultivariateNormal: ("loc", "cov_factor", "cov_diag"),
}


@dataclass
class GapOptions:
    """Settings of the per-example optimisation behind the inference gaps.

    Fields:
        num_steps: Adam steps per batch of examples (each example has its own parameters).
        lr: Adam's initial learning rate, decayed tenfold over the steps.
        num_particles: samples of z per example and step for the gradient.
        elbo_samples: samples per example for the final ELBO estimates of q_enc and q*.
        log_likelihood_samples: importance samples per example for log p(x), from the mixture of q* and q_enc.
        batch_size: examples optimised together.
    """

    num_steps: int = 500
    lr: float = 0.02
    num_particles: int = 8
    elbo_samples: int = 1000
    log_likelihood_samples: int = 1000
    batch_size: int = 100

    def __post_init__(self) -> None:
        for name in ("num_steps", "num_particles", "elbo_samples", "log_likelihood_samples", "batch_size"):
            check_number(getattr(self, name), f"gap option {name}", integer=True, low=1)
        check_number(self.lr, "gap option lr", positive=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _parameter_names(d: torch.distributions.Distribution) -> tuple[str, ...]:
    for cls, names in _PARAMETRISATIONS.items():
        if isinstance(d, cls):
            return names
    return tuple(name for name in d.arg_constraints if name in vars(d))


def _unconstraining(constraint: torch.distributions.constraints.Constraint) -> torch.distributions.Transform:
    """A map from unconstrained values onto ``constraint``'s set whose inverse is a right inverse on that set.

    ``biject_to`` where there is one; else ``transform_to``, which is onto but many-to-one (lower Cholesky
    factors: the upper triangle is ignored; Pyro's ``Normalize`` for the sphere: the norm is) - enough here, since
    the offsets start at zero at ``inv(value)``, which the map sends back to ``value``.
    """
    try:
        return biject_to(constraint)
    except NotImplementedError:
        return transform_to(constraint)


class _LocalOffsets(Messenger):
    """Rebuild every latent site's distribution with per-example offsets on its parameters' unconstrained values.

    The offsets live in ``offsets`` (an ``nn.ParameterDict``, keyed "site/path"), created at zero on first use
    with the parameter's shape less the particle dimension, so they broadcast over particles.
    """

    def __init__(self, offsets: nn.ParameterDict, sites: set[str], create: bool) -> None:
        super().__init__()
        self.offsets, self.sites, self.create = offsets, sites, create

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if msg["name"] in self.sites and not msg["is_observed"]:
            msg["fn"] = self._shift(msg["fn"], msg["name"])

    def _shift(self, d: Any, path: str) -> Any:
        if isinstance(d, torch.distributions.Independent):
            return type(d)(self._shift(d.base_dist, path + ".base"), d.reinterpreted_batch_ndims)
        names = _parameter_names(d)
        if isinstance(d, torch.distributions.TransformedDistribution) and not names:
            # A flow: shift its base. One with parameters of its own (the power spherical's loc and scale, whose
            # base and rotation are built from them) is rebuilt from those, below.
            return dist.TransformedDistribution(self._shift(d.base_dist, path + ".base"), d.transforms)
        if not names:
            raise UserError(f"the inference gaps cannot optimise the parameters of {type(d).__name__} at {path!r}")
        shifted = {}
        for name in names:
            value = getattr(d, name)
            try:
                transform = _unconstraining(d.arg_constraints[name])
            except NotImplementedError:
                raise UserError(
                    f"the inference gaps cannot optimise {type(d).__name__}.{name} (constraint "
                    f"{d.arg_constraints[name]}) at {path!r}"
                ) from None
            key = f"{path}.{name}".replace(".", "/")
            if key not in self.offsets:
                if not self.create:
                    raise RuntimeError(f"no offset for {key}: the guide changed between calls")
                self.offsets[key] = nn.Parameter(torch.zeros_like(value.detach()))
            shifted[name] = transform(transform.inv(value) + self.offsets[key])
        return type(d)(**shifted, validate_args=False)


class LocallyOptimised(nn.Module):
    """The guide with per-example offsets on its sites' distribution parameters (see the module doc).

    ``LocallyOptimised(guide, x)`` creates zero offsets for the batch ``x``, so it starts equal to the guide;
    call it with the same ``x``.
    """

    def __init__(self, guide: Callable[..., Any], x: Tensor) -> None:
        super().__init__()
        self.guide = guide
        self.offsets = nn.ParameterDict()
        with torch.no_grad():
            trace = poutine.trace(guide).get_trace(x)
        self.site_names = set(latent_sites(trace))
        with torch.no_grad(), _LocalOffsets(self.offsets, self.site_names, create=True):
            guide(x)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        with _LocalOffsets(self.offsets, self.site_names, create=False):
            return self.guide(x, *args, **kwargs)


def optimise_locally(
    model: Callable[..., Any], guide: Callable[..., Any], x: Tensor, options: GapOptions
) -> LocallyOptimised:
    """q* for every row of ``x`` (one batch): Adam on the per-example offsets, STL gradient of the ELBO."""
    local = LocallyOptimised(guide, x)
    params = list(local.offsets.values())
    optimiser = torch.optim.Adam(params, lr=options.lr)
    decay = torch.optim.lr_scheduler.ExponentialLR(optimiser, gamma=0.1 ** (1 / max(1, options.num_steps)))
    # The nesting given, so that Pyro does not guess it (and log the guess) for every batch.
    nesting = guess_plate_nesting(model, guide, (x,), {})
    elbo = STLELBO(num_particles=options.num_particles, max_plate_nesting=nesting)
    with frozen_parameters(model, guide):  # only the offsets move; no graph to the networks' weights
        for _ in range(options.num_steps):
            loss = elbo.differentiable_loss(model, local, x)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            optimiser.step()
            decay.step()
    for p in params:
        p.grad = None
    return local


@dataclass
class InferenceGaps:
    """Per-example values (tensors (N,), nats) and their Monte Carlo standard errors; ``log_likelihood_khat``: the
    Pareto k-hat of the mixture's importance weights (``pyro_vae.psis``), None when log p(x) was given."""

    log_likelihood: Tensor
    log_likelihood_stderr: Tensor
    elbo_optimal: Tensor
    elbo_optimal_stderr: Tensor
    elbo_encoder: Tensor
    elbo_encoder_stderr: Tensor
    log_likelihood_khat: Tensor | None = None
    log_likelihood_samples: int = 0

    def summary(self) -> dict[str, Any]:
        """Averages over the examples: the gaps, the three levels, and their standard errors; ``psis``, the k-hat
        summary of the importance-sampled log p(x) (None when it was given)."""
        n = self.log_likelihood.numel()

        def se(*parts: Tensor) -> float:
            return float(sum(p.pow(2) for p in parts).sum().sqrt() / n)  # type: ignore[union-attr]

        return {
            "approximation_gap": float((self.log_likelihood - self.elbo_optimal).mean()),
            "approximation_gap_stderr": se(self.log_likelihood_stderr, self.elbo_optimal_stderr),
            "amortization_gap": float((self.elbo_optimal - self.elbo_encoder).mean()),
            "amortization_gap_stderr": se(self.elbo_optimal_stderr, self.elbo_encoder_stderr),
            "inference_gap": float((self.log_likelihood - self.elbo_encoder).mean()),
            "log_likelihood": float(self.log_likelihood.mean()),
            "elbo_optimal": float(self.elbo_optimal.mean()),
            "elbo_encoder": float(self.elbo_encoder.mean()),
            "num_examples": n,
            "psis": None
            if self.log_likelihood_khat is None
            else KhatSummary.of(self.log_likelihood_khat, self.log_likelihood_samples).to_dict(),
        }


def _elbo_and_stderr(model: Callable[..., Any], guide: Callable[..., Any], x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    rows = max(1, MAX_ROWS // x.shape[0])
    with torch.no_grad():
        log_w = torch.cat(
            [per_example_log_weights(model, guide, x, num_particles=min(rows, k - d)) for d in range(0, k, rows)]
        )
    return log_w.mean(0), log_w.std(0) / math.sqrt(k)


def mixture_log_likelihood(
    model: Callable[..., Any], guide: Callable[..., Any], local: Callable[..., Any], x: Tensor, num_samples: int
) -> tuple[Tensor, Tensor]:
    """(log p(x_i), delta-method SE) by importance sampling from (q* + q_enc) / 2 with the balance heuristic."""
    log_px, stderr, _ = mixture_importance_sample(model, guide, local, x, num_samples)
    return log_px, stderr


@torch.no_grad()
def mixture_importance_sample(
    model: Callable[..., Any], guide: Callable[..., Any], local: Callable[..., Any], x: Tensor, num_samples: int
) -> tuple[Tensor, Tensor, Tensor]:
    """(log p(x_i), delta-method SE, Pareto k-hat of the weights) by importance sampling from (q* + q_enc) / 2 with
    the balance heuristic (an even number of samples, at least ``num_samples``)."""
    encoder, optimal = Densities.of(model, guide, x), Densities.of(model, local, x)
    chunk = max(1, MAX_ROWS // (2 * x.shape[0]))
    lse = torch.full((x.shape[0],), -math.inf, dtype=x.dtype, device=x.device)
    lse2, done = lse.clone(), 0
    # The total drawn: pairs of chunks, one from each source, until num_samples (rounded up to even).
    top = TopLogWeights(2 * ((num_samples + 1) // 2))
    while done < num_samples:
        k = min(chunk, (num_samples - done + 1) // 2)
        for source in (encoder, optimal):
            values, _ = source.sample_guide(k)
            log_prior, log_lik = encoder.log_joint(values)
            log_mixture = torch.logaddexp(encoder.log_guide(values), optimal.log_guide(values)) - math.log(2)
            log_w = log_prior + log_lik - log_mixture
            lse = torch.logaddexp(lse, torch.logsumexp(log_w, 0))
            lse2 = torch.logaddexp(lse2, torch.logsumexp(2 * log_w, 0))
            top.add(log_w)
            done += k
    return lse - math.log(done), delta_method_stderr(lse, lse2, done), top.khat().to(dtype=x.dtype, device=x.device)


def local_optimisation_gaps(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    x: Tensor,
    options: GapOptions | None = None,
    log_px: Tensor | None = None,
    progress: bool = False,
    log_px_stderr: Tensor | None = None,
) -> InferenceGaps:
    """Per-example log p(x), ELBO(q*) and ELBO(q_enc) (see the module doc); ``log_px`` (with its standard errors
    ``log_px_stderr``, default 0) replaces the IS estimate."""
    options = options or GapOptions()
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):  # the draws stay as they were
        densities = Densities.of(model, guide, x[: options.batch_size])
    densities.refuse_discrete(
        "the inference gaps' local optimisation (a reparameterised ELBO per example)", "drop --gaps"
    )
    names = ("log_likelihood", "log_likelihood_stderr", "log_likelihood_khat", "elbo_optimal", "elbo_encoder")
    parts: dict[str, list[Tensor]] = {f: [] for f in (*names, "elbo_optimal_stderr", "elbo_encoder_stderr")}
    with progress_bar(x.shape[0] * options.num_steps, "inference gaps", progress, unit="step") as bar:
        for start in range(0, x.shape[0], options.batch_size):
            xb = x[start : start + options.batch_size]
            local = optimise_locally(model, guide, xb, options)
            bar.update(xb.shape[0] * options.num_steps)
            for prefix, q in (("elbo_optimal", local), ("elbo_encoder", guide)):
                value, stderr = _elbo_and_stderr(model, q, xb, options.elbo_samples)
                parts[prefix].append(value)
                parts[prefix + "_stderr"].append(stderr)
            if log_px is None:
                value, stderr, khat = mixture_importance_sample(model, guide, local, xb, options.log_likelihood_samples)
                parts["log_likelihood"].append(value)
                parts["log_likelihood_stderr"].append(stderr)
                parts["log_likelihood_khat"].append(khat)
    if log_px is not None:
        parts["log_likelihood"] = [log_px.detach()]
        parts["log_likelihood_stderr"] = [torch.zeros_like(log_px) if log_px_stderr is None else log_px_stderr]
    khat = parts.pop("log_likelihood_khat")
    return InferenceGaps(
        **{name: torch.cat(values) for name, values in parts.items()},
        log_likelihood_khat=torch.cat(khat) if khat and log_px is None else None,
        log_likelihood_samples=2 * ((options.log_likelihood_samples + 1) // 2),
    )


def inference_gaps(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    x: Tensor,
    options: GapOptions | None = None,
    log_px: Tensor | None = None,
    progress: bool = False,
    **option_values: Any,
) -> dict[str, Any]:
    """The approximation gap log p(x) - ELBO(q*) and the amortisation gap ELBO(q*) - ELBO(q_enc), in nats per
    example averaged over ``x`` (keys ``"approximation_gap"``, ``"amortization_gap"``, with standard errors and
    the levels, and ``"psis"``, the k-hat summary of the importance-sampled log p(x); Cremer et al. 2018).
    ``option_values`` are ``GapOptions`` fields."""
    options = options or GapOptions(**option_values)
    return local_optimisation_gaps(model, guide, x, options, log_px, progress).summary()
