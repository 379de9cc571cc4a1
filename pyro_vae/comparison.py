"""ELBO estimators side by side on one model, guide and batch: value, bias, gradient variance and SNR, cost.

Any Pyro model and guide: functions, bound methods (``vae.model``, ``vae.guide`` as in Pyro's
examples/vae/vae.py) or modules. For each estimator, R independent draws of (value, gradient) on the same batch
x give:

- the value per example, mean and std over the draws (what it estimates: ``ESTIMATORS[name].value``);
- its bias against the importance-sampled log p(x) per example (``pyro_vae.importance.log_likelihood``);
- for every parameter element, the variance of its gradient and the signal-to-noise ratio |E g| / std(g)
  (Rainforth et al. 2018), averaged separately over two groups: by default the guide's ("encoder") and the
  model's other ("decoder") parameters as Pyro's param store sees them when the pair runs on x (plus those of
  the modules behind the callables); gradients are of the loss per example (Pyro's batch-sum loss divided by N);
- a 95% (basic) bootstrap interval for each averaged SNR (the R draws resampled), and the noise floor: with R draws a
  gradient element of mean zero still shows |mean| / std ~ sqrt(2 / (pi R)) on average (the mean of a
  half-normal), 0.08 at R = 100, so an SNR near the floor cannot be told from no signal at all;
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import ELBO
from torch import Tensor

from pyro_vae.estimators import ESTIMATORS, make_elbo
from pyro_vae.estimators.detached_q import modules_of
from pyro_vae.importance import log_likelihood
from pyro_vae.progress import progress_bar
from pyro_vae.snr import gradient_variance_and_snr, snr_bootstrap_interval, snr_floor

__all__ = [
    "EstimatorStats",
    "GradientDraws",
    "compare_estimators",
    "draw_gradients",
    "estimator_stats",
    "format_table",
    "gradient_variance_and_snr",
    "plot_snr_versus_particles",
    "snr_bootstrap_interval",
    "snr_floor",
    "snr_versus_particles",
    "split_parameters",
    "write_csv",
    "write_json",
]


@dataclass
class EstimatorStats:
    """One row of the comparison (values in nats per example); ``snr_*_low/high``: the 95% basic bootstrap
    interval (it corrects the SNR estimate's upward bias, so it may lie below the estimate);
    ``snr_floor``: sqrt(2 / (pi R)), the SNR that zero-mean gradients show with R draws."""

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
) -> EstimatorStats:
    """One row: ``elbo`` drawn ``num_draws`` times on batch x; ``log_px`` is the IS log p(x) per example.

    ``params`` = (encoder, decoder) parameter groups (default: ``split_parameters(model, guide, x)``).
    """
    encoder, decoder = params if params is not None else split_parameters(model, guide, x)
    pyro.set_rng_seed(seed)
    k = int(elbo.num_particles)
    draws = draw_gradients(elbo, model, guide, x, encoder, decoder, num_draws, progress, f"{name}, K={k}")
    var_e, snr_e = gradient_variance_and_snr(draws.encoder)
    var_d, snr_d = gradient_variance_and_snr(draws.decoder)
    enc_low, enc_high = snr_bootstrap_interval(draws.encoder, seed=seed)
    dec_low, dec_high = snr_bootstrap_interval(draws.decoder, seed=seed)
    estimates = ESTIMATORS[name].value if name in ESTIMATORS else ""
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
    )


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
) -> list[EstimatorStats]:
    """The comparison table for a fixed model, guide and batch x: one ``EstimatorStats`` per estimator.

    ``model`` and ``guide`` are any Pyro callables. ``log_px`` (IS log p(x) per example, averaged over x) is
    computed with ``log_likelihood_samples`` importance samples unless given. ``encoder_params`` and
    ``decoder_params`` are the two parameter groups the gradient statistics average over (default: the guide's
    and the model's, see ``split_parameters``).
    """
    encoder, decoder = split_parameters(model, guide, x)
    params = (
        encoder if encoder_params is None else list(encoder_params),
        decoder if decoder_params is None else list(decoder_params),
    )
    if log_px is None:
        pyro.set_rng_seed(seed)
        estimate = log_likelihood(model, guide, x, num_samples=log_likelihood_samples, progress=progress)
        log_px = float(estimate.mean())  # type: ignore[union-attr]
    return [
        estimator_stats(name, elbo, model, guide, x, log_px, num_draws, seed, params, progress)
        for name, elbo in estimators.items()
    ]


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
) -> list[EstimatorStats]:
    """Rows for each estimator in ``names`` at each K in ``particles`` (Rainforth et al. 2018, fig. 1)."""
    params = params if params is not None else split_parameters(model, guide, x)
    return [
        estimator_stats(
            name, make_elbo(name, num_particles=k), model, guide, x, log_px, num_draws, seed, params, progress
        )
        for name in names
        for k in particles
    ]


COLUMNS = [f.name for f in fields(EstimatorStats)]


def format_table(rows: Sequence[EstimatorStats], log_px: float | None = None) -> str:
    """A plain-text table (also valid Markdown)."""
    header = ["estimator", "K", "value", "std", "bias", "var enc", "var dec", "SNR enc", "SNR dec", "ms/step"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [
            r.name,
            str(r.num_particles),
            f"{r.value_mean:.3f}",
            f"{r.value_std:.3f}",
            f"{r.bias:+.3f}",
            f"{r.grad_var_encoder:.3g}",
            f"{r.grad_var_decoder:.3g}",
            _snr_cell(r.snr_encoder, r.snr_encoder_low, r.snr_encoder_high, r.snr_floor),
            _snr_cell(r.snr_decoder, r.snr_decoder_low, r.snr_decoder_high, r.snr_floor),
            f"{r.ms_per_step:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if log_px is not None:
        lines.append(f"\nIS log p(x) per example: {log_px:.3f} nats (bias = value - IS log p(x))")
    floors = sorted({r.snr_floor for r in rows if math.isfinite(r.snr_floor)})
    if floors:
        draws = sorted({r.num_draws for r in rows})
        lines.append(
            f"SNR [95% bootstrap interval]; noise floor sqrt(2/(pi R)) = {', '.join(f'{f:.3f}' for f in floors)} "
            f"for R = {', '.join(map(str, draws))} draws: zero-mean gradients show this SNR, so values marked * "
            "(interval reaching below twice the floor) cannot be told from no signal"
        )
    return "\n".join(lines)


def _snr_cell(snr: float, low: float, high: float, floor: float) -> str:
    if not math.isfinite(low):
        return f"{snr:.3f}"
    mark = "*" if math.isfinite(floor) and low < 2 * floor else ""
    return f"{snr:.3f}{mark} [{low:.3f}, {high:.3f}]"


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

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharex=True)
    for ax, part in zip(axes, ("encoder", "decoder"), strict=True):
        # Dashed lines with open markers so that coinciding curves (dreg's decoder gradient is iwae's) stay visible.
        for i, name in enumerate(dict.fromkeys(r.name for r in rows)):
            sel = sorted((r for r in rows if r.name == name), key=lambda r: r.num_particles)
            snr = [getattr(r, f"snr_{part}") for r in sel]
            # The bias-corrected interval need not contain the (upward-biased) estimate: clip the bars at it.
            low = [max(0.0, s - getattr(r, f"snr_{part}_low")) for s, r in zip(snr, sel, strict=True)]
            high = [max(0.0, getattr(r, f"snr_{part}_high") - s) for s, r in zip(snr, sel, strict=True)]
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
        ax.set_title(f"{part} gradient SNR |E g| / std g (95% bootstrap)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
