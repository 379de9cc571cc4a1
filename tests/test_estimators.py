"""ELBO estimators: the jit fixes, IWAE/Renyi against Pyro's RenyiELBO, STL and DReG against their definitions.

Truths used: Pyro's own estimators on the same random draws (same seed, hence the same z), the closed-form
ELBO of the linear-Gaussian model (whose gradient is the expectation of every unbiased ELBO gradient
estimator) and its exact posterior.
"""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import SVI, JitTraceMeanField_ELBO, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.optim import Adam

from pyro_vae import VAEConfig, build
from pyro_vae.comparison import draw_gradients, split_parameters
from pyro_vae.errors import UserError
from pyro_vae.estimators import ESTIMATORS, make_elbo
from pyro_vae.linear_gaussian import exact_elbo, orthogonal_weight, set_guide_to_posterior


def small_vae(seed: int = 0, x_dim: int = 6, z_dim: int = 2):
    torch.manual_seed(seed)
    return build(VAEConfig(x_dim=x_dim, z_dim=z_dim, hidden=(5,)))


def binary_batch(n: int, x_dim: int = 6, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.rand(n, x_dim, generator=g))


def loss_and_grads(elbo, model, guide, x, seed):
    params = split_parameters(model, guide)[0] + split_parameters(model, guide)[1]
    for p in params:
        p.grad = None
    pyro.set_rng_seed(seed)
    loss = elbo.loss_and_grads(model, guide, x)
    grads = [p.grad.detach().clone() for p in params]
    for p in params:
        p.grad = None
    return loss, grads


def assert_same(a, b, rel=1e-6):
    loss_a, grads_a = a
    loss_b, grads_b = b
    assert loss_a == pytest.approx(loss_b, rel=rel)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(ga, gb, rtol=rel, atol=rel * float(gb.abs().max()))


# ---------------------------------------------------------------- JIT


def test_jit_meanfield_traces_once_while_pyros_retraces_every_call():
    model, guide = small_vae()
    x = binary_batch(8)
    calls = {"n": 0}

    def counted_model(x):
        calls["n"] += 1
        return model(x)

    def model_calls_after_each_step(elbo, steps=5):
        calls["n"] = 0
        counts = []
        for _ in range(steps):
            elbo.loss_and_grads(counted_model, guide, x)
            counts.append(calls["n"])
        return counts

    ours = make_elbo("jit-meanfield")
    counts = model_calls_after_each_step(ours)
    assert counts[0] > 0 and counts[1:] == [counts[0]] * 4  # traced during the first step only
    assert ours.num_compilations == 1

    shipped = model_calls_after_each_step(JitTraceMeanField_ELBO())
    assert all(b > a for a, b in zip(shipped, shipped[1:], strict=False))  # pyro 1.9.2 re-traces every step


@pytest.mark.parametrize("jit_name", ["jit-meanfield", "jit-trace", "jit-iwae", "jit-renyi", "jit-stl"])
def test_jit_variant_equals_its_plain_estimator_on_the_same_z(jit_name, float64):
    plain_name = jit_name[len("jit-") :]
    options = {"num_particles": 3} if plain_name in ("iwae", "renyi") else {}
    model, guide = small_vae()
    jit, plain = make_elbo(jit_name, **options), make_elbo(plain_name, **options)
    for n, seeds in ((8, (0, 1, 2)), (5, (3,))):  # a new batch size compiles a new graph
        x = binary_batch(n)
        # Warm-up: compiling runs the model twice, and guessing the plate nesting once, drawing other z.
        loss_and_grads(jit, model, guide, x, 0), loss_and_grads(plain, model, guide, x, 0)
        for seed in seeds:
            assert_same(loss_and_grads(jit, model, guide, x, seed), loss_and_grads(plain, model, guide, x, seed))
    assert jit.num_compilations == 2


