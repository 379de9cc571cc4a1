"""Image-shaped data: the layout rules for a user's arrays and the reading of a folder of image files.

Every image data set reaches the model as float32 (N, C, H, W) with C in {1, 3}; rows of D values stay (N, D).

Array layouts (``layout_of``): (N, D) rows; (N, H, W) grey images, read as (N, 1, H, W); and 4-D arrays, where
the channel axis is the one of size 1 or 3: **channels-last (N, H, W, C) when the last axis is 1 or 3** (the
layout numpy, PIL, imageio and matplotlib write), otherwise channels-first (N, C, H, W) when axis 1 is 1 or 3
(torch's layout). So (N, 32, 32, 3) and (N, 28, 28, 1) are channels-last, (N, 3, 32, 32) and (N, 1, 28, 28)
channels-first; an array with neither axis of size 1 or 3 is refused. uint8 values are 8-bit pixels and are
scaled to [0, 1] by 1/255; other dtypes are used as they are.

A folder (``read_image_folder``) holds PNG / JPEG (any extension torchvision's ``ImageFolder`` accepts) either
directly, unlabelled, or in one sub-folder per label, as ``torchvision.datasets.ImageFolder`` reads it (labels are
the sub-folders in sorted order). The images are decoded with PIL; they become grey (C = 1) when every one is
greyscale, RGB (C = 3) otherwise. With ``image_size`` each is resized so that its shorter side is ``image_size``
and centre-cropped to ``image_size`` x ``image_size`` (torchvision's ``Resize`` then ``CenterCrop``); without it
all must have the same size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pyro_vae.errors import UserError

#: Channel counts an image may have: grey or RGB.
CHANNELS = (1, 3)


def layout_of(shape: tuple[int, ...], what: str) -> str:
    """The layout of an array of ``shape``: "rows", "grey", "channels-last" or "channels-first" (module docstring)."""
    if len(shape) == 2:
        return "rows"
    if len(shape) == 3:
        return "grey"
    if len(shape) == 4:
        if shape[3] in CHANNELS:
            return "channels-last"
        if shape[1] in CHANNELS:
            return "channels-first"
        raise UserError(
            f"{what} has shape {tuple(shape)}: a 4-D array needs 1 or 3 channels on its last axis (N, H, W, C) "
            "or on axis 1 (N, C, H, W)"
        )
    raise UserError(
        f"{what} has shape {tuple(shape)}; give (N, D) rows, (N, H, W) grey images, or (N, H, W, C) / "
        "(N, C, H, W) images with C = 1 or 3"
    )


def as_examples(arr: np.ndarray, what: str) -> tuple[Tensor, list[str]]:
    """The array as float32 examples, (N, D) or (N, C, H, W), and notes for the log (layout, uint8 scaling)."""
    layout = layout_of(tuple(arr.shape), what)
    notes = []
    if arr.dtype == np.uint8:
        x = torch.from_numpy(np.ascontiguousarray(arr)).float().div_(255.0)
        notes.append(f"{what}: uint8 pixels scaled to [0, 1] (divided by 255)")
    else:
        x = torch.as_tensor(arr.astype(np.float32))
    if layout == "grey":
        x = x.unsqueeze(1)
    elif layout == "channels-last":
        x = x.permute(0, 3, 1, 2).contiguous()
    if layout != "rows":
        notes.append(f"{what}: {tuple(arr.shape)} read as {layout} images, each of shape {tuple(x.shape[1:])}")
    return x, notes


def image_files(folder: Path) -> tuple[list[Path], list[int] | None, list[str]]:
    """(image paths, their labels or None, the class names) of ``folder`` (module docstring)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    entries = [p for p in sorted(folder.iterdir()) if not p.name.startswith(".")]
    direct = [p for p in entries if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS]
    subfolders = [p for p in entries if p.is_dir()]
    if direct and subfolders:
        raise UserError(
            f"{folder} holds both images and sub-folders; put all images directly in it (no labels) or each "
            "in one sub-folder per label"
        )
    if direct:
        return direct, None, []
    if not subfolders:
        raise UserError(f"{folder} holds no image files ({', '.join(IMG_EXTENSIONS)}); give a folder of images")
    classes, class_to_idx = find_classes(str(folder))
    samples = make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    empty = sorted(set(classes) - {Path(p).parent.name for p, _ in samples})
    if empty:
        raise UserError(f"{folder}: the label folder(s) {', '.join(empty)} hold no images; remove them or add images")
    return [Path(p) for p, _ in samples], [label for _, label in samples], classes


def read_image_folder(folder: Path, image_size: int | None) -> tuple[Tensor, Tensor | None, list[str]]:
    """(uint8 images (N, C, H, W), labels (N,) or None, notes) from a folder of image files (module docstring)."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms import functional as TF

    paths, labels, classes = image_files(folder)
    pictures = []
    for path in paths:
        try:
            with Image.open(path) as img:
                img.load()
                pictures.append(img.copy())
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UserError(f"cannot read the image {path} ({reason}); remove or replace the file") from None
        if pictures[-1].mode in ("I", "I;16", "I;16B", "F"):
            raise UserError(f"the image {path} has {pictures[-1].mode} pixels, not 8-bit ones; save it as 8-bit")
    mode = "L" if all(p.mode in ("1", "L", "LA") for p in pictures) else "RGB"
    if image_size is None:
        sizes = sorted({p.size for p in pictures})
        if len(sizes) > 1:
            (w1, h1), (w2, h2) = sizes[0], sizes[-1]
            raise UserError(
                f"the images in {folder} have different sizes ({w1}x{h1}, ..., {w2}x{h2}); pass --image-size N to "
                "resize and centre-crop them all to N x N"
            )
    tensors = []
    for picture in pictures:
        picture = picture.convert(mode)
        if image_size is not None:
            picture = TF.center_crop(TF.resize(picture, image_size), [image_size, image_size])
        tensors.append(TF.pil_to_tensor(picture))
    x = torch.stack(tensors)
    notes = [
        f"{folder}: {len(paths)} images, {'grey' if mode == 'L' else 'RGB'}, each of shape {tuple(x.shape[1:])}"
        + (f" (resized and centre-cropped to {image_size}x{image_size})" if image_size is not None else "")
        + (f", labels from the sub-folders {', '.join(classes)}" if labels is not None else ""),
        f"{folder}: 8-bit pixels scaled to [0, 1] (divided by 255)",
    ]
    return x, (None if labels is None else torch.tensor(labels, dtype=torch.long)), notes
