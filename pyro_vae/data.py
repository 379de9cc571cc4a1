"""Data sets for training: scikit-learn's 8x8 digits (offline, the default), MNIST and Fashion-MNIST
(torchvision), the user's own arrays (.npy / .pt) and folders of images.

Every data set becomes a ``VAEData``: float32 tensors of shape ``(N, *x_shape)``, already on the training device, a
fixed train/test split, labels where known (for plots) and the image shape. Images keep their event shape
(C, H, W) from here to the model, the guide, the figures and evaluation (MNIST is (1, 28, 28)); rows of D values
stay (D,) (scikit-learn gives the digits as rows of 64, shown as 8x8 images). The layout rules for a user's
arrays and folders are in ``pyro_vae.images``.

Bernoulli likelihoods and grey pixels: a Bernoulli p(x|z) has support {0, 1}, so grey pixels fail
Pyro's validation (rightly). Rather than switching validation off, training binarises the pixels: by default with
*dynamic binarisation*, where each epoch draws a fresh x ~ Bernoulli(pixels) (``VAEData.train_epoch``), or, with
``binarization="fixed"``, once, with a fixed seed, as the "static" binarised MNIST of Larochelle & Murray 2011 was
made (one draw of the same kind; not their file, which ``load_data("static-mnist")`` reads). The test set is
binarised once with a fixed seed (``VAEData.test_x_eval``) either way, so that test ELBOs are comparable across
epochs and runs.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pyro_vae.checks import check_number
from pyro_vae.errors import DataWarning, UserError
from pyro_vae.images import as_examples, layout_of, read_image_folder
from pyro_vae.named import did_you_mean
from pyro_vae.safe_load import safe_torch_load
from pyro_vae.static_mnist import load_static_mnist

#: Built-in data sets (``--dataset NAME``); anything else is a path to a .npy or .pt file or to a folder of images.
#: CIFAR-10 is not among them: torchvision reads it from Python pickles, which this project never unpickles
#: (convert it to an (N, 32, 32, 3) uint8 .npy array, which loads as 3 x 32 x 32 images).
BUILTIN_DATASETS = ("digits", "mnist", "fashion-mnist", "static-mnist")

#: Seed of the fixed train/test split (independent of the training seed, so runs share a test set).
SPLIT_SEED = 0
#: Size of the digits test set: 1,797 images -> 1,500 train / 297 test.
DIGITS_TEST_SIZE = 297
#: Fraction of a user's array held out as the test set.
USER_TEST_FRACTION = 1 / 6
#: Fewer examples than this in a user's data set get a warning: 1/6 of them are too few test examples for
#: the spread of an evaluation (its standard errors and the spread over examples) to mean much.
FEW_EXAMPLES = 100
#: Seed of the one fixed binarisation of the test set.
TEST_BINARIZE_SEED = 1234
#: How a Bernoulli likelihood's grey training images are binarised (``TrainConfig.binarization``): a fresh draw every
#: epoch, or one draw for the whole run.
BINARIZATIONS = ("dynamic", "fixed")
#: Seed of the one binarisation of the training set under ``binarization="fixed"``: a constant, not the run's seed,
#: so that every run trains on the same binary images, as every run on a static binarised data set does.
TRAIN_BINARIZE_SEED = 2011

_TORCHVISION = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


def default_data_dir() -> Path:
    """Where MNIST / Fashion-MNIST are downloaded: $XDG_CACHE_HOME/pyro-vae (default ~/.cache/pyro-vae)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "pyro-vae"