def test_jit_meanfield_compiles_per_model_not_only_for_the_first(float64):
    x = binary_batch(8)
    jit = make_elbo("jit-meanfield")
    for seed in (0, 1):
        model, guide = small_vae(seed)
        loss_and_grads(jit, model, guide, x, 0)  # compile (draws other z)
        assert_same(loss_and_grads(jit, model, guide, x, 7), loss_and_grads(TraceMeanField_ELBO(), model, guide, x, 7))


# ---------------------------------------------------------------- IWAE and Renyi


@pytest.mark.parametrize(("name", "alpha"), [("iwae", 0.0), ("renyi", 0.5), ("renyi", -0.5)])
def test_iwae_and_renyi_equal_pyros_renyi_elbo_on_the_same_z(name, alpha, float64):
    model, guide = small_vae()
    x = binary_batch(8)
    ours = make_elbo(name, num_particles=4) if name == "iwae" else make_elbo(name, alpha=alpha, num_particles=4)
    pyros = RenyiELBO(alpha=alpha, num_particles=4, vectorize_particles=True)
    for seed in (0, 1):
        assert_same(loss_and_grads(ours, model, guide, x, seed), loss_and_grads(pyros, model, guide, x, seed))


def test_renyi_at_alpha_one_is_the_k_sample_elbo(float64):
    model, guide = small_vae()
    x = binary_batch(8)
    renyi = make_elbo("renyi", alpha=1.0, num_particles=4)
    trace = Trace_ELBO(num_particles=4, vectorize_particles=True)
    assert_same(loss_and_grads(renyi, model, guide, x, 0), loss_and_grads(trace, model, guide, x, 0))


# ---------------------------------------------------------------- STL and DReG


def linear_gaussian(x_dim=6, z_dim=3, sigma=0.5, orthogonal=False, seed=0):
    torch.manual_seed(seed)
    model, guide = build(
        VAEConfig(
            x_dim=x_dim,
            z_dim=z_dim,
            decoder="linear",
            likelihood="gaussian",
            options={"encoder": {"hidden": ()}, "likelihood": {"sigma": sigma}},
        )
    )
    if orthogonal:
        with torch.no_grad():
            model.decoder.linear.weight.copy_(orthogonal_weight(x_dim, z_dim, torch.linspace(0.5, 2.0, z_dim)))
    return model, guide


def draws(name, model, guide, x, num_draws, seed, **options):
    encoder, decoder = split_parameters(model, guide)
    pyro.set_rng_seed(seed)
    return draw_gradients(make_elbo(name, **options), model, guide, x, encoder, decoder, num_draws)


def test_stl_guide_gradient_is_exactly_zero_at_the_exact_posterior_while_trace_elbos_varies(float64):
    model, guide = linear_gaussian(orthogonal=True)
    x = torch.randn(8, 6)
    set_guide_to_posterior(guide, model)
    stl = draws("stl", model, guide, x, 50, seed=0)
    trace = draws("trace", model, guide, x, 50, seed=0)
    assert float(stl.encoder.abs().max()) < 1e-12  # every draw: zero gradient, so zero variance
    assert float(trace.encoder.var(0).mean()) > 1e-2
    # The decoder gradient is the same for both (same z); it is not zero, the model is not at its optimum.
    torch.testing.assert_close(stl.decoder, trace.decoder)
    assert float(stl.decoder.var(0).mean()) > 1e-3


@pytest.mark.parametrize("name", ["trace", "meanfield", "stl", "jit-stl"])
def test_elbo_gradient_estimators_are_unbiased_for_the_closed_form_gradient(name, float64):
    model, guide = linear_gaussian()
    x = torch.randn(8, 6)
    encoder, decoder = split_parameters(model, guide)
    exact = torch.autograd.grad(-exact_elbo(model, guide, x).mean(), encoder + decoder)
    exact = torch.cat([g.reshape(-1) for g in exact])
    r = 1000
    d = draws(name, model, guide, x, r, seed=1)
    g = torch.cat([d.encoder, d.decoder], dim=1)
    z = (g.mean(0) - exact) / (g.var(0) / r).sqrt()
    assert float(z.abs().max()) < 4.0  # every parameter element within 4 standard errors


