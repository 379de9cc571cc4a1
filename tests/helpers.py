"""Shared test helpers: the closed-form batch loss computed from a guide trace (eq. 43), and a crash mid-run."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pyro.poutine as poutine
import pytest
import torch
from pyro_vae.models.likelihoods import BernoulliLikelihood, DiscretizedLogisticLikelihood, GaussianLikelihood
from pyro_vae.models.priors import GaussianPrior, StandardNormalPrior
from torch import Tensor

from pyro_vae.closed_form import (
    batch_loss,
    bernoulli_log_likelihood,
    discretized_logistic_log_likelihood,
    gaussian_kl,
    gaussian_log_likelihood,
    standard_normal_kl,
)


def closed_form_terms(model, guide, x: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """(KL_i, log p(x_i|z_i)) per datum, written from the derivation, not from Pyro's distributions."""
    loc, scale = guide.loc_scale(x)
    prior = model.prior
    if isinstance(prior, StandardNormalPrior):
        kl = standard_normal_kl(loc, torch.log(scale**2))  # eq. 40
    elif isinstance(prior, GaussianPrior):
        kl = gaussian_kl(loc, scale, prior.loc, prior.scale).sum(-1)  # line before eq. 40
    else:
        raise TypeError(f"no closed form for {type(prior).__name__}")
    decoded = model.decoder(z)
    lik = model.likelihood
    # The closed forms sum over the last dimension: images (N, C, H, W) are compared as rows of C * H * W pixels.
    flat_x, flat = x.reshape(x.shape[0], -1), decoded.reshape(x.shape[0], -1)
    if isinstance(lik, BernoulliLikelihood):
        log_lik = bernoulli_log_likelihood(flat_x, flat)
    elif isinstance(lik, GaussianLikelihood):
        log_lik = gaussian_log_likelihood(flat_x, flat, lik.sigma)
    elif isinstance(lik, DiscretizedLogisticLikelihood):
        scale = lik.scale.expand_as(decoded).reshape(x.shape[0], -1)
        log_lik = discretized_logistic_log_likelihood(flat_x, flat, scale, lik.bins)
    else:
        raise TypeError(f"no closed form for {type(model.likelihood).__name__}")
    return kl, log_lik


def guide_trace(guide, x: Tensor):
    return poutine.trace(guide).get_trace(x)


def closed_form_loss(model, guide, x: Tensor, trace) -> Tensor:
    """Eq. 43 with L = 1 at the z recorded in ``trace``."""
    kl, log_lik = closed_form_terms(model, guide, x, trace.nodes["z"]["value"])
    return batch_loss(kl, log_lik)


@pytest.fixture
def one_thread():
    """Run the test on one torch thread: its many small tensor operations are fastest there, and a second thread
    competing for a busy machine's cores made them ten times slower (measured on AIS at load 8)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextlib.contextmanager
def power_cut_at_step(monkeypatch: pytest.MonkeyPatch, n: int) -> Iterator[None]:
    """Inside the block, the n-th training step raises ``RuntimeError("power cut")`` (a crash between two
    checkpoints), which the block expects; afterwards the steps are real again."""
    from pyro_vae.step import TrainStep

    real_call = TrainStep.__call__
    calls = {"n": 0}

    def crash(self: TrainStep, x: Tensor, **kwargs: object) -> float:
        calls["n"] += 1
        if calls["n"] == n:
            raise RuntimeError("power cut")
        return real_call(self, x, **kwargs)

    monkeypatch.setattr(TrainStep, "__call__", crash)
    try:
        with pytest.raises(RuntimeError, match="power cut"):
            yield
    finally:
        monkeypatch.setattr(TrainStep, "__call__", real_call)