@dataclass
class VAEData:
    """A data set ready for training.

    Attributes:
        name: the data set's name (or the user's file path).
        train_x, test_x: float32 tensors ``(N, *x_shape)``, on the training device: (N, D) rows or (N, C, H, W) images.
        train_y, test_y: integer labels on the CPU (for plots), or None.
        image_shape: (H, W) of one example shown as an image (for rows, H * W == D).
        binarize: True when grey pixels meet a Bernoulli likelihood (set by ``prepare``): the training images are
            binarised (each epoch, or once when ``fixed_binarization``), the validation and test images once.
        kept_rows: after a validation hold-out (``pyro_vae.validation.hold_out``), (the indices of ``train_x``'s rows
            in the whole training set, its size), so that a fixed binarisation gives each image the same draw with
            or without the hold-out; None: ``train_x`` is the whole training set.
        levels: the number of equally spaced values k / (levels - 1) the pixels take in [0, 1] (256 for 8-bit
            images, 17 for the digits), or None when unknown (a float array).
        notes: what loading did that the log should say (layout read, uint8 scaled to [0, 1], resizing).
    """

    name: str
    train_x: Tensor
    test_x: Tensor
    train_y: Tensor | None
    test_y: Tensor | None
    image_shape: tuple[int, int]
    binarize: bool = False
    _test_eval: Tensor | None = field(default=None, repr=False)
    _train_fixed: Tensor | None = field(default=None, repr=False)
    kept_rows: tuple[Tensor, int] | None = field(default=None, repr=False)
    levels: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def x_dim(self) -> int:
        return int(self.train_x[0].numel())

    @property
    def x_shape(self) -> tuple[int, ...]:
        """The shape of one example: (D,) for rows of D values, (C, H, W) for images."""
        return tuple(int(s) for s in self.train_x.shape[1:])

    @property
    def display_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one example shown as an image: the images' own shape, or ``(1, *image_shape)`` for rows."""
        shape = self.x_shape
        return (shape[0], shape[1], shape[2]) if len(shape) == 3 else (1, *self.image_shape)

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def match_shape(self, shape: tuple[int, ...] | None) -> VAEData:
        """Flatten image examples to rows when ``shape`` is (D,) with D = C * H * W (a model made for rows, such as a
        run written before images kept their shape); any other ``shape`` leaves the data as they are."""
        if shape is not None and len(shape) == 1 and len(self.x_shape) > 1 and shape[0] == self.x_dim:
            self.train_x, self.test_x = self.train_x.flatten(1), self.test_x.flatten(1)
            if self._test_eval is not None:
                self._test_eval = self._test_eval.flatten(1)
            if self._train_fixed is not None:
                self._train_fixed = self._train_fixed.flatten(1)
        return self

    def to(self, device: torch.device | str) -> VAEData:
        """Move the tensors to ``device`` (labels stay on the CPU)."""
        self.train_x = self.train_x.to(device)
        self.test_x = self.test_x.to(device)
        if self._test_eval is not None:
            self._test_eval = self._test_eval.to(device)
        if self._train_fixed is not None:
            self._train_fixed = self._train_fixed.to(device)
        return self

    def prepare(self, likelihood: nn.Module, binarization: str = "dynamic") -> None:
        """Check the data against the likelihood's support and decide on binarisation.

        A likelihood with ``binary_data = True`` (Bernoulli) needs values in [0, 1]: grey values are
        binarised, binary ones are used as they are. ``binarization`` says how the training set is: "dynamic", a
        fresh draw each epoch; "fixed", one draw x = 1[u < pixels] with u uniform from a CPU generator seeded with
        ``TRAIN_BINARIZE_SEED``, drawn for the whole training set (``kept_rows``), so that an image's draw is the same
        with or without a validation hold-out. Any other likelihood checks its own support with ``check_support``
        (and ``binarization`` does not apply).
        """
        if binarization not in BINARIZATIONS:
            raise UserError(f"binarization must be one of {', '.join(BINARIZATIONS)}, got {binarization!r}")
        self._train_fixed = None
        if getattr(likelihood, "binary_data", False):
            for split, x in (("train", self.train_x), ("test", self.test_x)):
                if x.min() < 0 or x.max() > 1:
                    raise UserError(
                        f"{self.name}: the bernoulli likelihood needs values in [0, 1] but the {split} set has values "
                        f"in [{x.min().item():.4g}, {x.max().item():.4g}]; "
                        "rescale the data or use --likelihood gaussian"
                    )
            grey = bool(
                ((self.train_x != 0) & (self.train_x != 1)).any() or ((self.test_x != 0) & (self.test_x != 1)).any()
            )
            self.binarize = grey
            if grey:
                gen = torch.Generator().manual_seed(TEST_BINARIZE_SEED)
                self._test_eval = torch.bernoulli(self.test_x.cpu(), generator=gen).to(self.device)
                if binarization == "fixed":
                    self._train_fixed = self._fixed_draw()
            else:
                self._test_eval = self.test_x
        else:
            check = getattr(likelihood, "check_support", None)
            if check is not None:
                try:
                    check(self.train_x)
                    check(self.test_x)
                except ValueError as err:
                    raise UserError(f"{self.name}: {err}") from None
            self.binarize = False
            self._test_eval = self.test_x

    @property
    def fixed_binarization(self) -> bool:
        """True when the training set is binarised once (``prepare(..., "fixed")`` on grey data)."""
        return self._train_fixed is not None

    def _fixed_draw(self) -> Tensor:
        """The training set binarised once (``prepare``): a private CPU generator, so the draw is the same on every
        device and leaves the training stream (shuffling, z) as it was."""
        rows, total = self.kept_rows or (None, self.train_x.shape[0])
        gen = torch.Generator().manual_seed(TRAIN_BINARIZE_SEED)
        u = torch.rand((total, *self.train_x.shape[1:]), generator=gen)
        if rows is not None:
            u = u[rows]
        return (u < self.train_x.cpu()).to(self.train_x.dtype).to(self.device)

    @property
    def test_x_eval(self) -> Tensor:
        """The test set as the likelihood sees it (binarised once, with a fixed seed, when ``binarize``)."""
        return self.test_x if self._test_eval is None else self._test_eval

    def train_epoch(self) -> Tensor:
        """The training set for one epoch: a fresh Bernoulli draw of the pixels when ``binarize`` (dynamic
        binarisation), the one draw of ``prepare`` under fixed binarisation, else the data as they are.

        The dynamic draw uses torch's global generator of the data's device, so seeding (and restoring the RNG
        state on resume) reproduces it.
        """
        if self._train_fixed is not None:
            return self._train_fixed
        return torch.bernoulli(self.train_x) if self.binarize else self.train_x