def test_stl_has_lower_encoder_gradient_variance_than_trace_near_the_posterior(float64):
    model, guide = linear_gaussian(orthogonal=True)
    x = torch.randn(8, 6)
    set_guide_to_posterior(guide, model, scale_factor=1.2)
    stl = draws("stl", model, guide, x, 300, seed=0)
    trace = draws("trace", model, guide, x, 300, seed=1)
    assert float(stl.encoder.var(0).sum()) < 0.5 * float(trace.encoder.var(0).sum())


@pytest.mark.slow
def test_dreg_matches_iwae_in_expectation_with_lower_encoder_variance(float64):
    model, guide = linear_gaussian()
    x = torch.randn(8, 6)
    r = 1000
    iwae = draws("iwae", model, guide, x, r, seed=1, num_particles=5)
    dreg = draws("dreg", model, guide, x, r, seed=2, num_particles=5)
    for part in ("decoder", "encoder"):
        a, b = getattr(iwae, part), getattr(dreg, part)
        z = (a.mean(0) - b.mean(0)) / (a.var(0) / r + b.var(0) / r).sqrt()
        assert float(z.abs().max()) < 4.0, part  # the same expected gradient, element by element (4 SE)
    # Variance ratio estimated from 1000 draws has relative SE ~ 6%; the measured ratio is ~ 0.5.
    assert float(dreg.encoder.var(0).sum()) < 0.7 * float(iwae.encoder.var(0).sum())


def test_dreg_decoder_gradient_is_iwaes_on_the_same_z_and_k1_is_stl(float64):
    model, guide = linear_gaussian()
    x = torch.randn(8, 6)
    iwae = draws("iwae", model, guide, x, 3, seed=5, num_particles=5)
    dreg = draws("dreg", model, guide, x, 3, seed=5, num_particles=5)
    torch.testing.assert_close(dreg.values, iwae.values)  # the same value: the IWAE bound
    torch.testing.assert_close(dreg.decoder, iwae.decoder)
    assert not torch.allclose(dreg.encoder, iwae.encoder)
    # With one particle the normalised weight is 1, so DReG's gradient is the STL gradient.
    dreg1 = draws("dreg", model, guide, x, 3, seed=6, num_particles=1)
    stl = draws("stl", model, guide, x, 3, seed=6)
    torch.testing.assert_close(dreg1.encoder, stl.encoder)
    torch.testing.assert_close(dreg1.decoder, stl.decoder)


def test_path_derivative_estimators_reject_a_non_reparameterised_guide():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", pyro.distributions.Bernoulli(0.5 * torch.ones(x.shape[0])))
            pyro.sample("x", pyro.distributions.Normal(z, 1.0), obs=x)

    def guide(x):
        p = pyro.param("p", torch.tensor(0.3))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pyro.distributions.Bernoulli(p.expand(x.shape[0])))

    for name in ("stl", "dreg", "iwae"):
        with pytest.raises(ValueError, match="reparameterised"):
            make_elbo(name).loss_and_grads(model, guide, torch.zeros(3))


# ---------------------------------------------------------------- registry


def test_every_registry_entry_says_what_it_estimates():
    for name in ESTIMATORS.names():
        spec = ESTIMATORS[name]
        assert spec.estimates in ("ELBO", "IWAE bound", "Renyi bound", "relaxed ELBO", "TVO bound"), name
        assert spec.value and spec.gradient, name
        spec()  # every estimator works with no arguments (defaults)
    assert ESTIMATORS.names()[:6] == ["trace", "meanfield", "iwae", "renyi", "stl", "dreg"]


