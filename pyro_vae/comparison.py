"""ELBO estimators side by side on one model, guide and batch: value, bias, gradient variance and SNR, cost.

Any Pyro model and guide: functions, bound methods (``vae.model``, ``vae.guide`` as in Pyro's
examples/vae/vae.py) or modules. For each estimator, R independent draws of (value, gradient) on the same batch
x give:

- the value per example, mean and std over the draws (what it estimates: ``ESTIMATORS[name].value``);
- its bias against the importance-sampled log p(x) per example (``pyro_vae.importance.importance_sample``, whose
  K and standard error the table states);
- for every parameter element, the variance of its gradient and the signal-to-noise ratio ``|E g| / std(g)``
  (Rainforth et al. 2018), averaged separately over two groups: by default the guide's ("encoder") and the
  model's other ("decoder") parameters as Pyro's param store sees them when the pair runs on x (plus those of
  the modules behind the callables); gradients are of the loss per example (Pyro's batch-sum loss divided by N);
- the bias-corrected SNR with its 95% basic bootstrap interval (the R draws resampled; ``pyro_vae.snr``), which
  contains it, and the noise floor: with R draws a gradient element of mean zero still shows ``|mean| / std`` ~
  sqrt(2 / (pi R)) on average (the mean of a half-normal), 0.08 at R = 100, so an SNR near the floor cannot be
  told from no signal at all;
- the bias's standard error, sqrt(std^2 / R + SE(log p(x))^2), from the spread of the R values and the
  importance-sampling error of the reference log p(x);
- milliseconds per step (one ``loss_and_grads``): the median over the draws (robust to a busy machine), after
  one untimed warm-up call (the JIT compiles there).

References:
    [1] T. Rainforth, A. R. Kosiorek, T. A. Le, C. J. Maddison, M. Igl, F. Wood, Y. W. Teh. Tighter Variational
        Bounds are Not Necessarily Better. ICML 2018.
"""

from __future__ import annotations

import csv
import json
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import ELBO
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from pyro_vae.config import REPARAMETERISED_ONLY
from pyro_vae.errors import UserError
from pyro_vae.estimators import ESTIMATORS, make_elbo
from pyro_vae.estimators.detached_q import modules_of
from pyro_vae.exact_reference import ExactReference
from pyro_vae.importance import importance_sample
from pyro_vae.progress import progress_bar
from pyro_vae.psis import KhatSummary
from pyro_vae.snr import gradient_variance_and_snr, snr_bootstrap, snr_bootstrap_interval, snr_floor

__all__ = [
    "COLUMN_HELP",
    "EstimatorStats",
    "GradientDraws",
    "ParameterSplitWarning",
    "check_estimators_for_guide",
    "compare_estimators",
    "draw_gradients",
    "estimator_stats",
    "format_table",
    "gradient_variance_and_snr",
    "parameter_split_problem",
    "plot_snr_versus_particles",
    "resolve_parameter_groups",
    "snr_bootstrap",
    "snr_bootstrap_interval",
    "snr_floor",
    "snr_versus_particles",
    "split_parameters",
    "write_csv",
    "write_json",
]


@dataclass
class EstimatorStats:
    """One row of the comparison (values in nats per example).

    ``value_mean``, ``value_std``: mean and std over the R draws of the estimator's value per example;
    ``bias``: value_mean minus the reference IS log p(x), with ``bias_stderr``; ``grad_var_*``: Var(g) over the
    draws, averaged over the group's parameter elements (g the gradient of the loss per example); ``snr_*``: the
    plug-in ``|E g| / std(g)`` averaged over the group's elements (biased upwards), ``snr_*_corrected`` its
    bootstrap bias-corrected value and ``snr_*_low/high`` the 95% basic bootstrap interval, which contains the
    corrected value; ``snr_floor``: sqrt(2 / (pi R)), the SNR that zero-mean gradients show with R draws. A group
    with no parameters (``split_parameters`` could not tell encoder from decoder) has NaN statistics.
    With an exact reference (small discrete latents, ``pyro_vae.exact_reference``): ``exact_target`` the exact value
    of what the estimator estimates, ``exact_bias`` value_mean minus it with ``exact_bias_stderr``; ``grad_bias_*``
    ``|E g - g*| / |g*|`` and ``grad_noise_*`` its noise level ``sqrt(sum Var(g) / R) / |g*|``; NaN without one."""

    name: str
    num_particles: int
    estimates: str
    value_mean: float
    value_std: float
    bias: float
    grad_var_encoder: float
    grad_var_decoder: float
    snr_encoder: float
    snr_decoder: float
    ms_per_step: float
    num_draws: int
    snr_encoder_low: float = math.nan
    snr_encoder_high: float = math.nan
    snr_decoder_low: float = math.nan
    snr_decoder_high: float = math.nan
    snr_floor: float = math.nan
    snr_encoder_corrected: float = math.nan
    snr_decoder_corrected: float = math.nan
    bias_stderr: float = math.nan
    exact_target: float = math.nan
    exact_bias: float = math.nan
    exact_bias_stderr: float = math.nan
    grad_bias_encoder: float = math.nan
    grad_bias_decoder: float = math.nan
    grad_noise_encoder: float = math.nan
    grad_noise_decoder: float = math.nan