def minibatches(x: Tensor, batch_size: int, start: int = 0) -> Iterator[Tensor]:
    """Shuffled minibatches of the rows of ``x``, indexed on its device (no per-sample DataLoader).

    The permutation is ``torch.randperm`` on the global generator, drawn when this is called (not at the
    first batch), so that a resumed run can draw it and then restore the generator to mid-epoch. The last
    batch may be smaller. ``start`` skips the first ``start`` batches of the permutation.
    """
    perm = torch.randperm(x.shape[0], device=x.device)
    return (x[idx] for idx in perm.split(batch_size)[start:])


def check_data_options(dataset: Any, data_dir: Any, labels: Any, image_size: Any) -> None:
    """One line (``UserError``) for data settings of a ``TrainConfig`` that no run can use."""
    if not isinstance(dataset, str) or not dataset:
        raise UserError(f"dataset must be a name ({', '.join(BUILTIN_DATASETS)}) or a file path, got {dataset!r}")
    check_dataset_name(dataset)
    for name, value in (("data_dir", data_dir), ("labels", labels)):
        if value is not None and (not isinstance(value, str) or not value):
            raise UserError(f"{name} must be a path, got {value!r}")
    if image_size is not None:
        check_number(image_size, "image_size", integer=True, low=1, note="or None: keep the size")


def check_dataset_name(name: str) -> None:
    """A one-line error for a name that is neither a built-in data set nor a path to one (checked before loading)."""
    path = Path(name)
    if name.lower() not in BUILTIN_DATASETS and path.suffix not in (".npy", ".pt") and not path.exists():
        raise UserError(
            f"unknown dataset {name!r}: use one of {', '.join(BUILTIN_DATASETS)}, a path to a .npy or .pt file, "
            "or a folder of images" + did_you_mean(name, list(BUILTIN_DATASETS))
        )


