"""Image-shaped data: every accepted array layout and a folder of PNG / JPEG files load with their event shape
(C, H, W) and the right pixels (compared with numpy's own transposes and with the pixels the test wrote), each bad
input is one line, and image data train end to end from the command line, conv networks included."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pyro_vae.cli import main
from pyro_vae.data import load_data
from pyro_vae.errors import UserError
from pyro_vae.run_dir import load_run


def all_examples(data) -> np.ndarray:
    """Train and test examples together, sorted, so that a split does not matter for comparisons."""
    x = torch.cat([data.train_x, data.test_x]).numpy()
    return x[np.lexsort(x.reshape(len(x), -1).T[::-1])]


def sorted_rows(x: np.ndarray) -> np.ndarray:
    return x[np.lexsort(x.reshape(len(x), -1).T[::-1])]


RNG = np.random.default_rng(0)
U8_HWC = RNG.integers(0, 256, (24, 8, 12, 3), dtype=np.uint8)  # channels-last colour
U8_HW1 = RNG.integers(0, 256, (24, 8, 12, 1), dtype=np.uint8)  # channels-last grey
F_CHW = RNG.random((24, 3, 8, 12)).astype(np.float32)  # channels-first colour
F_1HW = RNG.random((24, 1, 8, 12)).astype(np.float32)  # channels-first grey
F_HW = RNG.random((24, 8, 12)).astype(np.float32)  # grey images without a channel axis
F_ROWS = RNG.random((24, 10)).astype(np.float32)  # rows: flat data stays flat

# (array, event shape it must get, the same examples in (N, *event) as numpy computes them, levels)
LAYOUTS = {
    "uint8 (N, H, W, 3)": (U8_HWC, (3, 8, 12), U8_HWC.transpose(0, 3, 1, 2) / 255.0, 256),
    "uint8 (N, H, W, 1)": (U8_HW1, (1, 8, 12), U8_HW1.transpose(0, 3, 1, 2) / 255.0, 256),
    "float (N, 3, H, W)": (F_CHW, (3, 8, 12), F_CHW, None),
    "float (N, 1, H, W)": (F_1HW, (1, 8, 12), F_1HW, None),
    "float (N, H, W)": (F_HW, (1, 8, 12), F_HW[:, None], None),
    "float (N, D)": (F_ROWS, (10,), F_ROWS, None),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_each_array_layout_loads_with_its_event_shape_and_pixels(tmp_path, layout, suffix):
    arr, shape, expected, levels = LAYOUTS[layout]
    path = tmp_path / f"x{suffix}"
    if suffix == ".npy":
        np.save(path, arr)
    else:
        torch.save(torch.from_numpy(arr), path)
    data = load_data(str(path))
    assert data.x_shape == shape and data.levels == levels
    assert data.train_x.dtype == torch.float32 and data.train_x.shape[0] + data.test_x.shape[0] == 24
    np.testing.assert_allclose(all_examples(data), sorted_rows(expected.astype(np.float32)), rtol=1e-6)
    if arr.dtype == np.uint8:
        assert any("uint8 pixels scaled to [0, 1] (divided by 255)" in note for note in data.notes)
        assert data.train_x.max() <= 1 and data.train_x.min() >= 0
    if len(shape) == 3:
        assert data.display_shape == shape and data.image_shape == shape[1:]


def write_png(path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_a_folder_of_pngs_loads_grey_images_unlabelled(tmp_path):
    images = RNG.integers(0, 256, (12, 9, 7), dtype=np.uint8)
    for i, img in enumerate(images):
        write_png(tmp_path / "faces" / f"{i:02d}.png", img)
    (tmp_path / "faces" / "README.txt").write_text("not an image: ignored")
    data = load_data(str(tmp_path / "faces"))
    assert data.x_shape == (1, 9, 7) and data.train_y is None and data.levels == 256
    np.testing.assert_allclose(all_examples(data), sorted_rows(images[:, None] / 255.0), rtol=1e-6)


def test_a_folder_with_one_subfolder_per_label_gives_rgb_images_and_labels(tmp_path):
    cats = RNG.integers(0, 256, (5, 6, 8, 3), dtype=np.uint8)
    dogs = RNG.integers(0, 256, (7, 6, 8, 3), dtype=np.uint8)
    for i, img in enumerate(cats):
        write_png(tmp_path / "pets" / "cat" / f"{i}.png", img)
    for i, img in enumerate(dogs):
        write_png(tmp_path / "pets" / "dog" / f"{i}.png", img)
    data = load_data(str(tmp_path / "pets"))
    assert data.x_shape == (3, 6, 8)
    x = torch.cat([data.train_x, data.test_x]).numpy()
    y = torch.cat([data.train_y, data.test_y]).numpy()
    assert sorted(y.tolist()) == [0] * 5 + [1] * 7  # labels are the sub-folders in sorted order: cat 0, dog 1
    for label, source in ((0, cats), (1, dogs)):
        np.testing.assert_allclose(sorted_rows(x[y == label]), sorted_rows(source.transpose(0, 3, 1, 2) / 255.0))


def test_image_size_resizes_the_shorter_side_and_centre_crops(tmp_path):
    # 12 x 24 (H x W): the shorter side is already 12, so --image-size 12 only crops columns 6 to 17.
    wide = RNG.integers(0, 256, (12, 24), dtype=np.uint8)
    write_png(tmp_path / "mixed" / "wide.png", wide)
    # A flat 36 x 36 image of value 200 stays 200 everywhere when shrunk to 12 x 12.
    write_png(tmp_path / "mixed" / "flat.png", np.full((36, 36), 200, dtype=np.uint8))
    data = load_data(str(tmp_path / "mixed"), image_size=12)
    assert data.x_shape == (1, 12, 12)
    x = torch.cat([data.train_x, data.test_x])[:, 0].numpy() * 255
    flat = np.isclose(x, 200, atol=1e-3).all(axis=(1, 2))
    assert flat.sum() == 1
    np.testing.assert_allclose(x[~flat][0], wide[:, 6:18], atol=1e-3)
    assert any("resized and centre-cropped to 12x12" in note for note in data.notes)


def test_jpeg_files_load(tmp_path):
    img = np.full((16, 16, 3), (10, 120, 240), dtype=np.uint8)
    for i in range(3):
        Image.fromarray(img).save(tmp_path / f"{i}.jpg", quality=95)
    data = load_data(str(tmp_path))
    assert data.x_shape == (3, 16, 16)
    # JPEG is lossy, but a flat colour survives within a few levels.
    np.testing.assert_allclose(data.train_x[0, :, 8, 8].numpy() * 255, [10, 120, 240], atol=4)


def _bad_folders(tmp):
    cases = {}
    mixed = tmp / "sizes"
    write_png(mixed / "a.png", np.zeros((8, 8), dtype=np.uint8))
    write_png(mixed / "b.png", np.zeros((10, 12), dtype=np.uint8))
    cases["mixed sizes"] = (mixed, {}, "different sizes (8x8, ..., 12x10); pass --image-size N")
    broken = tmp / "broken"
    write_png(broken / "a.png", np.zeros((8, 8), dtype=np.uint8))
    (broken / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    cases["unreadable"] = (broken, {}, f"cannot read the image {broken / 'b.png'}")
    (tmp / "empty").mkdir()
    (tmp / "empty" / "notes.txt").write_text("hello")
    cases["no images"] = (tmp / "empty", {}, "holds no image files")
    both = tmp / "both"
    write_png(both / "a.png", np.zeros((8, 8), dtype=np.uint8))
    write_png(both / "label" / "b.png", np.zeros((8, 8), dtype=np.uint8))
    cases["images and sub-folders"] = (both, {}, "holds both images and sub-folders")
    hollow = tmp / "hollow"
    write_png(hollow / "one" / "a.png", np.zeros((8, 8), dtype=np.uint8))
    (hollow / "two").mkdir(parents=True)
    cases["empty label folder"] = (hollow, {}, "the label folder(s) two hold no images")
    deep = tmp / "deep"
    deep.mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint16)).save(deep / "a.png")
    Image.fromarray(np.zeros((8, 8), dtype=np.uint16)).save(deep / "b.png")
    cases["16-bit"] = (deep, {}, "not 8-bit ones")
    cases["labels for a folder"] = (mixed, {"labels": str(tmp / "y.npy")}, "a folder's labels are its sub-folders")
    np.save(tmp / "x.npy", np.zeros((4, 3), dtype=np.float32))
    cases["image size for an array"] = (tmp / "x.npy", {"image_size": 8}, "--image-size is for a folder of images")
    np.save(tmp / "c5.npy", np.zeros((4, 5, 6, 5), dtype=np.uint8))
    cases["5 channels"] = (tmp / "c5.npy", {}, "needs 1 or 3 channels")
    single = tmp / "single"
    write_png(single / "a.png", np.zeros((8, 8), dtype=np.uint8))
    cases["one image"] = (single, {}, "holds 1 image; it needs at least 2")
    return cases


BAD = [
    "mixed sizes",
    "unreadable",
    "no images",
    "images and sub-folders",
    "empty label folder",
    "16-bit",
    "labels for a folder",
    "image size for an array",
    "5 channels",
    "one image",
]


@pytest.mark.parametrize("case", BAD)
def test_bad_image_data_is_one_line(tmp_path, case):
    path, kwargs, expected = _bad_folders(tmp_path)[case]
    with pytest.raises(UserError) as err:
        load_data(str(path), **kwargs)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_the_cli_says_a_bad_folder_in_one_line_and_writes_nothing(tmp_path, capsys):
    path, _, expected = _bad_folders(tmp_path)["mixed sizes"]
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--dataset", str(path), "--epochs", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pyro-vae: error: ") and expected in err[0]
    assert not (out / "checkpoint.pt").exists()


TINY_CONV = ["--encoder-channels", "4", "8", "--decoder-channels", "4", "8", "--hidden", "16", "--z-dim", "2"]
TINY = ["--epochs", "1", "--batch-size", "32", "--threads", "1", "--no-progress"]


def test_a_uint8_colour_array_trains_with_conv_networks_from_the_cli(tmp_path, capsys):
    np.save(tmp_path / "x.npy", RNG.integers(0, 256, (60, 32, 32, 3), dtype=np.uint8))
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--dataset", str(tmp_path / "x.npy"), "--encoder", "conv", "--decoder", "conv"]
    assert main([*args, *TINY_CONV, *TINY, "--progress"]) == 0
    err = capsys.readouterr().err
    assert "uint8 pixels scaled to [0, 1] (divided by 255)" in err and "read as channels-last images" in err
    run = load_run(out)
    assert run.config.model.x_shape == (3, 32, 32) and run.data.x_shape == (3, 32, 32)
    assert type(run.guide.encoder).__name__ == "ConvEncoder" and type(run.model.decoder).__name__ == "ConvDecoder"
    assert run.config.model.options == {"encoder": {"channels": (4, 8)}, "decoder": {"channels": (4, 8)}}
    assert (out / "reconstructions.png").exists() and (out / "manifold.png").exists()


def test_a_folder_of_pngs_trains_with_the_mlp_from_the_cli(tmp_path):
    for i in range(30):
        write_png(
            tmp_path / "pngs" / ("a" if i % 2 else "b") / f"{i}.png", RNG.integers(0, 256, (10, 10, 3), dtype=np.uint8)
        )
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--dataset", str(tmp_path / "pngs"), "--image-size", "8", "--likelihood"]
    assert main([*args, "gaussian", "--hidden", "16", *TINY]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["image_size"] == 8 and config["model"]["x_shape"] == [3, 8, 8]
    assert load_run(out).data.train_y is not None


def test_a_model_made_for_rows_still_trains_and_resumes_on_images(tmp_path):
    # Runs written before images kept their shape stored x_shape = (H * W,): they load, resume and evaluate.
    import dataclasses

    from pyro_vae import TrainConfig, VAEConfig, train

    np.save(tmp_path / "x.npy", RNG.integers(0, 256, (40, 6, 6), dtype=np.uint8))
    config = TrainConfig(
        model=VAEConfig(x_shape=(36,), z_dim=2, hidden=(8,)), dataset=str(tmp_path / "x.npy"), epochs=1, threads=1
    )
    train(config, tmp_path / "run", progress=False, figures=False)
    resumed = train(dataclasses.replace(config, epochs=2), tmp_path / "run", resume=True, progress=False)
    assert resumed.data.x_shape == (36,) and len(resumed.metrics) == 2
    assert load_run(tmp_path / "run").data.test_x_eval.shape[1:] == (36,)
