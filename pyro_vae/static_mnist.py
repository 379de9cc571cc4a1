"""Static MNIST: Larochelle & Murray's fixed binarisation of MNIST, read from its three ``.amat`` text files.

The data set of the published static-MNIST numbers (Larochelle & Murray 2011, "The Neural Autoregressive
Distribution Estimator"; Tomczak & Welling 2018's -85.57 is on it, and pythae's reproduction of it): 50,000
training, 10,000 validation and 10,000 test images of 28 x 28 binary pixels, one image a line of 784
space-separated 0s and 1s, row-major, in ``binarized_mnist_{train,valid,test}.amat``. torchvision has no class
for it, hence this small reader (``numpy.loadtxt`` does the parsing). It does not download the files: no checksum
of them is published that this project could check a download against.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pyro_vae.errors import UserError

#: The folder under the data directory that holds the three files.
FOLDER = "binarized_mnist"
#: The three files, by split, and how many images each holds.
FILES = {split: f"binarized_mnist_{split}.amat" for split in ("train", "valid", "test")}
SIZES = {"train": 50_000, "valid": 10_000, "test": 10_000}
PIXELS = 28 * 28


def read_amat(path: Path) -> Tensor:
    """The images of one ``.amat`` file as a float32 tensor (N, 1, 28, 28) of 0s and 1s, read with
    ``numpy.loadtxt``; a line of another length than 784, or a value other than 0 or 1, is a one-line ``UserError``."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "loadtxt: input contained no data")  # said below, as an error
            x = np.loadtxt(path, dtype=np.uint8, ndmin=2)
    except OSError as err:
        raise UserError(f"could not read {path}: {err.strerror or type(err).__name__}") from None
    except ValueError as err:  # numpy names the row and the value: "could not convert string '0.5' to uint8 ..."
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"could not read {path} as 784 values of 0 or 1 a line: {detail}") from None
    if x.size == 0:
        raise UserError(f"{path} holds no images")
    if x.shape[1] != PIXELS:
        raise UserError(f"{path} has {x.shape[1]} values a line, not {PIXELS} (one 28 x 28 image a line)")
    if int(x.max()) > 1:
        row = int(np.flatnonzero((x > 1).any(axis=1))[0])
        raise UserError(f"{path}, image {row + 1}: a value {int(x[row].max())} (static MNIST's pixels are 0 or 1)")
    return torch.from_numpy(x.astype(np.float32)).reshape(-1, 1, 28, 28)


def load_static_mnist(root: Path) -> tuple[Tensor, Tensor, list[str]]:
    """(train, test, notes) from ``root / FOLDER``: train is the 50,000 training images followed by the 10,000
    validation images (hold the last 10,000 out with ``validation=10000, validation_split="last"`` for the
    published split), test the 10,000 test images; notes for the log."""
    folder = root / FOLDER
    missing = [name for name in FILES.values() if not (folder / name).is_file()]
    if missing:
        raise UserError(
            f"static-mnist is not in {folder} (missing {', '.join(missing)}); download Larochelle & Murray's "
            f"binarized_mnist_{{train,valid,test}}.amat into it, or pass --data-dir DIR with {FOLDER}/ inside "
            "(pyro-vae does not download them)"
        )
    split = {name: read_amat(folder / file) for name, file in FILES.items()}
    # Other sizes than the published files' are allowed (a subset of your own) but said in the log.
    notes = [
        f"{FILES[name]} holds {x.shape[0]:,} images, not static MNIST's {SIZES[name]:,}"
        for name, x in split.items()
        if x.shape[0] != SIZES[name]
    ]
    notes.append(
        "static-mnist: Larochelle & Murray's fixed binarisation; the training set is train (first) + valid (last "
        f"{split['valid'].shape[0]:,}: --validation {split['valid'].shape[0]} --validation-split last holds it out)"
    )
    return torch.cat([split["train"], split["valid"]]), split["test"], notes
