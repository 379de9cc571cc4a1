"""Data sets: digits, MNIST-layout IDX files (written here, never downloaded), user arrays, binarisation."""

from __future__ import annotations

import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from pyro.distributions.util import is_validation_enabled
from pyro.infer import TraceMeanField_ELBO
from pyro_vae.models.likelihoods import BernoulliLikelihood, GaussianLikelihood
from sklearn.datasets import load_digits

from pyro_vae import VAEConfig, build
from pyro_vae.data import load_data, minibatches, torchvision_files
from pyro_vae.errors import UserError


def test_digits_split_scaling_and_labels():
    data = load_data("digits")
    assert data.train_x.shape == (1500, 64) and data.test_x.shape == (297, 64)
    assert data.train_x.dtype == torch.float32 and data.image_shape == (8, 8)
    # Together the two splits are exactly sklearn's images / 16, each row with its own label.
    ref = load_digits()
    ref_rows = {
        tuple((row / 16).astype(np.float32).tolist()): int(t) for row, t in zip(ref.data, ref.target, strict=True)
    }
    all_x = torch.cat([data.train_x, data.test_x])
    all_y = torch.cat([data.train_y, data.test_y])
    assert sorted(map(tuple, all_x.tolist())) == sorted(tuple((r / 16).astype(np.float32).tolist()) for r in ref.data)
    assert all(ref_rows[tuple(x)] == y for x, y in zip(all_x.tolist(), all_y.tolist(), strict=True))
    assert all_x.min() == 0 and all_x.max() == 1
    # The split is fixed: a second load gives the same test set.
    assert torch.equal(load_data("digits").test_x, data.test_x)


def test_dynamic_binarisation_draws_fresh_bernoulli_pixels_each_epoch():
    data = load_data("digits")
    data.prepare(BernoulliLikelihood())
    assert data.binarize
    torch.manual_seed(0)
    first, second = data.train_epoch(), data.train_epoch()
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(first, second)
    # E[x] = pixel value. Per grey pixel, z = (mean of 100 draws - p) / SE is about N(0, 1), independently:
    # their average is within 4 of its standard errors (1 / sqrt(m)) of 0, and no pixel is off by 6 SE.
    draws = torch.stack([data.train_epoch() for _ in range(100)])
    p = data.train_x
    se = torch.sqrt(p * (1 - p) / 100).clamp_min(1e-12)
    z = ((draws.mean(0) - p) / se)[(p > 0) & (p < 1)]
    assert z.abs().max() < 6 and abs(z.mean()) < 4 / z.numel() ** 0.5
    # Pixels at exactly 0 or 1 never flip.
    assert torch.equal(draws[:, p == 1], torch.ones_like(draws[:, p == 1]))
    # The test set is binarised once, with a fixed seed: the same after another prepare().
    fixed = data.test_x_eval.clone()
    data.prepare(BernoulliLikelihood())
    assert torch.equal(fixed, data.test_x_eval) and set(fixed.unique().tolist()) == {0.0, 1.0}


def test_grey_pixels_fail_bernoulli_validation_and_binarised_ones_pass():
    # Why binarise: Pyro's validation (on in these tests) rejects grey values under a Bernoulli likelihood.
    data = load_data("digits")
    model, guide = build(VAEConfig(x_dim=64, hidden=(8,)))
    with pytest.raises(ValueError):
        TraceMeanField_ELBO().loss(model, guide, data.test_x[:16])
    data.prepare(model.likelihood)
    assert np.isfinite(TraceMeanField_ELBO().loss(model, guide, data.test_x_eval[:16]))
    assert is_validation_enabled()  # validation stayed on throughout


def test_gaussian_likelihood_uses_grey_values_as_they_are():
    data = load_data("digits")
    data.prepare(GaussianLikelihood())
    assert not data.binarize
    assert torch.equal(data.train_epoch(), data.train_x) and torch.equal(data.test_x_eval, data.test_x)


def test_minibatches_cover_every_row_once_in_a_seeded_order():
    x = torch.arange(23, dtype=torch.float32).unsqueeze(1)
    torch.manual_seed(3)
    batches = list(minibatches(x, 5))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    assert sorted(torch.cat(batches).squeeze(1).tolist()) == list(range(23))
    torch.manual_seed(3)
    assert all(torch.equal(a, b) for a, b in zip(batches, minibatches(x, 5), strict=True))
    assert torch.cat(batches).squeeze(1).tolist() != list(range(23))


