"""Every prior x guide combination: it builds and trains, or it is refused in one line.

Truths: a table written here by hand of which pairs make sense (a prior and a guide on the same space, R^J or the
sphere; the VampPrior on whichever the guide's is) and which get a closed-form KL (the registered pairs: diagonal or
full-covariance Normal against the diagonal Normal priors, power spherical against the uniform on the sphere); the
untrained model's test ELBO, which training must beat; the one-line error contract of the command line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

from pyro_vae import GUIDES, PRIORS, TrainConfig, VAEConfig, build, load_run, train
from pyro_vae.cli import main
from pyro_vae.data import load_data
from pyro_vae.errors import UserError
from pyro_vae.kl_check import kl_kinds
from pyro_vae.step import TrainStep, make_optimizer, parameters_of

#: The built-in names, from the registries (a plugin's come from somewhere: ``source``), so a new one is covered.
BUILTIN_PRIORS = [name for name in PRIORS if PRIORS.source(name) is None]
BUILTIN_GUIDES = [name for name in GUIDES if GUIDES.source(name) is None]
ON_SPHERE = {"uniform-sphere", "power-spherical"}
ANALYTIC = {
    ("standard", "normal"),
    ("gaussian", "normal"),
    ("standard", "fullcov"),
    ("gaussian", "fullcov"),
    ("uniform-sphere", "power-spherical"),
}
PAIRS = [(p, g) for p in BUILTIN_PRIORS for g in BUILTIN_GUIDES]


#: The discrete families (tests/test_discrete_latents.py trains them; meanfield, used here, is refused for them).
DISCRETE = {"bernoulli": "binary", "categorical": "onehot"}


def space(name: str) -> str:
    return "sphere" if name in ON_SPHERE else DISCRETE.get(name, "real")


def makes_sense(prior: str, guide: str) -> bool:
    return prior == "vamp" or space(prior) == space(guide)


SENSIBLE_ALL = [pair for pair in PAIRS if makes_sense(*pair)]
SENSIBLE = [(p, g) for p, g in SENSIBLE_ALL if g not in DISCRETE]
REFUSED = [pair for pair in PAIRS if not makes_sense(*pair)]


def few(prior: str) -> dict:
    """Options giving a mixture-type prior (one that takes ``components``) 3 components; none for the others."""
    return {"prior": {"components": 3}} if "components" in {f.name for f in PRIORS[prior].option_fields()} else {}


def test_the_tables_cover_the_registries():
    assert {"standard", "vamp", "uniform-sphere"} <= set(BUILTIN_PRIORS) and "power-spherical" in BUILTIN_GUIDES
    assert ("vamp", "power-spherical") in SENSIBLE and ("uniform-sphere", "power-spherical") in SENSIBLE
    assert ("standard", "power-spherical") in REFUSED and ("uniform-sphere", "normal") in REFUSED
    assert ("vamp", "bernoulli") in SENSIBLE_ALL and ("bernoulli", "categorical") in REFUSED


@pytest.mark.parametrize(("prior", "guide"), SENSIBLE, ids=[f"{p}-{g}" for p, g in SENSIBLE])
def test_a_sensible_pair_builds_keeps_the_posterior_contract_and_takes_steps(prior, guide):
    model, q = build(VAEConfig(x_dim=10, z_dim=3, hidden=(16,), prior=prior, guide=guide, options=few(prior)))
    x = torch.bernoulli(torch.full((12, 10), 0.4))
    assert kl_kinds(model, q, x) == {"z": "analytic" if (prior, guide) in ANALYTIC else "monte-carlo"}
    posterior = q.posterior(x)
    assert (posterior.batch_shape, posterior.event_shape, posterior.mean.shape) == ((12,), (3,), (12, 3))
    params = parameters_of(model, q)
    elbo = TraceMeanField_ELBO(max_plate_nesting=1)
    step = TrainStep(model, q, elbo, make_optimizer(params, 1e-2), params, fast=True, jit=True)
    losses = [step(x, beta=1.0) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    # The compiled meanfield objective (--jit) handles every family: it passed its check against the uncompiled one.
    assert step.compiled is not None and step.fallback_reason is None


@pytest.mark.parametrize(("prior", "guide"), REFUSED, ids=[f"{p}-{g}" for p, g in REFUSED])
def test_a_pair_on_different_spaces_is_refused_in_one_line_naming_what_fits(prior, guide):
    with pytest.raises(UserError) as info:
        VAEConfig(x_dim=10, z_dim=3, prior=prior, guide=guide)
    message = str(info.value)
    assert "\n" not in message and f"the {guide} guide puts z on" in message and f"the {prior} prior" in message
    priors = {"sphere": "vamp or uniform-sphere", "real": "standard, gaussian, mixture, vamp or flow"}
    guides = {"sphere": "power-spherical", "real": "normal, fullcov or iaf"}
    fitting_priors = priors.get(space(guide), f"vamp or {guide}")
    assert f"use --prior {fitting_priors} with it, or --guide {guides.get(space(prior), prior)}" in message


def test_a_prior_given_to_build_is_checked_too():
    from pyro_vae.models.priors import UniformSpherePrior

    from pyro_vae import Component

    spherical = Component(lambda c: UniformSpherePrior(c.z_dim), latent="sphere")
    with pytest.raises(UserError, match="the normal guide puts z on R"):
        build(VAEConfig(x_dim=4, z_dim=3), prior=spherical)


@pytest.mark.parametrize("name", ["power-spherical", "uniform-sphere"])
def test_the_sphere_needs_two_dimensions(name):
    kind = "guide" if name == "power-spherical" else "prior"
    other = {"prior": "vamp"} if kind == "guide" else {"guide": "power-spherical"}
    with pytest.raises(UserError, match=rf"the {name} {kind} needs z_dim >= 2, got 1; use --z-dim 2 or more"):
        VAEConfig(x_dim=4, z_dim=1, **{kind: name}, **other)


@pytest.mark.slow
def test_every_sensible_pair_trains_on_the_digits(tmp_path):
    """Through ``train``, whose step runs the compiled meanfield objective: every family traces."""
    data = load_data("digits")
    small = dict(z_dim=3, hidden=(32,), threads=1, batch_size=256)
    untrained = train(
        TrainConfig.for_data(data, **small, epochs=1, lr=1e-12), tmp_path / "u", progress=False, figures=False
    ).metrics[-1]["test_elbo"]
    for prior, guide in SENSIBLE:
        config = TrainConfig.for_data(data, **small, epochs=3, lr=0.01, prior=prior, guide=guide, options=few(prior))
        record = train(config, tmp_path / f"{prior}-{guide}", data=data, progress=False, figures=False).metrics[-1]
        # measured -27.7 to -28.2 nats against -47.2 untrained
        assert record["test_elbo"] > untrained + 10.0, (prior, guide, record["test_elbo"], untrained)


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "kind"),
    [
        (["--guide", "iaf", "--guide-steps", "3", "--guide-hidden", "32"], "monte-carlo"),
        (["--guide", "fullcov"], "analytic"),
        (["--guide", "power-spherical", "--prior", "uniform-sphere"], "analytic"),
    ],
    ids=["iaf", "fullcov", "power-spherical"],
)
def test_the_new_families_train_from_the_command_line_reporting_their_kl_kind(flags, kind, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--z-dim", "3", "--hidden", "32", "--epochs", "2", "--threads", "1", *flags]
    code, stdout, stderr = _run(args, capsys)
    assert code == 0, stderr
    assert f"KL per latent site: z={kind}" in stderr
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["kl"] == {"z": kind}
    run = load_run(out)
    assert run.config.model.guide == flags[1]
    code, stdout, stderr = _run(["evaluate", str(out), "--num-samples", "50", "--num-examples", "40"], capsys)
    assert code == 0, stderr
    assert "log p(x)" in stdout


def test_a_refused_pair_on_the_command_line_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, stderr = _run(["train", "--out", str(out), "--guide", "power-spherical", "--z-dim", "3"], capsys)
    assert code == 2
    assert stderr.startswith("pyro-vae: error: the power-spherical guide puts z on the unit sphere")
    assert stderr.count("\n") == 1
    assert not out.exists()


def mnist_dir() -> Path | None:
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    for candidate in (Path(os.environ.get("PYRO_VAE_DATA_DIR") or "."), shared):
        if (candidate / "MNIST" / "raw").is_dir():
            return candidate
    return None


@pytest.mark.slow
@pytest.mark.skipif(mnist_dir() is None, reason="MNIST is not on disk (../shared/data/MNIST/raw)")
@pytest.mark.parametrize(
    "flags",
    [["--guide", "iaf"], ["--guide", "fullcov"], ["--guide", "power-spherical", "--prior", "uniform-sphere"]],
    ids=["iaf", "fullcov", "power-spherical"],
)
def test_the_new_families_train_on_mnist(flags, tmp_path, capsys):
    data = ["--dataset", "mnist", "--data-dir", str(mnist_dir()), "--no-download"]
    out = tmp_path / "run"
    args = ["train", "--out", str(out), *data, "--z-dim", "3", "--epochs", "1", "--batch-size", "512", "--threads", "1"]
    code, stdout, stderr = _run([*args, *flags], capsys)
    assert code == 0, stderr
    assert "KL per latent site: z=" in stderr
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    # Measured for iaf: -166 nats after this one epoch, -569 with the learning rate at 1e-12 (untrained).
    assert record["test_elbo"] > -250.0


@pytest.mark.slow
def test_the_family_step_time_benchmark_runs_and_checks_its_reference(monkeypatch):
    """benchmarks/family_step_time.py: a tiny run prints its ratio line, and its agreement check is not vacuous (a
    reference without the KL term fails it)."""
    root = Path(__file__).resolve().parents[1]
    args = ["--steps", "2", "--repeats", "1", "--threads", "1", "--z-dim", "3", "--prior", "vamp"]
    out = subprocess.run(
        [sys.executable, "benchmarks/family_step_time.py", *args], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(
        r"ratios normal=\d+\.\d+ fullcov=\d+\.\d+ iaf=\d+\.\d+ power-spherical=\d+\.\d+",
        out.stdout.strip().splitlines()[-1],
    )
    monkeypatch.syspath_prepend(str(root / "benchmarks"))
    import family_step_time

    family_step_time.check_reference(z_dim=3, seed=0)
    recon_only = lambda self, x, z=None: torch.nn.functional.binary_cross_entropy_with_logits(  # noqa: E731
        self.decoder(z), x, reduction="sum"
    )
    monkeypatch.setattr(family_step_time.HandWrittenVAE, "loss", recon_only)
    with pytest.raises(AssertionError):
        family_step_time.check_reference(z_dim=3, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags",
    [["--guide", "iaf"], ["--guide", "power-spherical", "--prior", "uniform-sphere"], ["--prior", "flow"]],
    ids=["iaf", "power-spherical", "flow-prior"],
)
def test_resuming_a_new_family_equals_the_uninterrupted_run(flags, tmp_path, capsys):
    common = ["--z-dim", "3", "--hidden", "16", "--batch-size", "256", "--threads", "1", "--no-progress", *flags]
    assert main(["train", "--out", str(tmp_path / "straight"), "--epochs", "2", *common]) == 0
    assert main(["train", "--out", str(tmp_path / "resumed"), "--epochs", "1", *common]) == 0
    assert main(["train", "--out", str(tmp_path / "resumed"), "--epochs", "2", "--resume", *common]) == 0
    capsys.readouterr()
    straight, resumed = (
        [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        for name in ("straight", "resumed")
    )
    assert resumed == straight