@dataclass
class GradientDraws:
    """R draws of an estimator on one batch: values per example (R,), flat gradients (R, P), seconds (R,)."""

    values: Tensor
    encoder: Tensor
    decoder: Tensor
    seconds: Tensor


def _parameters_seen(fn: Callable[..., Any], trace: Any) -> list[Tensor]:
    """The parameters of ``fn``: the param-store tensors its trace touched (``pyro.param``, ``pyro.module``),
    or, where it touched none or there is no trace, the parameters of the modules behind it."""
    found: dict[int, Tensor] = {}
    if trace is not None:
        store = pyro.get_param_store()
        for name, site in trace.nodes.items():
            if site["type"] == "param" and name in store:
                leaf = store.get_param(name).unconstrained()
                found.setdefault(id(leaf), leaf)
    if not found:
        for module in modules_of(fn):
            found.update((id(p), p) for p in module.parameters() if p.requires_grad)
    return list(found.values())


def split_parameters(
    model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any
) -> tuple[list[Tensor], list[Tensor]]:
    """(encoder = the guide's parameters, decoder = the model's parameters that the guide does not own).

    Given the model's arguments (the batch x), the pair runs once and each side's parameters are those Pyro's
    param store sees it use (``pyro.param``, ``pyro.module``): for Pyro's examples/vae/vae.py, whose
    ``vae.guide`` registers ``vae.encoder`` and ``vae.model`` ``vae.decoder``, the encoder's and the decoder's.
    A side that registers nothing (or without the arguments) contributes the parameters of the modules behind
    it (a module, the owner of a bound method), which is all there is for ``pyro_vae.build``'s pair.
    """
    guide_trace = model_trace = None
    if args or kwargs:
        with poutine.block(), torch.no_grad():
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    encoder = _parameters_seen(guide, guide_trace)
    owned = {id(p) for p in encoder}
    decoder = [p for p in _parameters_seen(model, model_trace) if id(p) not in owned]
    if not encoder and not decoder:
        raise ValueError(
            "found no parameters: pass the batch (split_parameters(model, guide, x)) so that Pyro's param store "
            "can be read, or give the parameter groups explicitly"
        )
    return encoder, decoder


def draw_gradients(
    elbo: ELBO,
    model: Callable[..., Any],
    guide: Callable[..., Any],
    x: Tensor,
    encoder_params: Sequence[Tensor],
    decoder_params: Sequence[Tensor],
    num_draws: int,
    progress: bool = False,
    desc: str = "gradient draws",
) -> GradientDraws:
    """Call ``elbo.loss_and_grads`` ``num_draws`` times (after one warm-up call) and record everything."""
    params = list(encoder_params) + list(decoder_params)
    n = x.shape[0]

    def flat(ps: Sequence[Tensor]) -> Tensor:
        if not ps:
            return torch.zeros(0)
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in ps]) / n

    for p in params:
        p.grad = None
    elbo.loss_and_grads(model, guide, x)
    values, enc, dec, seconds = [], [], [], []
    with progress_bar(num_draws, desc, progress, unit="draw") as bar:
        for _ in range(num_draws):
            for p in params:
                p.grad = None
            start = time.perf_counter()
            loss = elbo.loss_and_grads(model, guide, x)
            seconds.append(time.perf_counter() - start)
            values.append(-float(loss) / n)
            enc.append(flat(encoder_params))
            dec.append(flat(decoder_params))
            bar.update(1)
    for p in params:
        p.grad = None
    return GradientDraws(torch.tensor(values), torch.stack(enc), torch.stack(dec), torch.tensor(seconds))