def _write_idx(path: Path, array: np.ndarray) -> None:
    # IDX format: magic 0x0000 0x08 (ubyte) ndim, then big-endian int32 dims, then the bytes.
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_mnist_layout(root: Path, cls: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (12, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 12),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 5),
    }
    for name, arr in arrays.items():
        _write_idx(root / cls / "raw" / name, arr)
    return arrays


@pytest.mark.parametrize(("name", "cls"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_layout_idx_files_load_scaled_with_labels(tmp_path, name, cls):
    arrays = _write_mnist_layout(tmp_path, cls, np.random.default_rng(0))
    data = load_data(name, data_dir=tmp_path, download=False)
    # Images keep their event shape (C, H, W) = (1, 28, 28), and their 256 grey levels.
    assert data.image_shape == (28, 28) and data.x_shape == (1, 28, 28) and data.levels == 256
    expected = arrays["train-images-idx3-ubyte"][:, None] / 255.0
    np.testing.assert_allclose(data.train_x.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(data.test_x.numpy(), arrays["t10k-images-idx3-ubyte"][:, None] / 255.0, rtol=1e-6)
    assert data.train_y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert data.test_y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_missing_mnist_offline_is_one_line_naming_dir_files_and_digits(tmp_path):
    with pytest.raises(UserError) as err:
        load_data("mnist", data_dir=tmp_path, download=False)
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "MNIST" / "raw") in message and "--dataset digits" in message
    assert all(f in message for f in torchvision_files("mnist"))
    assert torchvision_files("mnist") == [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ]


def test_failed_download_is_one_line(tmp_path, monkeypatch):
    # torchvision's own download loop runs, but every fetch fails as it would offline: nothing is downloaded.
    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise URLError("no network")

    monkeypatch.setattr("torchvision.datasets.mnist.download_and_extract_archive", offline)
    with pytest.raises(UserError) as err:
        load_data("fashion-mnist", data_dir=tmp_path, download=True)
    message = str(err.value)
    assert calls and "\n" not in message
    assert "downloading it failed" in message and "--dataset digits" in message and str(tmp_path) in message


def test_user_npy_images_with_labels(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.random((60, 5, 7)).astype(np.float32)
    y = rng.integers(0, 3, 60)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    data = load_data(str(tmp_path / "x.npy"), labels=str(tmp_path / "y.npy"))
    assert data.image_shape == (5, 7) and data.x_dim == 35 and data.x_shape == (1, 5, 7)
    assert data.train_x.shape[0] == 50 and data.test_x.shape[0] == 10
    # Images keep their labels through the split.
    by_image = {tuple(r.reshape(-1).tolist()): int(t) for r, t in zip(torch.as_tensor(x), y, strict=True)}
    test = data.test_x.flatten(1).tolist()
    assert all(by_image[tuple(r)] == t for r, t in zip(test, data.test_y.tolist(), strict=True))


def test_user_pt_rows_load_with_weights_only(tmp_path):
    x = torch.rand(30, 16, dtype=torch.float64)
    torch.save(x, tmp_path / "x.pt")
    data = load_data(str(tmp_path / "x.pt"))
    assert data.image_shape == (4, 4) and data.train_x.dtype == torch.float32
    assert sorted(map(tuple, torch.cat([data.train_x, data.test_x]).tolist())) == sorted(map(tuple, x.float().tolist()))


class NotATensor:
    pass


def _bad_inputs(tmp: Path) -> dict[str, tuple[str, dict, str]]:
    rng = np.random.default_rng(0)
    cases = {}

    def npy(name, arr):
        np.save(tmp / name, arr)
        return str(tmp / name)

    cases["1-D"] = (npy("a.npy", rng.random(10)), {}, "shape (10,)")
    cases["4-D"] = (npy("b.npy", rng.random((4, 2, 2, 2))), {}, "needs 1 or 3 channels on its last axis")
    cases["5-D"] = (npy("b5.npy", rng.random((4, 2, 2, 2, 1))), {}, "(N, H, W, C) / (N, C, H, W) images")
    nan = rng.random((10, 4))
    nan[3, 1] = np.nan
    cases["NaN"] = (npy("c.npy", nan), {}, "NaN")
    cases["empty"] = (npy("d.npy", np.zeros((0, 4))), {}, "at least 2")
    cases["strings"] = (npy("e.npy", np.array([["a", "b"], ["c", "d"]])), {}, "dtype")
    torch.save(torch.rand(5, 4, dtype=torch.complex64), tmp / "f.pt")
    cases["complex"] = (str(tmp / "f.pt"), {}, "complex")
    torch.save({"x": torch.rand(5, 4)}, tmp / "g.pt")
    cases["dict"] = (str(tmp / "g.pt"), {}, "not a single tensor")
    torch.save(NotATensor(), tmp / "h.pt")
    cases["pickled object"] = (str(tmp / "h.pt"), {}, "weights_only")
    (tmp / "i.csv").write_text("1,2\n")
    cases["suffix"] = (str(tmp / "i.csv"), {}, ".npy or .pt")
    cases["missing"] = (str(tmp / "nope.npy"), {}, "does not exist")
    cases["unknown name"] = ("cifar", {}, "unknown dataset 'cifar'")
    good = npy("j.npy", rng.random((12, 4)))
    cases["labels length"] = (good, {"labels": npy("k.npy", np.arange(11))}, "expected (12,)")
    cases["labels float"] = (good, {"labels": npy("l.npy", rng.random(12))}, "integer class labels")
    return cases


@pytest.mark.parametrize(
    "case",
    [
        "1-D",
        "4-D",
        "5-D",
        "NaN",
        "empty",
        "strings",
        "complex",
        "dict",
        "pickled object",
        "suffix",
        "missing",
        "unknown name",
        "labels length",
        "labels float",
    ],
)
def test_user_data_errors_are_one_line(tmp_path, case):
    path, kwargs, expected = _bad_inputs(tmp_path)[case]
    with pytest.raises(UserError) as err:
        load_data(path, **kwargs)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_values_outside_the_likelihood_support(tmp_path):
    x = np.random.default_rng(0).normal(size=(12, 4))
    np.save(tmp_path / "x.npy", x)
    data = load_data(str(tmp_path / "x.npy"))
    with pytest.raises(UserError, match=r"bernoulli likelihood needs values in \[0, 1\].*--likelihood gaussian"):
        data.prepare(BernoulliLikelihood())
    data.prepare(GaussianLikelihood())  # real values are in the Gaussian's support
    assert not data.binarize


def test_binary_user_data_is_not_rebinarised(tmp_path):
    x = (np.random.default_rng(0).random((12, 4)) > 0.5).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    data = load_data(str(tmp_path / "x.npy"))
    data.prepare(BernoulliLikelihood())
    assert not data.binarize and torch.equal(data.train_epoch(), data.train_x)


def test_a_transposed_array_and_a_tiny_data_set_are_warned_about_in_one_line_each(tmp_path, capsys):
    """A (28, 28, 1797) array reads as 28 grey images of 28 x 1797 (it loads: it could be meant), with a warning
    that names the longer axis and the fix; 5 rows split 4 / 1 with a warning that says so."""
    from pyro_vae.cli import main
    from pyro_vae.errors import DataWarning

    transposed = tmp_path / "transposed.npy"
    np.save(transposed, np.zeros((28, 28, 1797), dtype=np.float32))
    with pytest.warns(DataWarning, match=r"first axis \(28\) .* shorter than axis 2 \(1797\).*moveaxis\(array, 2, 0\)"):
        assert load_data(str(transposed)).train_x.shape[1:] == (1, 28, 1797)
    tiny = tmp_path / "tiny.npy"
    np.save(tiny, np.random.default_rng(0).random((5, 3)).astype(np.float32))
    with pytest.warns(DataWarning, match="only 5 examples, split 4 for training and 1 for testing"):
        load_data(str(tiny))
    rows = tmp_path / "rows.npy"
    np.save(rows, np.zeros((120, 64), dtype=np.float32))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        load_data(str(rows))  # 120 examples of 64 values: nothing to say
    # On the command line each is one line, and the run goes on.
    args = ["train", "--dataset", str(tiny), "--epochs", "1", "--batch-size", "2", "--no-progress", "--z-dim", "2"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "pyro-vae: warning: " in err and "only 5 examples" in err and "Traceback" not in err
    assert "warnings.warn" not in err
