"""The conditional VAE (--model conditional): eq. 43 with the conditional prior, class samples, resume, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import TraceMeanField_ELBO
from pyro.poutine import replay
from pyro_vae.models.labelled import pack, unpack
from sklearn.linear_model import LogisticRegression

from pyro_vae import TrainConfig, VAEConfig, build, train
from pyro_vae.class_samples import class_samples
from pyro_vae.cli import main
from pyro_vae.closed_form import batch_loss, bernoulli_log_likelihood, gaussian_kl, gaussian_log_likelihood
from pyro_vae.errors import UserError
from tests.helpers import guide_trace, one_thread  # noqa: F401 - the fixture, used by pytestmark

pytestmark = pytest.mark.usefixtures("one_thread")


def make(likelihood: str, n: int = 6, x_dim: int = 5, z_dim: int = 3, classes: int = 4):
    torch.manual_seed(0)
    options = {"model": {"classes": classes}, **({"likelihood": {"sigma": 0.7}} if likelihood == "gaussian" else {})}
    cfg = VAEConfig(x_dim=x_dim, z_dim=z_dim, likelihood=likelihood, hidden=(7,), model="conditional", options=options)
    model, guide = build(cfg)
    with torch.no_grad():  # a prior far from N(0, I) and different for each class
        model.class_prior.loc.normal_(0.0, 1.5)
        model.class_prior.raw_scale.normal_(0.0, 1.0)
    g = torch.Generator().manual_seed(1)
    x = torch.bernoulli(torch.full((n, x_dim), 0.4), generator=g) if likelihood == "bernoulli" else torch.rand(n, x_dim)
    y = torch.tensor([0, 1, 2, 3, 1, 2])[:n]
    return model, guide, pack(x, y)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_meanfield_loss_and_gradients_equal_eq43_with_the_class_prior(float64, likelihood):
    """TraceMeanField_ELBO = sum_i [KL(q(z|x_i,y_i) || N(mu_{y_i}, sigma_{y_i}^2)) - log p(x_i|z_i,y_i)] (eq. 43 with
    the prior's mean and scale of each example's class, the KL written out as on the line before eq. 40)."""
    model, guide, packed = make(likelihood)
    x, y = unpack(packed, (5,))
    trace = guide_trace(guide, packed)
    z = trace.nodes["z"]["value"]
    loss = TraceMeanField_ELBO().differentiable_loss(model, replay(guide, trace=trace), packed)

    head = guide.q_z.head(torch.cat([guide.q_z.encoder(x), F.one_hot(y, 4).double()], -1))
    mu_q, sigma_q = head[:, :3], F.softplus(head[:, 3:]) + 1e-5
    mu_p, sigma_p = model.class_prior.loc[y], F.softplus(model.class_prior.raw_scale[y])
    kl = gaussian_kl(mu_q, sigma_q, mu_p, sigma_p).sum(-1)
    decoded = model.decoder(torch.cat([z, F.one_hot(y, 4).double()], -1))
    if likelihood == "bernoulli":
        log_lik = bernoulli_log_likelihood(x, decoded)
    else:
        log_lik = gaussian_log_likelihood(x, decoded, 0.7)
    expected = batch_loss(kl, log_lik)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-9)

    params = [*model.parameters(), *guide.parameters()]
    for a, b in zip(
        torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True),
        torch.autograd.grad(expected, params, allow_unused=True),
        strict=True,
    ):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)
    assert TraceMeanField_ELBO().loss(model, replay(guide, trace=trace), packed) == pytest.approx(expected.item())


def test_class_samples_are_classified_as_their_class(tmp_path):
    """After 10 epochs on digits (~4 s), 50 samples per class are classified as their class by a logistic regression
    trained on the digits' training set (97% accurate on its test set): 99% measured, asserted >= 90%. With the
    class inputs permuted (sample class k, call it k + 1) the same classifier scores ~0%: the test can fail."""
    cfg = TrainConfig(model=VAEConfig(z_dim=4, hidden=(128,), model="conditional"), dataset="digits", epochs=10)
    result = train(cfg, tmp_path / "run", progress=False, figures=False)
    data = result.data
    clf = LogisticRegression(max_iter=2000).fit(data.train_x.numpy(), data.train_y.numpy())
    assert clf.score(data.test_x.numpy(), data.test_y.numpy()) > 0.95
    samples = torch.cat([class_samples(result.model, k, 50, seed=k) for k in range(10)])
    labels = np.repeat(np.arange(10), 50)
    assert clf.score(samples.numpy(), labels) >= 0.90
    assert clf.score(samples.numpy(), (labels + 1) % 10) <= 0.2
    with pytest.raises(UserError, match="0 .. 9"):
        class_samples(result.model, 10)


def test_resume_continues_exactly(tmp_path):
    cfg = TrainConfig(model=VAEConfig(z_dim=2, hidden=(16,), model="conditional"), dataset="digits", epochs=3)
    straight = train(cfg, tmp_path / "a", progress=False, figures=False)
    train(TrainConfig.from_dict({**cfg.to_dict(), "epochs": 2}), tmp_path / "b", progress=False, figures=False)
    resumed = train(cfg, tmp_path / "b", resume=True, progress=False, figures=False)
    assert resumed.metrics == straight.metrics


def test_cli_train_figures_and_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--model", "conditional", "--epochs", "1", "--z-dim", "2"]) == 0
    assert (out / "class_samples.png").exists()
    assert json.loads((out / "config.json").read_text())["model"]["model"] == "conditional"
    assert main(["evaluate", str(out), "--num-samples", "20", "--num-examples", "50"]) == 0
    printed = capsys.readouterr().out
    assert "IS log p(x|y)" in printed
    assert main(["plot", str(out), "--class", "3", "--count", "5"]) == 0
    assert (out / "class_3_samples.png").exists()
    capsys.readouterr()
    assert main(["plot", str(out), "--class", "10"]) != 0
    assert "0 .. 9" in capsys.readouterr().err.strip().splitlines()[-1]


def test_data_without_labels_is_refused_in_one_line(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((120, 6)).astype(np.float32))
    code = main(["train", "--out", str(tmp_path / "r"), "--model", "conditional", "--dataset", str(tmp_path / "x.npy")])
    assert code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert "needs labels" in err[-1] and "Traceback" not in "".join(err)