def discrete_guide_sites(guide: Callable[..., Any], x: Tensor) -> list[str]:
    """The guide's latent sites without a reparameterised sampler (discrete, or marked for enumeration), as
    "'name' (distribution)"."""
    devices = [x.device] if x.device.type == "cuda" else []
    with poutine.block(), torch.no_grad(), torch.random.fork_rng(devices=devices):  # the caller's draws unchanged
        trace = poutine.trace(guide).get_trace(x)
    return [
        f"{name!r} ({type(site['fn']).__name__}{', marked for enumeration' if site['infer'].get('enumerate') else ''})"
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and not site_is_subsample(site)
        and not getattr(site["fn"], "has_rsample", True)
    ]


def check_estimators_for_guide(guide: Callable[..., Any], x: Tensor, names: Sequence[str]) -> None:
    """One-line ``UserError`` when one of the estimators ``names`` needs a reparameterised guide (``REPARAMETERISED_
    ONLY``, or its ``jit-`` form) and the guide has a discrete or enumerated site (``discrete_guide_sites``)."""
    refused = [n for n in names if (n[4:] if n.startswith("jit-") else n) in REPARAMETERISED_ONLY]
    sites = discrete_guide_sites(guide, x) if refused else []
    if sites:
        raise UserError(
            f"estimator(s) {', '.join(refused)} need a reparameterised guide, but guide site {', '.join(sites)} has no "
            "reparameterised sampler: compare estimators with score-function gradients (docs/estimators.md, "
            "'Supported latents')"
        )


def estimator_stats(
    name: str,
    elbo: ELBO,
    model: Callable[..., Any],
    guide: Callable[..., Any],
    x: Tensor,
    log_px: float,
    num_draws: int = 100,
    seed: int = 0,
    params: tuple[Sequence[Tensor], Sequence[Tensor]] | None = None,
    progress: bool = False,
    log_px_stderr: float = 0.0,
    exact: ExactReference | None = None,
) -> EstimatorStats:
    """One row: ``elbo`` drawn ``num_draws`` times on batch x; ``log_px`` is the IS log p(x) per example, with
    its standard error ``log_px_stderr`` (0: taken as exact).

    ``params`` = (encoder, decoder) parameter groups (default: ``split_parameters(model, guide, x)``); ``exact``:
    the exact reference of a model with small discrete latents, for the exact-bias columns.
    """
    encoder, decoder = params if params is not None else split_parameters(model, guide, x)
    pyro.set_rng_seed(seed)
    k = int(elbo.num_particles)
    try:
        draws = draw_gradients(elbo, model, guide, x, encoder, decoder, num_draws, progress, f"{name}, K={k}")
    except NotImplementedError as err:  # Pyro's way of saying an ELBO does not handle a site (a discrete one, ...)
        said = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"estimator {name!r} cannot run on this model and guide: Pyro says {said!r}") from None
    var_e, snr_e = _group_stats(draws.encoder)
    var_d, snr_d = _group_stats(draws.decoder)
    enc_corrected, enc_low, enc_high = snr_bootstrap(draws.encoder, seed=seed)
    dec_corrected, dec_low, dec_high = snr_bootstrap(draws.decoder, seed=seed)
    estimates = ESTIMATORS[name].value if name in ESTIMATORS else ""
    exact_columns = {}
    if exact is not None and name in ESTIMATORS:
        groups = [(encoder, draws.encoder), (decoder, draws.decoder)]
        exact_columns = exact.columns(ESTIMATORS[name].estimates, k, draws.values, groups)
    return EstimatorStats(
        name=name,
        num_particles=k,
        estimates=estimates,
        value_mean=float(draws.values.mean()),
        value_std=float(draws.values.std()),
        bias=float(draws.values.mean()) - log_px,
        grad_var_encoder=var_e,
        grad_var_decoder=var_d,
        snr_encoder=snr_e,
        snr_decoder=snr_d,
        ms_per_step=1000.0 * float(draws.seconds.median()),
        num_draws=num_draws,
        snr_encoder_low=enc_low,
        snr_encoder_high=enc_high,
        snr_decoder_low=dec_low,
        snr_decoder_high=dec_high,
        snr_floor=snr_floor(num_draws),
        snr_encoder_corrected=enc_corrected,
        snr_decoder_corrected=dec_corrected,
        bias_stderr=math.sqrt(float(draws.values.var()) / num_draws + log_px_stderr**2),
        **exact_columns,
    )


