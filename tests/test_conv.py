"""The convolutional encoder and decoder: shapes for grey 28 x 28 and colour 32 x 32 images, examples that do not
see each other (no batch normalisation), the meanfield loss equal to the hand-derived closed form (eq. 43) for each
image likelihood, and a conv run that trains and resumes exactly; real MNIST where it is on disk."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

from pyro_vae import TrainConfig, VAEConfig, build, load_data, train
from pyro_vae.cli import main
from pyro_vae.errors import UserError
from tests.helpers import closed_form_loss, guide_trace


def mnist_dir() -> Path | None:
    """The shared MNIST files (``$PYRO_VAE_DATA_DIR``, else ``../shared/data`` from the repository), or None."""
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    for root in (Path(os.environ.get("PYRO_VAE_DATA_DIR") or "."), shared):
        if (root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
            return root
    return None


needs_mnist = pytest.mark.skipif(mnist_dir() is None, reason="real MNIST is not in ../shared/data (MNIST/raw/)")


def conv_config(shape, likelihood="bernoulli", z_dim=3, **options) -> VAEConfig:
    return VAEConfig(x_shape=shape, z_dim=z_dim, likelihood=likelihood, encoder="conv", decoder="conv", **options)


@pytest.mark.parametrize(
    ("shape", "maps"), [((1, 28, 28), (64, 7, 7)), ((3, 32, 32), (64, 8, 8)), ((3, 64, 64), (64, 16, 16))]
)
def test_shapes_through_the_stride_two_stack_and_its_mirror(shape, maps):
    torch.manual_seed(0)
    model, guide = build(conv_config(shape))
    x = torch.rand(5, *shape)
    assert guide.encoder.conv(x).shape == (5, *maps)  # two stride-2 layers: H / 4, W / 4
    assert guide.encoder(x).shape == (5, 256) and guide.encoder.out_features == 256
    assert guide.posterior(x).batch_shape == (5,) and guide.posterior(x).event_shape == (3,)
    # The decoder maps any leading batch shape (particles, examples) to images of the data's shape.
    assert model.decoder(torch.randn(4, 5, 3)).shape == (4, 5, *shape)
    assert model.likelihood(model.decoder(torch.randn(5, 3))).event_shape == shape
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in [*model.modules(), *guide.modules()])


def test_channel_widths_are_options_of_each_network():
    cfg = conv_config((3, 32, 32), options={"encoder": {"channels": [8, 16, 32]}, "decoder": {"channels": [4]}})
    model, guide = build(cfg)
    assert [m.out_channels for m in guide.encoder.conv if isinstance(m, torch.nn.Conv2d)] == [8, 16, 32]
    assert guide.encoder.conv(torch.rand(2, 3, 32, 32)).shape == (2, 32, 4, 4)
    assert [m.out_channels for m in model.decoder.deconv if isinstance(m, torch.nn.ConvTranspose2d)] == [3]
    assert model.decoder(torch.randn(2, 3)).shape == (2, 3, 32, 32)


def test_each_example_is_encoded_and_decoded_on_its_own():
    # What batch normalisation would break: an example's output must not depend on the rest of its batch.
    torch.manual_seed(0)
    model, guide = build(conv_config((1, 28, 28)))
    model.train(), guide.train()
    x, z = torch.rand(8, 1, 28, 28), torch.randn(8, 3)
    torch.testing.assert_close(guide.encoder(x)[:1], guide.encoder(x[:1]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.decoder(z)[:1], model.decoder(z[:1]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((784,), r"needs image data of shape \(C, H, W\), got examples of shape \(784,\)"),
        ((1, 30, 30), "needs H and W divisible by 4, got 30x30"),
    ],
)
def test_shapes_the_conv_networks_cannot_take_are_one_line(shape, message):
    with pytest.raises(ValueError, match=message) as err:
        build(conv_config(shape))
    assert "\n" not in str(err.value)


DATA = {
    "bernoulli": lambda g, shape: torch.bernoulli(torch.full((4, *shape), 0.3), generator=g),
    "gaussian": lambda g, shape: torch.rand(4, *shape, generator=g),
    "discretized-logistic": lambda g, shape: torch.randint(0, 256, (4, *shape), generator=g) / 255.0,
}


@pytest.mark.parametrize("shape", [(1, 8, 12), (3, 8, 8)], ids=["grey", "colour"])
@pytest.mark.parametrize("likelihood", list(DATA))
def test_meanfield_loss_and_gradients_equal_the_closed_form_for_the_conv_model(float64, likelihood, shape):
    torch.manual_seed(0)
    options = {"encoder": {"channels": [4, 6]}, "decoder": {"channels": [4, 6]}}
    if likelihood == "gaussian":
        options["likelihood"] = {"sigma": 0.7}
    model, guide = build(conv_config(shape, likelihood, hidden=(16,), options=options))
    if likelihood == "discretized-logistic":
        with torch.no_grad():  # not the initial scale, and a different one per channel
            model.likelihood.raw_scale.copy_(torch.linspace(-3.0, -1.0, shape[0]).reshape(-1, 1, 1))
    x = DATA[likelihood](torch.Generator().manual_seed(1), shape).to(torch.float64)
    trace = guide_trace(guide, x)
    loss = TraceMeanField_ELBO().differentiable_loss(model, poutine.replay(guide, trace=trace), x)
    expected = closed_form_loss(model, guide, x, trace)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    params = [p for p in [*model.parameters(), *guide.parameters()] if p.requires_grad]
    for a, b in zip(
        torch.autograd.grad(loss, params, retain_graph=True), torch.autograd.grad(expected, params), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def _tiny_images(tmp_path) -> str:
    rng = np.random.default_rng(0)
    # Blobs at random places: structure the networks can learn within a few epochs.
    yy, xx = np.mgrid[:8, :8]
    centres = rng.integers(1, 7, (90, 2))
    images = 255 * np.exp(-((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) / 4.0)
    path = tmp_path / "blobs.npy"
    np.save(path, images.astype(np.uint8))
    return str(path)


def _mnist_subset(tmp_path) -> str:
    data = load_data("mnist", data_dir=mnist_dir(), download=False)
    path = tmp_path / "mnist300.npy"
    np.save(path, (data.train_x[:300, 0].numpy() * 255).round().astype(np.uint8))  # 300 real images, as uint8
    return str(path)


SUBSETS = [
    pytest.param(_tiny_images, id="blobs"),
    pytest.param(_mnist_subset, id="mnist-subset", marks=needs_mnist),
]


def assert_trains_and_resumes_exactly(tmp_path, data: str, **model) -> None:
    """The run learns, and 2 epochs + a resume to 4 equal 4 uninterrupted epochs bit for bit."""
    base = TrainConfig(
        model=VAEConfig(
            z_dim=2, encoder="conv", decoder="conv", hidden=(16,), options={"encoder": {"channels": (4, 8)}}, **model
        ),
        dataset=data,
        epochs=4,
        batch_size=16,
        lr=3e-3,
        threads=1,
    )
    whole = train(base, tmp_path / "whole", progress=False, figures=False)
    train(dataclasses.replace(base, epochs=2), tmp_path / "split", progress=False, figures=False)
    resumed = train(base, tmp_path / "split", resume=True, progress=False, figures=False)
    assert [m["test_elbo"] for m in resumed.metrics] == [m["test_elbo"] for m in whole.metrics]
    assert whole.metrics[-1]["test_elbo"] > whole.metrics[0]["test_elbo"]  # it learns
    for net in ("model", "guide"):
        a, b = getattr(whole, net).state_dict(), getattr(resumed, net).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), net


@pytest.mark.parametrize("make_data", SUBSETS)
def test_a_conv_run_trains_and_resumes_exactly(tmp_path, make_data):
    assert_trains_and_resumes_exactly(tmp_path, make_data(tmp_path))


def test_conv_needs_image_data_in_one_line_from_the_cli(tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "run"), "--encoder", "conv", "--epochs", "1", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "the conv encoder needs image data of shape (C, H, W)" in err[0]


@needs_mnist
def test_mnist_loads_as_one_by_28_by_28_images():
    data = load_data("mnist", data_dir=mnist_dir(), download=False)
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert data.levels == 256 and data.train_y.bincount().tolist()[:2] == [5923, 6742]  # the data README's counts
    with pytest.raises(UserError, match="--image-size is for a folder"):
        load_data("mnist", data_dir=mnist_dir(), download=False, image_size=14)


@needs_mnist
@pytest.mark.slow
def test_conv_trains_on_a_real_mnist_subset_from_the_cli(tmp_path):
    data = load_data("mnist", data_dir=mnist_dir(), download=False)
    subset = (data.train_x[:1200, 0].numpy() * 255).round().astype(np.uint8)  # 1,200 real images as uint8
    np.save(tmp_path / "mnist1200.npy", subset)
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--dataset", str(tmp_path / "mnist1200.npy"), "--encoder", "conv"]
    args += ["--decoder", "conv", "--epochs", "3", "--lr", "2e-3", "--batch-size", "64", "--threads", "1"]
    assert main([*args, "--z-dim", "8", "--no-progress"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # From an untrained -543 nats (784 pixels at p = 1/2) to well below: the conv VAE learns digits.
    assert records[0]["test_elbo"] < records[-1]["test_elbo"] and records[-1]["test_elbo"] > -250


@pytest.mark.parametrize(
    ("guide", "prior"),
    [("fullcov", "standard"), ("iaf", "standard"), ("power-spherical", "uniform-sphere")],
    ids=["fullcov", "iaf", "power-spherical"],
)
def test_each_guide_family_trains_and_resumes_exactly_with_the_conv_networks(tmp_path, guide, prior):
    """The variational families sit on the conv encoder's features like the diagonal guide: the run learns, and
    2 epochs + a resume to 4 equal 4 uninterrupted epochs bit for bit (the guarantee of every run)."""
    assert_trains_and_resumes_exactly(tmp_path, _tiny_images(tmp_path), guide=guide, prior=prior)
