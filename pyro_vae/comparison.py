"""ELBO estimators side by side on one model, guide and batch: value, bias, gradient variance and SNR, cost.

For each estimator, R independent draws of (value, gradient) on the same batch x give:
- the value per example, mean and std over the draws (what it estimates: ``ESTIMATORS[name].value``);
- its bias against the importance-sampled log p(x) per example (``pyro_vae.evaluation.log_likelihood``);
- for every parameter element, the variance of its gradient and the signal-to-noise ratio |E g| / std(g)
  (Rainforth et al. 2018), averaged separately over the guide's (encoder's) and the model's (decoder's)
  parameters; gradients are of the loss per example (Pyro's batch-sum loss divided by N);
- milliseconds per step (one ``loss_and_grads``): the median over the draws (robust to a busy machine), after
  one untimed warm-up call (the JIT compiles there).
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
import torch
from pyro.infer import ELBO
from torch import Tensor, nn

from pyro_vae.estimators import ESTIMATORS, make_elbo
from pyro_vae.evaluation import log_likelihood
from pyro_vae.step import parameters_of


@dataclass
class EstimatorStats:
    """One row of the comparison (values in nats per example)."""

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


@dataclass
class GradientDraws:
    """R draws of an estimator on one batch: values per example (R,), flat gradients (R, P), seconds (R,)."""

    values: Tensor
    encoder: Tensor
    decoder: Tensor
    seconds: Tensor


def split_parameters(model: nn.Module, guide: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(encoder = the guide's parameters, decoder = the model's parameters that the guide does not own)."""
    encoder = parameters_of(guide)
    owned = {id(p) for p in encoder}
    decoder = [p for p in parameters_of(model) if id(p) not in owned]
    return encoder, decoder


def draw_gradients(
    elbo: ELBO,
    model: Callable[..., Any],
    guide: Callable[..., Any],
    x: Tensor,
    encoder_params: Sequence[nn.Parameter],
    decoder_params: Sequence[nn.Parameter],
    num_draws: int,
) -> GradientDraws:
    """Call ``elbo.loss_and_grads`` ``num_draws`` times (after one warm-up call) and record everything."""
    params = list(encoder_params) + list(decoder_params)
    n = x.shape[0]

    def flat(ps: Sequence[nn.Parameter]) -> Tensor:
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in ps]) / n

    for p in params:
        p.grad = None
    elbo.loss_and_grads(model, guide, x)
    values, enc, dec, seconds = [], [], [], []
    for _ in range(num_draws):
        for p in params:
            p.grad = None
        start = time.perf_counter()
        loss = elbo.loss_and_grads(model, guide, x)
        seconds.append(time.perf_counter() - start)
        values.append(-float(loss) / n)
        enc.append(flat(encoder_params))
        dec.append(flat(decoder_params))
    for p in params:
        p.grad = None
    return GradientDraws(torch.tensor(values), torch.stack(enc), torch.stack(dec), torch.tensor(seconds))


def gradient_variance_and_snr(grads: Tensor) -> tuple[float, float]:
    """(mean over elements of Var(g), mean over elements of |E g| / std(g)) for draws ``grads`` of shape (R, P).

    Elements whose gradient never varies (std = 0, e.g. parameters the loss does not touch) are left out
    of the SNR average; it is NaN when every element is constant.
    """
    var = grads.var(dim=0, unbiased=True)
    std = var.sqrt()
    varying = std > 0
    snr = (grads.mean(0).abs()[varying] / std[varying]).mean() if varying.any() else torch.tensor(math.nan)
    return float(var.mean()), float(snr)


def estimator_stats(
    name: str,
    elbo: ELBO,
    model: nn.Module,
    guide: nn.Module,
    x: Tensor,
    log_px: float,
    num_draws: int = 100,
    seed: int = 0,
) -> EstimatorStats:
    """One row: ``elbo`` drawn ``num_draws`` times on batch x; ``log_px`` is the IS log p(x) per example."""
    encoder, decoder = split_parameters(model, guide)
    pyro.set_rng_seed(seed)
    draws = draw_gradients(elbo, model, guide, x, encoder, decoder, num_draws)
    var_e, snr_e = gradient_variance_and_snr(draws.encoder)
    var_d, snr_d = gradient_variance_and_snr(draws.decoder)
    estimates = ESTIMATORS[name].value if name in ESTIMATORS else ""
    return EstimatorStats(
        name=name,
        num_particles=int(elbo.num_particles),
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
    )


def compare_estimators(
    model: nn.Module,
    guide: nn.Module,
    x: Tensor,
    estimators: Mapping[str, ELBO],
    num_draws: int = 100,
    log_likelihood_samples: int = 5000,
    seed: int = 0,
    log_px: float | None = None,
) -> list[EstimatorStats]:
    """The comparison table for a fixed model, guide and batch x: one ``EstimatorStats`` per estimator.

    ``log_px`` (IS log p(x) per example, averaged over x) is computed with ``log_likelihood_samples``
    importance samples unless given.
    """
    if log_px is None:
        pyro.set_rng_seed(seed)
        log_px = float(log_likelihood(model, guide, x, num_samples=log_likelihood_samples).mean())
    return [estimator_stats(name, elbo, model, guide, x, log_px, num_draws, seed) for name, elbo in estimators.items()]


def snr_versus_particles(
    model: nn.Module,
    guide: nn.Module,
    x: Tensor,
    log_px: float,
    names: Sequence[str] = ("iwae", "dreg"),
    particles: Sequence[int] = (1, 5, 10, 50),
    num_draws: int = 100,
    seed: int = 0,
) -> list[EstimatorStats]:
    """Rows for each estimator in ``names`` at each K in ``particles`` (Rainforth et al. 2018, fig. 1)."""
    return [
        estimator_stats(name, make_elbo(name, num_particles=k), model, guide, x, log_px, num_draws, seed)
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
            f"{r.snr_encoder:.3f}",
            f"{r.snr_decoder:.3f}",
            f"{r.ms_per_step:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if log_px is not None:
        lines.append(f"\nIS log p(x) per example: {log_px:.3f} nats (bias = value - IS log p(x))")
    return "\n".join(lines)


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
            ax.plot(
                [r.num_particles for r in sel],
                [getattr(r, f"snr_{part}") for r in sel],
                marker="os^v"[i % 4],
                linestyle="-" if i == 0 else "--",
                fillstyle="full" if i == 0 else "none",
                label=name,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("K (particles)")
        ax.set_title(f"{part} gradient SNR |E g| / std g")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