def load_data(
    dataset: str = "digits",
    *,
    data_dir: str | Path | None = None,
    labels: str | Path | None = None,
    device: torch.device | str = "cpu",
    download: bool = True,
    image_size: int | None = None,
) -> VAEData:
    """Load ``dataset`` ("digits", "mnist", "fashion-mnist", "static-mnist", a path to a .npy / .pt array or to a
    folder of images).

    - digits: scikit-learn's ``load_digits``, rows of 64 pixels / 16, split 1,500 / 297 with a fixed seed.
    - mnist, fashion-mnist: ``torchvision.datasets`` under ``data_dir`` (default ``default_data_dir()``),
      downloaded when missing and ``download``; (1, 28, 28) images, pixels / 255; the official train/test split.
    - static-mnist: Larochelle & Murray's fixed binarisation of MNIST (``pyro_vae.static_mnist``), its three
      ``.amat`` files in ``data_dir/binarized_mnist/`` (never downloaded); train = their 50,000 training images
      then their 10,000 validation images, test = their 10,000 test images; binary, no labels.
    - an array: (N, D), (N, H, W), (N, H, W, C) or (N, C, H, W) with C in {1, 3} of finite values (the layout
      rules are ``pyro_vae.images``'s; uint8 is scaled by 1/255), split 5/6 train, 1/6 test with a fixed seed;
      ``labels`` optionally names a 1-D integer array of N labels.
    - a folder: PNG / JPEG images, directly in it or in one sub-folder per label (``ImageFolder``'s layout),
      resized and centre-cropped to ``image_size`` x ``image_size`` when given; split as an array.

    Raises ``UserError`` with a one-line message for anything missing or malformed.
    """
    if not isinstance(dataset, (str, Path)) or str(dataset) == "":
        raise UserError(f"dataset must be one of {', '.join(BUILTIN_DATASETS)} or a path to a .npy/.pt file")
    name = str(dataset)
    if name in BUILTIN_DATASETS and labels is not None:
        raise UserError(f"--labels is only for your own data; the {name} data set has its labels")
    if image_size is not None and not Path(name).is_dir():
        raise UserError(f"--image-size is for a folder of images; {name} is not a folder (drop --image-size)")
    if name == "digits":
        data = _load_digits()
    elif name in _TORCHVISION:
        data = _load_torchvision(name, Path(data_dir) if data_dir is not None else default_data_dir(), download)
    elif name == "static-mnist":
        train_x, test_x, notes = load_static_mnist(Path(data_dir) if data_dir is not None else default_data_dir())
        data = VAEData(name, train_x, test_x, None, None, (28, 28), levels=2, notes=notes)
    elif Path(name).is_dir():
        data = _load_folder(Path(name), labels, image_size)
    else:
        data = _load_user(name, labels)
    return data.to(device)


def _load_digits() -> VAEData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.as_tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.as_tensor(digits.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(np.arange(len(x)), test_size=DIGITS_TEST_SIZE, random_state=SPLIT_SEED)
    train_idx, test_idx = torch.as_tensor(train_idx), torch.as_tensor(test_idx)
    return VAEData("digits", x[train_idx], x[test_idx], y[train_idx], y[test_idx], (8, 8), levels=17)


def torchvision_files(name: str) -> list[str]:
    """The raw files torchvision expects for ``name`` under DATA_DIR/<Class>/raw/."""
    from torchvision import datasets

    cls = getattr(datasets, _TORCHVISION[name])
    return [os.path.splitext(os.path.basename(filename))[0] for filename, _ in cls.resources]


def _load_torchvision(name: str, root: Path, download: bool) -> VAEData:
    from torchvision import datasets

    cls = getattr(datasets, _TORCHVISION[name])
    raw = root / cls.__name__ / "raw"
    files = torchvision_files(name)

    def missing(reason: str) -> UserError:
        return UserError(
            f"{name} is not in {raw} (expected {', '.join(files)}) and {reason}; put the files there, "
            f"pass --data-dir DIR with {cls.__name__}/raw/ inside, or use --dataset digits (offline)"
        )

    splits = []
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=False)
        except RuntimeError:
            if not download:
                raise missing("downloading is switched off") from None
            try:
                ds = cls(str(root), train=train, download=True)
            except Exception as err:  # noqa: BLE001 - any network or file error means "could not download"
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise missing(f"downloading it failed ({first})") from None
        except (AssertionError, TypeError, ValueError, OSError) as err:
            raise UserError(
                f"could not read {name} from {raw}: {err or type(err).__name__}; delete the files"
            ) from None
        splits.append((ds.data.unsqueeze(1).float() / 255.0, ds.targets.long()))
    (train_x, train_y), (test_x, test_y) = splits
    h, w = ds.data.shape[1:]
    return VAEData(name, train_x, test_x, train_y, test_y, (int(h), int(w)), levels=256)


def _read_array(path: Path, what: str) -> np.ndarray:
    if not path.exists():
        raise UserError(f"{what} file {path} does not exist")
    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, EOFError, OSError) as err:
            if isinstance(err, ValueError) and "pickle" in str(err):
                # numpy takes any file without the .npy header for a pickle, and never unpickles here.
                detail = "it is not a .npy file, or holds pickled Python objects, which are never loaded"
            else:
                detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(
                f"could not read {what} file {path} as a plain numeric .npy array ({detail}); "
                "write it with numpy.save of a numeric array"
            ) from None
    if path.suffix == ".pt":
        obj = safe_torch_load(path, f"{what} file", "save a single tensor with torch.save(tensor, path)")
        if not isinstance(obj, Tensor):
            raise UserError(f"{what} file {path} holds a {type(obj).__name__}, not a single tensor")
        if obj.is_complex():
            raise UserError(f"{what} file {path} has complex dtype {obj.dtype}; give real values")
        return obj.numpy()
    raise UserError(f"{what} file {path} must end in .npy or .pt (got {path.suffix or 'no suffix'})")