def _group_stats(grads: Tensor) -> tuple[float, float]:
    """``gradient_variance_and_snr`` of a group's draws; NaN for a group without parameters (no torch warning)."""
    if grads.shape[-1] == 0:
        return math.nan, math.nan
    return gradient_variance_and_snr(grads)


def compare_estimators(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    x: Tensor,
    estimators: Mapping[str, ELBO],
    num_draws: int = 100,
    log_likelihood_samples: int = 5000,
    seed: int = 0,
    log_px: float | None = None,
    encoder_params: Sequence[Tensor] | None = None,
    decoder_params: Sequence[Tensor] | None = None,
    progress: bool = False,
    log_px_stderr: float = 0.0,
    exact: ExactReference | None = None,
) -> list[EstimatorStats]:
    """The comparison table for a fixed model, guide and batch x: one ``EstimatorStats`` per estimator.

    ``exact``: the exact reference (``pyro_vae.exact_reference.exact_reference``) of a model with small discrete
    latents; given, the reference log p(x) is its exact one (standard error 0) unless ``log_px`` is given, and the
    rows have the exact-bias columns.

    ``model`` and ``guide`` are any Pyro callables. ``log_px`` (IS log p(x) per example, averaged over x) is
    computed with ``log_likelihood_samples`` importance samples unless given (given: ``log_px_stderr`` is its
    standard error, 0 if exact). ``encoder_params`` and ``decoder_params`` are the two parameter groups the
    gradient statistics average over (default: the guide's and the model's, see ``split_parameters``); where
    that split cannot be made (one ``pyro.module`` holding both networks), a ``ParameterSplitWarning`` says so
    and the statistics are over all parameters together, in the encoder columns.
    """
    check_estimators_for_guide(guide, x, list(estimators))
    params = resolve_parameter_groups(model, guide, x, encoder_params, decoder_params, warn=True)[:2]
    if log_px is None and exact is not None:
        log_px, log_px_stderr = exact.log_likelihood(), 0.0
    if log_px is None:
        pyro.set_rng_seed(seed)
        estimate = importance_sample(model, guide, x, num_samples=log_likelihood_samples, progress=progress)
        log_px, log_px_stderr = estimate.mean_and_stderr()
        if estimate.khat is not None:  # the biases are measured against it: say when k-hat says it is unreliable
            warning = KhatSummary.of(estimate.khat, log_likelihood_samples).warning("the reference log p(x)")
            if warning:
                warnings.warn(warning.removeprefix("warning: "), UnreliableReferenceWarning, stacklevel=2)
    return [
        estimator_stats(name, elbo, model, guide, x, log_px, num_draws, seed, params, progress, log_px_stderr, exact)
        for name, elbo in estimators.items()
    ]


class UnreliableReferenceWarning(UserWarning):
    """The Pareto k-hat of the reference log p(x)'s importance weights is above the threshold for some examples."""


class ParameterSplitWarning(UserWarning):
    """The encoder/decoder split of the parameters could not be made; the statistics are over all of them."""


def parameter_split_problem(encoder: Sequence[Tensor], decoder: Sequence[Tensor]) -> str | None:
    """One line when the groups of ``split_parameters`` are not an encoder/decoder split (one is empty)."""
    if encoder and decoder:
        return None
    side = "the model uses no parameters the guide does not" if encoder else "the guide uses no parameters"
    return (
        f"the encoder/decoder split cannot be made ({side}: one pyro.module holding both networks?); the gradient "
        f"variance and SNR are over all {sum(p.numel() for p in [*encoder, *decoder])} parameter elements "
        "together; to split them, pass encoder_params= and decoder_params= (lists of parameters) to "
        "pyro_vae.compare_estimators"
    )


def resolve_parameter_groups(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    x: Tensor,
    encoder_params: Sequence[Tensor] | None = None,
    decoder_params: Sequence[Tensor] | None = None,
    warn: bool = False,
) -> tuple[list[Tensor], list[Tensor], str | None]:
    """(encoder, decoder, problem): the groups given, else ``split_parameters``; where the split cannot be made,
    all parameters in the first group, none in the second, and ``problem`` the line that says so (also issued as
    a ``ParameterSplitWarning`` with ``warn``)."""
    if encoder_params is not None and decoder_params is not None:
        return list(encoder_params), list(decoder_params), None
    encoder, decoder = split_parameters(model, guide, x)
    encoder = encoder if encoder_params is None else list(encoder_params)
    decoder = decoder if decoder_params is None else list(decoder_params)
    problem = parameter_split_problem(encoder, decoder)
    if problem is None:
        return encoder, decoder, None
    if warn:
        warnings.warn(problem, ParameterSplitWarning, stacklevel=3)
    return [*encoder, *decoder], [], problem


