"""I(x; z) and KL(q(z) || p(z)) ("ELBO surgery", Hoffman & Johnson 2016) against quadrature and exact limits.

Truths: in one latent dimension the aggregate posterior q(z) = (1/N) sum_i q(z|x_i) is a mixture of N Gaussians,
so I(x; z) = (1/N) sum_i int q_i log(q_i / q), KL(q(z) || p(z)) and the average KL are integrals that scipy's
quadrature computes independently; their identity I + marginal KL = average KL is checked on the quadrature
itself (1e-6). Limits: identical examples share one posterior, so I = 0; posteriors far apart do not overlap,
so I = log N.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch
from scipy import integrate, stats

from pyro_vae import collapse_diagnostics
from pyro_vae.collapse import aggregate_log_density
from pyro_vae.densities import Densities
from tests.helpers import one_thread  # noqa: F401 - the fixture, used by pytestmark
from tests.test_evaluation import StudentTPrior, linear_gaussian
from tests.test_path_estimators_any_guide import X_DIM, set_guide
from tests.test_path_estimators_any_guide import guide as two_level_guide
from tests.test_path_estimators_any_guide import model as two_level_model

pytestmark = pytest.mark.usefixtures("one_thread")

X = [[0.0, 0.0], [1.0, 0.5], [2.0, -1.0], [-1.5, 0.3]]


def one_dimensional(prior=None, weight=(0.8, -0.6), scale=0.7):
    model, guide = linear_gaussian(x_dim=2, z_dim=1, prior=prior)
    guide.set_affine(torch.tensor([weight]), torch.tensor([0.1]), torch.tensor([scale]))
    return model, guide, torch.tensor(X)


def quadrature(guide, x, log_prior):
    """(I, marginal KL, average KL) by scipy quadrature over z."""
    loc, scale = (t.detach().numpy()[:, 0] for t in guide.loc_scale(x))
    qs = [stats.norm(m, s) for m, s in zip(loc, scale, strict=True)]

    def q_bar(z):
        return np.mean([q.pdf(z) for q in qs], axis=0)

    def quad(f):
        return integrate.quad(f, -12, 12, limit=400, epsabs=1e-11, epsrel=1e-11)[0]

    info = np.mean([quad(lambda z, q=q: q.pdf(z) * (q.logpdf(z) - np.log(q_bar(z)))) for q in qs])
    marginal = quad(lambda z: q_bar(z) * (np.log(q_bar(z)) - log_prior(z)))
    kl = np.mean([quad(lambda z, q=q: q.pdf(z) * (q.logpdf(z) - log_prior(z))) for q in qs])
    return info, marginal, kl


@pytest.mark.parametrize(
    ("prior", "log_prior", "analytic"),
    [(None, stats.norm.logpdf, True), (StudentTPrior(1), stats.t(3.0).logpdf, False)],
    ids=["standard-normal", "student-t"],
)
def test_information_and_marginal_kl_match_quadrature(prior, log_prior, analytic, float64):
    model, guide, x = one_dimensional(prior)
    info, marginal, kl = quadrature(guide, x, log_prior)
    assert info + marginal == pytest.approx(kl, abs=1e-6)  # the identity, on numbers the code did not make
    pyro.set_rng_seed(0)
    result = collapse_diagnostics(model, guide, x, num_samples=20000)
    assert result.kl_analytic is analytic
    if analytic:
        assert result.kl == pytest.approx(kl, abs=1e-6)
    assert abs(result.mutual_information - info) < 4 * result.mutual_information_stderr
    assert abs(result.marginal_kl - marginal) < 4 * result.marginal_kl_stderr
    assert result.mutual_information + result.marginal_kl == pytest.approx(result.kl, abs=1e-6 if analytic else 0.02)


def test_identical_examples_carry_no_information(float64):
    model, guide, _ = one_dimensional()
    x = torch.tensor([X[1]] * 5)
    result = collapse_diagnostics(model, guide, x, num_samples=10)
    assert abs(result.mutual_information) < 1e-6
    assert result.marginal_kl == pytest.approx(result.kl, abs=1e-6)


def test_posteriors_that_do_not_overlap_carry_log_n(float64):
    model, guide, _ = one_dimensional(weight=(40.0, 0.0), scale=0.01)
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.0, 0.0]])  # means 40 apart, std 0.01
    result = collapse_diagnostics(model, guide, x, num_samples=10)
    assert result.mutual_information == pytest.approx(math.log(5), abs=1e-6)
    assert result.max_mutual_information == pytest.approx(math.log(5))


def test_running_the_guide_again_gives_the_broadcast_aggregate_density(float64):
    model, guide = linear_gaussian(x_dim=4, z_dim=3)
    x = torch.randn(6, 4)
    densities = Densities.of(model, guide, x)
    values, _ = densities.sample_guide(3)
    torch.testing.assert_close(
        aggregate_log_density(densities, values, rerun=True), aggregate_log_density(densities, values, rerun=False)
    )


def test_a_two_level_guide_goes_through_the_rerun_and_identical_examples_carry_no_information(float64):
    pyro.clear_param_store()
    set_guide(perturb=0.2)
    two_level_model(torch.zeros(1, X_DIM))
    x = torch.ones(4, X_DIM)
    result = collapse_diagnostics(two_level_model, two_level_guide, x, num_samples=50)
    assert result.kl_analytic is False  # KL(q(z2|z1) || p(z2)) at a sampled z1 is a draw, not the KL
    assert abs(result.mutual_information) < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize(
    "prior", [None, StudentTPrior(1)], ids=["standard-normal (analytic KL)", "student-t (Monte Carlo KL)"]
)
def test_the_standard_errors_are_the_spread_of_repeated_estimates_on_the_same_examples(prior, float64):
    """The stated SEs are Monte Carlo errors for these examples: over 200 repetitions on the same 4 examples (whose
    per-example terms differ a lot, so a SE that pooled them would be far too large), the spread of the estimates
    equals the root-mean-square stated SE. The std of 200 repetitions has a relative standard error of
    1/sqrt(398) = 5%: the ratio is within 3 of them (measured 0.96-1.04); a SE twice too large gives 0.5."""
    model, guide, x = one_dimensional(prior)
    pyro.set_rng_seed(5)
    runs = [collapse_diagnostics(model, guide, x, num_samples=8) for _ in range(200)]
    for key in ("mutual_information", "marginal_kl"):
        spread = float(torch.tensor([getattr(r, key) for r in runs]).std())
        stated = math.sqrt(float(torch.tensor([getattr(r, f"{key}_stderr") ** 2 for r in runs]).mean()))
        assert spread / stated == pytest.approx(1.0, abs=0.15), (key, spread, stated)
        assert all(math.isfinite(getattr(r, f"{key}_example_std")) for r in runs)


def test_one_draw_per_example_has_no_monte_carlo_error_estimate(float64):
    model, guide, x = one_dimensional()
    result = collapse_diagnostics(model, guide, x, num_samples=1)
    assert math.isnan(result.mutual_information_stderr) and math.isnan(result.marginal_kl_stderr)
    assert math.isfinite(result.mutual_information_example_std)


def test_the_collapse_line_names_the_evidence_and_what_to_try():
    from pyro_vae.collapse import collapse_message

    full = collapse_message(0, 3, 0.0)
    assert full is not None and "posterior collapse: 0 of 3" in full and "warm-up" in full and "free bits" in full
    assert "posterior collapse" in collapse_message(2, 3, 0.02, [0.01, 0.005, 0.005])  # KL below 0.01 per dimension
    partial = collapse_message(2, 3, 5.0, [2.5, 2.5, 0.001])
    assert partial is not None and partial.startswith("partial collapse: 1 of 3") and "count in both" not in partial
    # 3 active by the variance of the means and 1 of 3 below 0.01 nats: the overlap of the two measures is named
    overlap = collapse_message(3, 3, 5.0, [2.5, 2.5, 0.006])
    assert overlap is not None and overlap.endswith(
        "3 active by Var_x E_q[z_j|x] (Burda et al.'s measure: 1 dimension near both thresholds counts in both)"
    )
    assert "2 dimensions near both thresholds count in both" in collapse_message(3, 3, 5.0, [2.5, 0.004, 0.006])
    assert collapse_message(3, 3, 5.0, [2.0, 2.0, 1.0]) is None
    assert collapse_message(3, 3, 5.0, None) is None  # a prior with no per-dimension KL: the total only


def test_check_collapse_sees_a_guide_that_is_the_prior_and_not_one_that_is_the_posterior(float64):
    from pyro_vae.evaluation import check_collapse

    model, guide, _ = one_dimensional()
    x = torch.randn(50, 2)
    assert check_collapse(model, guide, x) is None  # codes 0.8 x_0 - 0.6 x_1: variance 1 over x
    guide.set_affine(torch.zeros(1, 2), torch.zeros(1), torch.ones(1))  # q(z|x) = p(z) for every x
    message = check_collapse(model, guide, x)
    assert message is not None and message.startswith("posterior collapse: 0 of 1 latent dimensions active")


@pytest.mark.slow
def test_train_says_when_the_run_ended_in_collapse(tmp_path, capsys):
    """beta = 30 on the 8x8 digits: the KL is priced out (KL 0.009 nats, no active unit, measured)."""
    from pyro_vae.cli import main

    common = ["train", "--dataset", "digits", "--no-progress", "--z-dim", "3", "--hidden", "32", "--epochs", "2"]
    assert main([*common, "--beta", "30", "--out", str(tmp_path / "collapsed")]) == 0
    err = capsys.readouterr().err
    assert "pyro-vae: warning: posterior collapse: 0 of 3 latent dimensions active" in err
    assert err.count("posterior collapse") == 1