#: The estimators of reparameterised (continuous) latents; those of discrete ones: tests/test_discrete_estimators.py.
CONTINUOUS = [name for name, spec in ESTIMATORS.items() if spec.latents == "continuous"]


@pytest.mark.parametrize("name", CONTINUOUS)
def test_the_spec_says_which_values_tighten_with_k(name):
    """``multi_particle`` is what the estimator does: its value averaged over 300 draws rises with K = 1 -> 20 by
    more than 4 standard errors for a K-particle bound, and stays within 4 standard errors for an ELBO."""
    model, guide = small_vae(seed=2)
    x = binary_batch(8)
    spec = ESTIMATORS[name]

    def values(k):
        elbo = spec.make(num_particles=k)
        return torch.tensor([-elbo.loss(model, guide, x) for _ in range(300)])

    pyro.set_rng_seed(5)
    one, many = values(1), values(20)
    se = float((one.var() / 300 + many.var() / 300).sqrt())
    rise = float(many.mean() - one.mean())
    if spec.multi_particle:
        assert rise > 4 * se, (rise, se)
    else:
        assert abs(rise) < 4 * se, (rise, se)


def test_jit_is_an_option_of_making_the_estimator():
    for name in ("trace", "meanfield", "iwae", "renyi", "stl"):
        assert type(make_elbo(name, jit=True)) is type(make_elbo(f"jit-{name}")) is ESTIMATORS[name].jit_factory
        assert type(make_elbo(name)) is not type(make_elbo(name, jit=True))
    with pytest.raises(UserError, match="estimator 'dreg' has no compiled form .*; drop --jit"):
        make_elbo("dreg", jit=True)
    assert "jit-dreg" not in ESTIMATORS and "JIT-Trace" in ESTIMATORS


def test_make_elbo_gives_one_line_errors():
    with pytest.raises(UserError, match="unknown estimator 'nope'; choose one of: trace, meanfield"):
        make_elbo("nope")
    with pytest.raises(UserError, match="estimator 'trace' does not take option\\(s\\) alpha"):
        make_elbo("trace", alpha=0.5)
    with pytest.raises(ValueError, match="num_particles must be an integer >= 1"):
        make_elbo("iwae", num_particles=0)
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        make_elbo("renyi", alpha=float("nan"))


@pytest.mark.parametrize("name", [n for n in ESTIMATORS.names() if ESTIMATORS[n].latents == "continuous"])
def test_every_estimator_drives_svi_to_a_better_fit(name):
    model, guide = small_vae(seed=3)
    # Two patterns, 111000 and 000111: learnable down to log 2 nats per example, from ~6 log 2 at the start.
    x = torch.tensor([[1.0, 1, 1, 0, 0, 0], [0.0, 0, 0, 1, 1, 1]]).repeat(16, 1)
    svi = SVI(model, guide, Adam({"lr": 0.03}), ESTIMATORS[name]())
    losses = [svi.step(x) for _ in range(150)]
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.4 * first  # measured: 0.20 (dreg) to 0.28 (trace)


def test_the_docs_table_says_what_each_spec_says():
    """docs/estimators.md's table has one row per estimator, with the spec's class, bound and compiled form."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "estimators.md").read_text()
    table = text.split("<!-- estimator table:")[1].split("\n\n")[0]
    rows = {}
    for line in table.splitlines()[3:]:
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        rows[cells[0].strip("`")] = cells
    assert list(rows) == list(ESTIMATORS)
    for name, spec in ESTIMATORS.items():
        cells = rows[name]
        assert cells[1] == f"`{spec.factory.__name__}`", name
        assert cells[4] == ("yes" if spec.multi_particle else "no"), name
        compiled = f"`{spec.jit_factory.__name__}`" if spec.jit_factory else "none"
        assert cells[5].split(" (")[0] == compiled, name
        assert spec.estimates.split()[0].lower() in cells[2].lower(), name
