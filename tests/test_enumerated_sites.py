"""Models with a discrete site marked ``infer={"enumerate": ...}``, in the style of Pyro's ss_vae_M2.py (a class label y
and a continuous code z): what the evaluation functions do with them.

Truth: with a linear-Gaussian decoder, x | y ~ N(b_y, W W^T + sigma^2 I) after integrating z out, so
log p(x) = logsumexp_y [log p(y) + log N(x; b_y, W W^T + sigma^2 I)] exactly (scipy's multivariate normal).
"""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO
from scipy import stats
from scipy.special import logsumexp

from pyro_vae.comparison import compare_estimators, estimator_stats
from pyro_vae.errors import UserError
from pyro_vae.estimators import make_elbo
from pyro_vae.importance import log_likelihood
from tests.helpers import one_thread  # noqa: F401 - the fixture, used by pytestmark

pytestmark = pytest.mark.usefixtures("one_thread")

X, Z, C, SIGMA = 4, 2, 3, 0.7
GEN = torch.Generator().manual_seed(0)
W = torch.randn(X, Z, generator=GEN, dtype=torch.float64)
B = 2 * torch.randn(C, X, generator=GEN, dtype=torch.float64)
PRIOR_Y = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)


def model(x):
    with pyro.plate("data", x.shape[0]):
        y = pyro.sample("y", dist.OneHotCategorical(PRIOR_Y), infer={"enumerate": "parallel"})
        z = pyro.sample("z", dist.Normal(torch.zeros(Z, dtype=x.dtype), 1.0).to_event(1))
        loc = z @ W.T + y @ B
        return pyro.sample("x", dist.Normal(loc, SIGMA).to_event(1), obs=x)


def guide(x):
    """q(y|x) q(z|x,y), y marked for enumeration as ss_vae_M2's config_enumerate guide does."""
    with pyro.plate("data", x.shape[0]):
        # q(y|x) uniform: any q(y|x) that gives every class some mass is a valid proposal for y.
        y = pyro.sample(
            "y", dist.OneHotCategorical(logits=torch.zeros(C, dtype=x.dtype)), infer={"enumerate": "parallel"}
        )
        # The exact posterior mean of z given x and y, widened: a good but imperfect proposal.
        cov = torch.linalg.inv(torch.eye(Z, dtype=x.dtype) + W.T @ W / SIGMA**2)
        loc = ((x - y @ B) @ W / SIGMA**2) @ cov
        pyro.sample("z", dist.Normal(loc, 1.2 * cov.diagonal().sqrt()).to_event(1))


def guide_without_y(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], Z, dtype=x.dtype), 1.0).to_event(1))


def exact_log_px(x: torch.Tensor) -> np.ndarray:
    cov = (W @ W.T + SIGMA**2 * torch.eye(X, dtype=torch.float64)).numpy()
    per_class = [
        np.log(PRIOR_Y[c].item()) + stats.multivariate_normal(B[c].numpy(), cov).logpdf(x.numpy()) for c in range(C)
    ]
    return logsumexp(np.stack(per_class), axis=0)


@pytest.fixture
def x():
    pyro.set_rng_seed(1)
    with torch.no_grad():
        return pyro.poutine.uncondition(model)(torch.zeros(6, X, dtype=torch.float64))


def test_log_likelihood_samples_the_guides_enumerated_label_honestly_and_matches_the_exact_value(x):
    pyro.set_rng_seed(2)
    estimate, stderr = log_likelihood(model, guide, x, num_samples=3000, return_stderr=True)
    exact = torch.from_numpy(exact_log_px(x))
    assert torch.all((estimate - exact).abs() < 4 * stderr), ((estimate - exact) / stderr).tolist()


def test_a_label_enumerated_in_the_model_but_absent_from_the_guide_is_refused_in_one_line(x):
    with pytest.raises(UserError, match="model site 'y' is marked infer=\\{'enumerate': 'parallel'\\}") as err:
        log_likelihood(model, guide_without_y, x, num_samples=10)
    assert "\n" not in str(err.value)


def test_reparameterised_only_estimators_are_refused_on_the_enumerated_label_before_any_draw(x):
    elbos = {"trace": make_elbo("trace"), "meanfield": make_elbo("meanfield")}
    with pytest.raises(
        UserError, match="trace, meanfield need a reparameterised guide, but guide site 'y' \\(OneHotCat"
    ) as e:
        compare_estimators(model, guide, x, elbos, num_draws=2, log_likelihood_samples=10)
    assert "marked for enumeration" in str(e.value) and "\n" not in str(e.value)


def test_pyros_raw_not_implemented_error_becomes_one_line(x):
    with pyro.validation_enabled(True), pytest.raises(UserError, match="estimator 'mine' cannot run .*Pyro says"):
        estimator_stats("mine", TraceMeanField_ELBO(), model, guide, x, log_px=0.0, num_draws=2, params=([], []))
