"""Evaluating the models that read labels: M2's classifier accuracy and log-likelihoods with y handled exactly.

For the conditional VAE, log p(x|y) by importance sampling with q(z|x,y) as the proposal (Burda et al. 2016):

    log p(x|y) ~= log (1/S) sum_s p(x|z_s,y) p(z_s|y) / q(z_s|x,y),   z_s ~ q(z|x,y).

For M2, y is summed out exactly (Kingma et al. 2014's p(x) = sum_y p(y) p(x|y)), each p(x|y) by the estimate above:

    log p(x) ~= logsumexp_y [log p(y) + log p_hat(x|y)].

sum_y p(y) p_hat(x|y) is unbiased for p(x), so its log is a stochastic lower bound that tightens as S grows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from pyro_vae.data import VAEData
from pyro_vae.elbo_terms import elbo_terms
from pyro_vae.labelled_data import test_input

#: Rows of x per block and samples z per chunk of the importance sums (memory: block x chunk x D values).
BLOCK_ROWS = 500
SAMPLE_CHUNK = 100


@torch.no_grad()
def classifier_accuracy(guide: Any, x: Tensor, y: Tensor, batch_size: int = 4096) -> float:
    """The fraction of rows of ``x`` ``(N, *x_shape)`` whose argmax_y q(y|x) (``guide.predict``) equals ``y``."""
    hits = sum(
        int((guide.predict(xb).cpu() == yb.cpu()).sum())
        for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True)
    )
    return hits / x.shape[0]


@torch.no_grad()
def log_px_given_y(model: Any, guide: Any, x: Tensor, y: Tensor, num_samples: int = 1000) -> Tensor:
    """The importance-sampled log p(x|y) of each row (N,), with ``num_samples`` z ~ q(z|x,y) per row."""
    out = []
    for xb, yb in zip(x.split(BLOCK_ROWS), y.split(BLOCK_ROWS), strict=True):
        q, prior = guide.posterior_given(xb, yb), model.latent_prior(yb)
        chunks = []
        for s in range(0, num_samples, SAMPLE_CHUNK):
            z = q.sample((min(SAMPLE_CHUNK, num_samples - s),))  # (S', n, z_dim)
            chunks.append(model.decode(z, yb).log_prob(xb) + prior.log_prob(z) - q.log_prob(z))
        out.append(torch.logsumexp(torch.cat(chunks), 0) - math.log(num_samples))
    return torch.cat(out)


@torch.no_grad()
def m2_log_likelihood(model: Any, guide: Any, x: Tensor, num_samples: int = 1000) -> Tensor:
    """log p(x) of each row (N,) under M2, y summed exactly: logsumexp_y [log p(y) + log p_hat(x|y)]."""
    log_py = model.class_log_prior()
    terms = [
        log_py[k] + log_px_given_y(model, guide, x, torch.full((x.shape[0],), k, device=x.device), num_samples)
        for k in range(model.classes)
    ]
    return torch.logsumexp(torch.stack(terms), 0)


@dataclass
class LabelledEvaluation:
    """What ``evaluate_labelled`` measured on the test set (nats per example; accuracy a fraction)."""

    model: str
    num_examples: int
    num_samples: int
    elbo: float
    log_likelihood: float
    log_likelihood_stderr: float
    accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        given = "log p(x|y)" if self.model == "conditional" else "log p(x), y summed exactly"
        rows = [
            f"  test ELBO          {self.elbo:10.3f} nats",
            f"  IS {given}: {self.log_likelihood:.3f} +- {self.log_likelihood_stderr:.3f} nats "
            f"(K = {self.num_samples})",
        ]
        if self.accuracy is not None:
            rows.append(
                f"  classifier q(y|x) test accuracy {100 * self.accuracy:.2f}% (error {100 - 100 * self.accuracy:.2f}%)"
            )
        return rows


def evaluate_labelled(
    model: Any, guide: Any, data: VAEData, num_samples: int = 1000, num_examples: int | None = None
) -> LabelledEvaluation:
    """On the test set of ``data`` (its first ``num_examples``): the test ELBO, the IS log-likelihood (conditional
    VAE: log p(x|y); M2: log p(x) with y summed exactly) and, for M2, the accuracy of its classifier q(y|x)."""
    packed = test_input(model, data)[:num_examples]
    assert data.test_y is not None
    x, y = data.test_x_eval[:num_examples], data.test_y[:num_examples].to(packed.device)
    terms = elbo_terms(model, guide, packed)
    if getattr(model, "needs_all_labels", False):
        per_row, name, accuracy = log_px_given_y(model, guide, x, y, num_samples), "conditional", None
    else:
        per_row, name = m2_log_likelihood(model, guide, x, num_samples), "m2"
        accuracy = classifier_accuracy(guide, x, y)
    se = float(per_row.double().std() / math.sqrt(per_row.numel())) if per_row.numel() > 1 else float("nan")
    return LabelledEvaluation(name, x.shape[0], num_samples, terms.elbo, float(per_row.double().mean()), se, accuracy)