def _load_user(name: str, labels: str | Path | None) -> VAEData:
    path = Path(name)
    check_dataset_name(name)
    arr = _read_array(path, "dataset")
    if arr.dtype.kind not in "biuf":
        raise UserError(f"dataset {path} has dtype {arr.dtype}; give real numbers (float, int or bool)")
    layout_of(tuple(arr.shape), f"dataset {path}")
    if arr.shape[0] < 2 or math.prod(arr.shape[1:]) == 0:
        raise UserError(f"dataset {path} has shape {tuple(arr.shape)}; it needs at least 2 non-empty examples")
    _warn_about_layout(tuple(arr.shape), path)
    x, notes = as_examples(arr, f"dataset {path}")
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        raise UserError(f"dataset {path} has NaN or infinite values in {bad} example(s); remove or fix them")
    if x.dim() == 4:
        shape = (int(x.shape[2]), int(x.shape[3]))
    else:
        d = x.shape[1]
        side = math.isqrt(d)
        shape = (side, side) if side * side == d else (1, d)
    y = None if labels is None else _read_labels(Path(labels), x.shape[0])
    return _split(str(path), x, y, shape, 256 if arr.dtype == np.uint8 else None, notes)


def _warn_about_layout(shape: tuple[int, ...], path: Path) -> None:
    """A ``DataWarning`` when the leading axis, read as the examples, is shorter than an axis of one example:
    the examples are then more likely along another axis (a (28, 28, 1797) array is 1797 images of 28 x 28)."""
    longest = max(range(1, len(shape)), key=lambda axis: shape[axis])
    if shape[0] < shape[longest]:
        warnings.warn(
            f"dataset {path} has shape {shape}: its first axis ({shape[0]}) is read as the examples but is shorter "
            f"than axis {longest} ({shape[longest]}); if the examples lie along axis {longest}, move it first "
            f"(numpy.moveaxis(array, {longest}, 0)) and save again",
            DataWarning,
            stacklevel=4,
        )


def _load_folder(folder: Path, labels: str | Path | None, image_size: int | None) -> VAEData:
    if labels is not None:
        raise UserError(f"--labels is for arrays; a folder's labels are its sub-folders (drop --labels for {folder})")
    if image_size is not None:
        check_number(image_size, "--image-size", integer=True, low=1)
    pixels, y, notes = read_image_folder(folder, image_size)
    if pixels.shape[0] < 2:
        raise UserError(f"{folder} holds {pixels.shape[0]} image; it needs at least 2")
    x = pixels.float().div_(255.0)
    return _split(str(folder), x, y, (int(x.shape[2]), int(x.shape[3])), 256, notes)


def _read_labels(path: Path, n: int) -> Tensor:
    lab = _read_array(path, "labels")
    if lab.ndim != 1 or lab.shape[0] != n:
        raise UserError(f"labels {path} have shape {tuple(lab.shape)}; expected ({n},), one per example")
    if lab.dtype.kind not in "biu":
        raise UserError(f"labels {path} have dtype {lab.dtype}; give integer class labels")
    return torch.as_tensor(lab.astype(np.int64))


def _split(
    name: str, x: Tensor, y: Tensor | None, shape: tuple[int, int], levels: int | None, notes: list[str]
) -> VAEData:
    """A user's examples split 5/6 train, 1/6 test with the fixed ``SPLIT_SEED``."""
    from sklearn.model_selection import train_test_split

    n = x.shape[0]
    test_size = max(1, round(n * USER_TEST_FRACTION))
    if n < FEW_EXAMPLES:
        warnings.warn(
            f"{name} has only {n} examples, split {n - test_size} for training and {test_size} for testing: "
            f"too few for the test ELBO, log p(x) and their spread to be trusted; give at least {FEW_EXAMPLES}",
            DataWarning,
            stacklevel=3,
        )
    train_idx, test_idx = train_test_split(np.arange(n), test_size=test_size, random_state=SPLIT_SEED)
    train_idx, test_idx = torch.as_tensor(train_idx), torch.as_tensor(test_idx)
    ys = (None, None) if y is None else (y[train_idx], y[test_idx])
    return VAEData(name, x[train_idx], x[test_idx], ys[0], ys[1], shape, levels=levels, notes=notes)
