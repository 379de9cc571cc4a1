"""ELBO estimators by name: ``ESTIMATORS[name]`` is an ``EstimatorSpec``; ``make_elbo(name, **options)`` (or
``ESTIMATORS[name](**options)``) returns a Pyro ELBO usable by SVI.

Every estimator takes ``num_particles`` and ``max_plate_nesting``; "renyi" also takes ``alpha`` (its options
dataclass, ``RenyiOptions``). ``jit=True``
compiles it where it has a compiled form (all but dreg). The names ``jit-trace``, ``jit-meanfield``, ... stand
for ``make_elbo(name, jit=True)``. Unknown names and options raise a one-line ``UserError``.

Losses follow Pyro's convention: the negated estimate, summed over the batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO

from pyro_vae.errors import UserError
from pyro_vae.estimators.disarm import DisARMELBO
from pyro_vae.estimators.dreg import DReGBound
from pyro_vae.estimators.enum import EnumELBO, EnumOptions
from pyro_vae.estimators.free_bits import FreeBitsELBO
from pyro_vae.estimators.iwae import IWAEBound, JitIWAEBound
from pyro_vae.estimators.jit_meanfield import JitTraceMeanFieldELBO
from pyro_vae.estimators.jit_trace import JitTraceELBO
from pyro_vae.estimators.log_weights import per_example_log_weights
from pyro_vae.estimators.reinforce import ReinforceELBO, ReinforceOptions
from pyro_vae.estimators.relaxed import RelaxedELBO, RelaxedOptions
from pyro_vae.estimators.renyi import JitRenyiBound, RenyiBound, RenyiOptions
from pyro_vae.estimators.rws import ReweightedWakeSleep
from pyro_vae.estimators.spec import EstimatorSpec
from pyro_vae.estimators.stl import STLELBO, JitSTLELBO
from pyro_vae.estimators.tvo import TVOBound, TVOOptions
from pyro_vae.estimators.vimco import VIMCOBound
from pyro_vae.named import Registry

#: The prefix of the names that mean "compiled": "jit-trace" is make_elbo("trace", jit=True).
JIT_PREFIX = "jit-"

# Trace-based ELBOs draw num_particles > 1 at once (a particle plate) rather than in a Python loop.
_VECTORIZED = {"vectorize_particles": True}
_NO_JIT = "the estimators of discrete latents have no compiled form"

_SPECS = [
    EstimatorSpec(
        "trace",
        Trace_ELBO,
        "ELBO",
        "ELBO (eq. 28), Monte Carlo KL",
        "reparameterised gradient of log p(x,z) - log q(z|x)",
        jit_factory=JitTraceELBO,
        defaults=_VECTORIZED,
    ),
    EstimatorSpec(
        "meanfield",
        TraceMeanField_ELBO,
        "ELBO",
        "ELBO, analytic KL where registered (eq. 40)",
        "reparameterised gradient, analytic KL term",
        jit_factory=JitTraceMeanFieldELBO,
        defaults=_VECTORIZED,
    ),
    EstimatorSpec(
        "iwae",
        IWAEBound,
        "IWAE bound",
        "IWAE bound, K particles (Burda et al. 2015)",
        "IWAE gradient: sum_k w~_k grad log w_k",
        multi_particle=True,
        jit_factory=JitIWAEBound,
    ),
    EstimatorSpec(
        "renyi",
        RenyiBound,
        "Renyi bound",
        "Renyi bound L_alpha, K particles (Li & Turner 2016)",
        "sum_k softmax((1-alpha) log w)_k grad log w_k",
        multi_particle=True,
        options=RenyiOptions,
        jit_factory=JitRenyiBound,
    ),
    EstimatorSpec(
        "stl",
        STLELBO,
        "ELBO",
        "ELBO (same value as trace)",
        "path derivative only: log q at detached parameters (Roeder et al. 2017)",
        jit_factory=JitSTLELBO,
    ),
    EstimatorSpec(
        "dreg",
        DReGBound,
        "IWAE bound",
        "IWAE bound (same value as iwae)",
        "encoder: w~_k^2 path derivative; decoder: as IWAE (Tucker et al. 2018)",
        multi_particle=True,
        no_jit_reason="its gradient hooks are not recorded by the JIT",
    ),
    # Estimators for discrete latents (also run on continuous guides where they say so): no compiled forms, as
    # their effect handlers, baselines and antithetic passes keep Python state between calls.
    EstimatorSpec(
        "enum",
        EnumELBO,
        "ELBO",
        "exact ELBO, the guide's discrete latents enumerated (TraceEnum_ELBO)",
        "exact gradient of the ELBO",
        options=EnumOptions,
        no_jit_reason=_NO_JIT,
        defaults=_VECTORIZED,
        latents="discrete",
    ),
    EstimatorSpec(
        "reinforce",
        ReinforceELBO,
        "ELBO",
        "ELBO (K-particle mean), score function for non-reparameterised latents (TraceGraph_ELBO)",
        "score function with a learned baseline (Mnih & Gregor 2014); unbiased for the ELBO's",
        options=ReinforceOptions,
        no_jit_reason=_NO_JIT,
        defaults=_VECTORIZED,
        latents="any",
    ),
    EstimatorSpec(
        "vimco",
        VIMCOBound,
        "IWAE bound",
        "IWAE bound, K >= 2 particles, any latents by score function (Mnih & Rezende 2016)",
        "leave-one-out baselines; unbiased for the gradient of the K-sample IWAE bound",
        multi_particle=True,
        no_jit_reason=_NO_JIT,
        latents="any",
    ),
    EstimatorSpec(
        "rws",
        ReweightedWakeSleep,
        "IWAE bound",
        "IWAE bound, K particles, per example (Bornschein & Bengio 2015)",
        "model: wake-theta (unbiased for the IWAE bound's); guide: wake-phi, self-normalised -grad KL(p||q), biased",
        multi_particle=True,
        no_jit_reason=_NO_JIT,
        latents="any",
    ),
    EstimatorSpec(
        "relaxed",
        RelaxedELBO,
        "relaxed ELBO",
        "ELBO of the Concrete-relaxed model (Maddison et al. 2017; Jang et al. 2017), biased for the discrete ELBO; "
        "straight-through: the discrete ELBO",
        "reparameterised through the relaxation: biased for the discrete ELBO's",
        options=RelaxedOptions,
        no_jit_reason=_NO_JIT,
        defaults=_VECTORIZED,
        latents="discrete",
    ),
    EstimatorSpec(
        "tvo",
        TVOBound,
        "TVO bound",
        "TVO lower bound, left Riemann sum over its partition of [0, 1], K particles (Masrani et al. 2019)",
        "covariance estimator with self-normalised weights: biased for finite K, consistent",
        multi_particle=True,
        options=TVOOptions,
        no_jit_reason=_NO_JIT,
        latents="any",
    ),
    EstimatorSpec(
        "disarm",
        DisARMELBO,
        "ELBO",
        "ELBO, K antithetic pairs, Bernoulli latents only (Dong et al. 2020)",
        "DisARM for the guide, mean grad log p for the model; unbiased for the ELBO's",
        no_jit_reason=_NO_JIT,
        latents="discrete",
    ),
]


class EstimatorRegistry(Registry[EstimatorSpec]):
    """The estimator specs by name; ``"jit-NAME"`` is looked up as NAME's compiled form.

    Iterating gives the estimators (trace, meanfield, ...); ``names()`` also lists the ``jit-`` spellings.
    """

    def canonical(self, name: str) -> str | None:
        found = super().canonical(name)
        if found is None and isinstance(name, str) and name.lower().startswith(JIT_PREFIX):
            base = super().canonical(name[len(JIT_PREFIX) :])
            if base is not None and self._entries[base].jit_factory is not None:
                return JIT_PREFIX + base
        return found

    def __getitem__(self, name: str) -> EstimatorSpec:
        found = self.canonical(name) if isinstance(name, str) else None
        if found is None:
            raise self.unknown(name)
        if found.startswith(JIT_PREFIX) and found not in self._entries:
            spec = self._entries[found[len(JIT_PREFIX) :]]
            return EstimatorSpec(
                found,
                spec.jit_factory,  # type: ignore[arg-type]
                spec.estimates,
                spec.value,
                f"{spec.gradient}; compiled once (JIT)",
                spec.multi_particle,
                spec.options,
                spec.jit_factory,
                defaults=spec.defaults,
            )
        return self._entries[found]

    def source(self, name: str) -> str | None:
        found = self.canonical(name)
        if found is not None and found.startswith(JIT_PREFIX) and found not in self._entries:
            return super().source(found[len(JIT_PREFIX) :])  # "jit-NAME" comes from where NAME does
        return super().source(name)

    def names(self) -> list[str]:
        """Every accepted name: the estimators, then their compiled spellings."""
        return list(self) + [JIT_PREFIX + n for n, s in self._entries.items() if s.jit_factory is not None]


def as_spec(entry: object, name: str) -> EstimatorSpec:
    """An ``EstimatorSpec`` named ``name``: a spec as is (renamed if need be), a Pyro ELBO class or factory wrapped in
    one that says only that its value estimates the ELBO."""
    if isinstance(entry, EstimatorSpec):
        return entry if entry.name == name else dataclasses.replace(entry, name=name)
    if not callable(entry):
        raise ValueError(f"estimator {name!r} must be an EstimatorSpec or a Pyro ELBO class, got {entry!r}")
    doc = (getattr(entry, "__doc__", None) or "").strip().splitlines()
    return EstimatorSpec(name, entry, "ELBO", doc[0] if doc else f"{name}, a user's estimator", "its own")


ESTIMATORS = EstimatorRegistry(
    "estimator",
    {spec.name: spec for spec in _SPECS},
    wrap=as_spec,
    sort_choices=False,
    entry_points="pyro_vae.estimators",
)


def register_estimator(
    name: str,
    factory: Callable[..., ELBO] | EstimatorSpec | None = None,
    *,
    estimates: str = "ELBO",
    value: str = "",
    gradient: str = "",
    **declared: Any,
) -> Any:
    """Register a Pyro ELBO class (or factory, or an ``EstimatorSpec``) as the estimator ``name`` (or decorate one).

    ``estimates``, ``value``, ``gradient`` and ``declared`` (``multi_particle``, ``options``, ``jit_factory``, ...)
    fill the ``EstimatorSpec``. The factory must take ``num_particles`` and ``max_plate_nesting``, as every Pyro ELBO
    does; the name then works in ``TrainConfig.elbo``, ``--elbo`` and ``compare-estimators --estimators``.
    """

    def add(fn: Callable[..., ELBO] | EstimatorSpec) -> Callable[..., ELBO] | EstimatorSpec:
        if isinstance(fn, EstimatorSpec):
            ESTIMATORS[name] = fn
        else:
            doc = (fn.__doc__ or "").strip().splitlines()
            text = value or (doc[0] if doc else f"{name}, a user's estimator")
            ESTIMATORS[name] = EstimatorSpec(name, fn, estimates, text, gradient or "its own", **declared)
        return fn

    return add if factory is None else add(factory)


def _training_spec(name: str, jit: bool) -> tuple[EstimatorSpec, bool]:
    """(the plain estimator's spec, whether to compile it): "jit-NAME" is NAME with ``jit``."""
    canonical = ESTIMATORS.canonical(name) or name
    spec = ESTIMATORS[canonical]
    if canonical.startswith(JIT_PREFIX) and spec.factory is spec.jit_factory:
        return ESTIMATORS[canonical[len(JIT_PREFIX) :]], True
    return spec, bool(jit)


def make_training_elbo(
    name: str,
    particles: int = 1,
    options: dict[str, Any] | None = None,
    *,
    plate_nesting: int = 1,
    free_bits: float = 0.0,
) -> ELBO:
    """The estimator a run trains with (``TrainConfig.elbo``, ``particles``, ``elbo_options``), uncompiled, with
    max_plate_nesting = 1 (the model's one "data" plate) unless given. Its compiled form (``TrainConfig.jit`` or a
    ``jit-NAME``) is ``training_jit``'s. ``free_bits`` > 0 (meanfield only): ``FreeBitsELBO`` with that floor.

    Fixing the nesting matters for exact resumption: otherwise Pyro guesses it at the first call by
    running the model once, which draws random numbers at a different point of a resumed run.
    """
    spec, _ = _training_spec(name, False)
    if free_bits > 0:
        if spec.name != "meanfield":
            raise UserError(f"free bits need --elbo meanfield (its analytic KL), got {name}")
        return FreeBitsELBO(free_bits, num_particles=particles, max_plate_nesting=plate_nesting, **_VECTORIZED)
    return spec.make(num_particles=particles, max_plate_nesting=plate_nesting, **(options or {}))


def training_jit(
    name: str,
    particles: int = 1,
    options: dict[str, Any] | None = None,
    *,
    jit: bool = False,
    plate_nesting: int = 1,
) -> Callable[[], ELBO] | None:
    """With ``jit`` (or a ``jit-NAME`` estimator): a function making the compiled form of ``make_training_elbo``'s
    estimator (``pyro_vae.step.TrainStep(..., jit=...)`` checks it against the uncompiled one); else None."""
    spec, compiled = _training_spec(name, jit)
    if not compiled:
        return None
    kwargs = {"num_particles": particles, "max_plate_nesting": plate_nesting, **(options or {})}
    return lambda: spec.make(jit=True, **kwargs)


def make_elbo(name: str, *, jit: bool = False, **options: Any) -> ELBO:
    """``ESTIMATORS[name].make(jit=jit, **options)``: one-line ``UserError`` for an unknown name or option."""
    return ESTIMATORS[name].make(jit=jit, **options)


__all__ = [
    "ESTIMATORS",
    "JIT_PREFIX",
    "DReGBound",
    "DisARMELBO",
    "EnumELBO",
    "ReinforceELBO",
    "RelaxedELBO",
    "ReweightedWakeSleep",
    "TVOBound",
    "VIMCOBound",
    "FreeBitsELBO",
    "EstimatorRegistry",
    "EstimatorSpec",
    "IWAEBound",
    "JitIWAEBound",
    "JitRenyiBound",
    "JitSTLELBO",
    "JitTraceELBO",
    "JitTraceMeanFieldELBO",
    "RenyiBound",
    "RenyiOptions",
    "STLELBO",
    "make_elbo",
    "make_training_elbo",
    "training_jit",
    "per_example_log_weights",
    "register_estimator",
]