def snr_versus_particles(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    x: Tensor,
    log_px: float,
    names: Sequence[str] = ("iwae", "dreg"),
    particles: Sequence[int] = (1, 5, 10, 50),
    num_draws: int = 100,
    seed: int = 0,
    params: tuple[Sequence[Tensor], Sequence[Tensor]] | None = None,
    progress: bool = False,
    log_px_stderr: float = 0.0,
    exact: ExactReference | None = None,
) -> list[EstimatorStats]:
    """Rows for each estimator in ``names`` at each K in ``particles`` (Rainforth et al. 2018, fig. 1)."""
    check_estimators_for_guide(guide, x, list(names))
    params = params if params is not None else resolve_parameter_groups(model, guide, x, warn=True)[:2]
    return [
        estimator_stats(
            name,
            make_elbo(name, num_particles=k),
            model,
            guide,
            x,
            log_px,
            num_draws,
            seed,
            params,
            progress,
            log_px_stderr,
            exact,
        )
        for name in names
        for k in particles
    ]


COLUMNS = [f.name for f in fields(EstimatorStats)]


#: What each column of ``format_table`` is (also in ``compare-estimators --help`` and docs/estimators.md).
COLUMN_HELP = (
    "value: the estimator's value per example, mean over the R draws; std: its standard deviation over the draws; "
    "bias: value minus the reference IS log p(x), ± its standard error sqrt(std^2/R + SE(log p(x))^2); "
    "var enc / var dec: the variance over the draws of each parameter element's gradient (of the loss per "
    "example), averaged over the encoder's (the guide's) or the decoder's (the model's other) parameter "
    "elements; SNR enc / SNR dec: the gradient signal-to-noise ratio |E g| / std(g) averaged over the same "
    "elements, bias-corrected by the bootstrap, with its 95% basic bootstrap interval [low, high]; ms/step: "
    "median milliseconds per gradient step; with small discrete latents (exact enumeration), also exact bias: value "
    "minus the exact value of what the estimator estimates (the ELBO, the K-sample IWAE bound), ± its SE; grad bias: "
    "|E g - g*| / |g*| for the exact gradient g*, with its noise level sqrt(sum Var g / R) / |g*| in brackets"
)


def format_table(
    rows: Sequence[EstimatorStats],
    log_px: float | None = None,
    log_px_stderr: float | None = None,
    log_px_samples: int | None = None,
    groups: tuple[str, str] = ("enc", "dec"),
    exact_states: int | None = None,
) -> str:
    """A plain-text table (also valid Markdown); see ``COLUMN_HELP``. A parameter group whose statistics are NaN
    in every row (no parameters) has no columns; ``groups`` names the two groups in the header. ``exact_states``:
    log_px is exact, by enumeration of that many joint latent states."""
    shown = [
        (label, part)
        for label, part in zip(groups, ("encoder", "decoder"), strict=True)
        if any(math.isfinite(getattr(r, f"grad_var_{part}")) for r in rows)
    ]
    exact = any(math.isfinite(r.exact_bias) for r in rows)
    header = ["estimator", "K", "value", "std", "bias ± SE"]
    header += ["exact bias ± SE", *[f"grad bias {label} (noise)" for label, _ in shown]] if exact else []
    header += [f"var {label}" for label, _ in shown] + [f"SNR {label}" for label, _ in shown] + ["ms/step"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r.name, str(r.num_particles), f"{r.value_mean:.3f}", f"{r.value_std:.3f}", _bias_cell(r)]
        if exact:
            cells += [_exact_cell(r), *[_grad_bias_cell(r, part) for _, part in shown]]
        cells += [_number(getattr(r, f"grad_var_{part}")) for _, part in shown]
        cells += [_snr_cell(r, part) for _, part in shown]
        lines.append("| " + " | ".join([*cells, f"{r.ms_per_step:.2f}"]) + " |")
    if log_px is not None and exact_states:
        lines.append(
            f"\nexact log p(x) per example: {log_px:.3f} nats (enumeration of {exact_states} joint latent states; "
            "bias = value - log p(x))"
        )
    elif log_px is not None:
        how = f"importance sampling, K = {log_px_samples}" if log_px_samples else "reference"
        se = f" ± {log_px_stderr:.3f}" if log_px_stderr is not None and math.isfinite(log_px_stderr) else ""
        lines.append(f"\nIS log p(x) per example: {log_px:.3f}{se} nats ({how}; bias = value - IS log p(x))")
    floors = sorted({r.snr_floor for r in rows if math.isfinite(r.snr_floor)})
    if floors and shown:
        draws = sorted({r.num_draws for r in rows})
        lines.append(
            f"SNR: bias-corrected [95% basic bootstrap interval]; noise floor sqrt(2/(pi R)) = "
            f"{', '.join(f'{f:.3f}' for f in floors)} for R = {', '.join(map(str, draws))} draws: zero-mean "
            "gradients show this SNR, so values marked * (interval reaching below twice the floor) cannot be told "
            "from no signal"
        )
    return "\n".join(lines)


