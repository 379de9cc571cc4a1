"""``--dataset static-mnist``: Larochelle & Murray's fixed binarisation of MNIST, read from its three .amat text files
(``pyro_vae.static_mnist``). The files here are small ones written with numpy's own text writer from known images,
so every pixel read back can be compared with the image it came from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae import TrainConfig, VAEConfig, load_run, train
from pyro_vae.cli import main
from pyro_vae.data import load_data
from pyro_vae.errors import UserError
from pyro_vae.static_mnist import FOLDER, read_amat
from pyro_vae.validation import hold_out

SIZES = {"train": 30, "valid": 10, "test": 12}


def write_split(folder: Path, split: str, images: np.ndarray, newline: str = "\n") -> Path:
    """``images`` (N, 28, 28) of 0/1 as the .amat format: one image a line, 784 space-separated integers, row-major."""
    path = folder / f"binarized_mnist_{split}.amat"
    np.savetxt(path, images.reshape(len(images), -1), fmt="%d", delimiter=" ", newline=newline)
    return path


@pytest.fixture
def static_dir(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    folder = tmp_path / FOLDER
    folder.mkdir()
    # Images with structure (a bright left half), so a transposed or shifted read could not pass by chance.
    images = {}
    for split, n in SIZES.items():
        x = (rng.random((n, 28, 28)) < 0.2).astype(np.int64)
        x[:, :, :14] |= (rng.random((n, 28, 14)) < 0.5).astype(np.int64)
        images[split] = x
        write_split(folder, split, x)
    return tmp_path, images


def test_every_pixel_is_read_back_where_it_was_written(static_dir):
    root, images = static_dir
    data = load_data("static-mnist", data_dir=root)
    want_train = np.concatenate([images["train"], images["valid"]])[:, None]  # valid images last
    assert data.train_x.shape == (40, 1, 28, 28) and data.test_x.shape == (12, 1, 28, 28)
    assert torch.equal(data.train_x, torch.as_tensor(want_train, dtype=torch.float32))
    assert torch.equal(data.test_x, torch.as_tensor(images["test"][:, None], dtype=torch.float32))
    assert data.train_y is None and data.test_y is None and data.levels == 2
    # Sizes other than the published files' are allowed, and said.
    assert any("holds 30 images, not static MNIST's 50,000" in note for note in data.notes)
    # The published split: the last N training images held out are exactly the valid file's.
    _, held = hold_out(data, 10, "last")
    assert torch.equal(held, torch.as_tensor(images["valid"][:, None], dtype=torch.float32))


def test_windows_line_ends_and_a_missing_last_newline_read_the_same(tmp_path, static_dir):
    _, images = static_dir
    plain = write_split(tmp_path, "plain", images["test"])
    crlf = write_split(tmp_path, "crlf", images["test"], newline="\r\n")
    cut = tmp_path / "cut.amat"
    cut.write_bytes(plain.read_bytes().rstrip(b"\n"))
    want = read_amat(plain)
    assert torch.equal(read_amat(crlf), want) and torch.equal(read_amat(cut), want)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda lines: lines[:2] + [lines[2].rsplit(" ", 1)[0]] + lines[3:], "changed from 784 to 783"),
        (lambda lines: [line.rsplit(" ", 1)[0] for line in lines], "783 values a line, not 784"),
        (lambda lines: lines[:1] + [lines[1].replace("1", "2", 1)] + lines[2:], "image 2: a value 2"),
        (lambda lines: lines[:4] + [lines[4].replace("0 ", "0.5 ", 1)] + lines[5:], "could not convert string '0.5'"),
        (lambda lines: [], "holds no images"),
    ],
    ids=["one-short-line", "all-lines-short", "value-2", "grey-value", "empty-file"],
)
def test_a_malformed_file_gets_one_line_naming_the_line(static_dir, corrupt, message):
    root, _ = static_dir
    path = root / FOLDER / "binarized_mnist_train.amat"
    path.write_text("\n".join(corrupt(path.read_text().splitlines())) + "\n")
    with pytest.raises(UserError, match=message) as err:
        load_data("static-mnist", data_dir=root)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_missing_files_get_one_line_naming_the_folder_and_the_files(tmp_path, capsys):
    (tmp_path / FOLDER).mkdir()
    write_split(tmp_path / FOLDER, "train", np.zeros((2, 28, 28), dtype=np.int64))
    with pytest.raises(UserError, match="missing binarized_mnist_valid.amat, binarized_mnist_test.amat"):
        load_data("static-mnist", data_dir=tmp_path)
    # From the command line: exit 1 (a UserError), one line, nothing written.
    out = tmp_path / "run"
    code = main(["train", "--dataset", "static-mnist", "--data-dir", str(tmp_path), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "static-mnist is not in" in err, err
    assert not out.exists()


def test_a_run_on_static_mnist_trains_from_the_cli_and_reloads(static_dir, capsys):
    root, images = static_dir
    out = root / "run"
    args = ["train", "--dataset", "static-mnist", "--data-dir", str(root), "--out", str(out), "--epochs", "2"]
    args += ["--z-dim", "2", "--hidden", "16", "--batch-size", "10", "--validation", "10", "--validation-split", "last"]
    assert main(args) == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert (config["dataset"], config["validation"]) == ("static-mnist", 10)
    run = load_run(out)
    # Binary already: nothing is binarised, the test set is the file's images as they are.
    assert not run.data.binarize
    assert torch.equal(run.data.test_x_eval, torch.as_tensor(images["test"][:, None], dtype=torch.float32))
    assert len(run.metrics) == 2 and run.metrics[-1]["val_elbo"] < 0


def test_training_and_the_preset_accept_the_published_split(static_dir):
    """TrainConfig's own path (not the CLI's) with the tomczak2018 preset's data fields over static-mnist: its
    fixed binarisation has nothing to draw (the images are binary) and its validation set is the valid file."""
    root, images = static_dir
    config = TrainConfig(
        model=VAEConfig(z_dim=2, hidden=(8,), likelihood="bernoulli"),
        dataset="static-mnist",
        data_dir=str(root),
        binarization="fixed",
        validation=10,
        validation_split="last",
        epochs=1,
        batch_size=10,
        threads=1,
    )
    run_dir = root / "api"
    train(config, run_dir, progress=False, figures=False)
    run = load_run(run_dir)
    assert not run.data.fixed_binarization
    assert torch.equal(run.data.train_x[30:], torch.as_tensor(images["valid"][:, None], dtype=torch.float32))