def _number(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else "n/a"


def _exact_cell(r: EstimatorStats) -> str:
    if not math.isfinite(r.exact_bias):
        return "n/a"
    return f"{r.exact_bias:+.3f} ± {r.exact_bias_stderr:.3f}"


def _grad_bias_cell(r: EstimatorStats, part: str) -> str:
    bias, noise = getattr(r, f"grad_bias_{part}"), getattr(r, f"grad_noise_{part}")
    return f"{bias:.3f} ({noise:.3f})" if math.isfinite(bias) else "n/a"


def _bias_cell(r: EstimatorStats) -> str:
    return f"{r.bias:+.3f} ± {r.bias_stderr:.3f}" if math.isfinite(r.bias_stderr) else f"{r.bias:+.3f}"


def _snr_cell(r: EstimatorStats, part: str) -> str:
    corrected, low, high = (getattr(r, f"snr_{part}{end}") for end in ("_corrected", "_low", "_high"))
    if not (math.isfinite(corrected) and math.isfinite(low)):
        return _number(getattr(r, f"snr_{part}"))
    mark = "*" if math.isfinite(r.snr_floor) and low < 2 * r.snr_floor else ""
    return f"{corrected:.3f}{mark} [{low:.3f}, {high:.3f}]"


def write_csv(rows: Sequence[EstimatorStats], path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow(asdict(r))


def write_json(payload: dict[str, Any], path: str | Path) -> None:
    def encode(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
        if isinstance(v, dict):
            return {k: encode(u) for k, u in v.items()}
        if isinstance(v, list):
            return [encode(u) for u in v]
        return v

    Path(path).write_text(json.dumps(encode(payload), indent=2) + "\n")


def plot_snr_versus_particles(rows: Sequence[EstimatorStats], path: str | Path) -> None:
    """SNR against K (log-log), one panel for the encoder and one for the decoder, a line per estimator."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [p for p in ("encoder", "decoder") if any(math.isfinite(getattr(r, f"snr_{p}")) for r in rows)]
    parts = parts or ["encoder"]
    fig, axes = plt.subplots(1, len(parts), figsize=(4.5 * len(parts), 3.6), sharex=True, squeeze=False)
    for ax, part in zip(axes[0], parts, strict=True):
        # Dashed lines with open markers so that coinciding curves (dreg's decoder gradient is iwae's) stay visible.
        for i, name in enumerate(dict.fromkeys(r.name for r in rows)):
            sel = sorted((r for r in rows if r.name == name), key=lambda r: r.num_particles)
            # The bias-corrected SNR, inside its basic bootstrap interval by construction.
            snr = [getattr(r, f"snr_{part}_corrected") for r in sel]
            low = [s - getattr(r, f"snr_{part}_low") for s, r in zip(snr, sel, strict=True)]
            high = [getattr(r, f"snr_{part}_high") - s for s, r in zip(snr, sel, strict=True)]
            ax.errorbar(
                [r.num_particles for r in sel],
                snr,
                yerr=[low, high] if all(map(math.isfinite, low + high)) else None,
                capsize=3,
                marker="os^v"[i % 4],
                linestyle="-" if i == 0 else "--",
                fillstyle="full" if i == 0 else "none",
                label=name,
            )
        floor = next((r.snr_floor for r in rows if math.isfinite(r.snr_floor)), math.nan)
        if math.isfinite(floor):
            ax.axhline(floor, color="grey", linestyle=":", label=f"noise floor, R = {rows[0].num_draws}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("K (particles)")
        ax.set_title(f"{part} gradient SNR |E g| / std g\n(bias-corrected, 95% basic bootstrap)", fontsize=10)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
