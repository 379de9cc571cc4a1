"""``--model-module PATH.py:FACTORY``: evaluate or compare estimators on a Pyro model and guide of the user's own.

``FACTORY()`` (no arguments) returns ``(model, guide)`` or an object with ``model`` and ``guide`` attributes
(Pyro's examples/vae/vae.py ``VAE`` instance works as it is); each is any Pyro callable taking the batch ``x``
of shape (N, *x_shape). The factory is where trained weights are loaded. The data are a built-in data set or
an array file (``--dataset``), its test split, binarised once with a fixed seed by default (as this project's
Bernoulli runs are).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyro.poutine as poutine
import torch
from torch import Tensor

from pyro_vae.data import load_data
from pyro_vae.errors import UserError

EXAMPLE = "my_vae.py:make_vae"


def add_model_module_options(parser: argparse.ArgumentParser, data_flags: bool = True) -> None:
    """``--model-module`` and, unless the parser has them already (``data_flags=False``), the data options."""
    group = parser.add_argument_group("a model and guide of your own")
    group.add_argument(
        "--model-module",
        metavar="PATH.py:FACTORY",
        default=None,
        help="use the Pyro model and guide returned by FACTORY() in the file PATH.py, (model, guide) or an object "
        "with .model and .guide, instead of the run in DIR (DIR is then where the results are written)",
    )
    group.add_argument(
        "--binarize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --model-module: binarise grey test data once with a fixed seed (default: on)",
    )
    if data_flags:
        group.add_argument("--dataset", default="digits", help="with --model-module: the data set (default: digits)")
        group.add_argument("--data-dir", default=None, help="with --model-module: where MNIST is (or is downloaded)")
        group.add_argument(
            "--download",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="with --model-module: download MNIST when missing (default: on)",
        )


def load_model_module(spec: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """(model, guide) from ``PATH.py:FACTORY``; every failure is a one-line ``UserError``."""
    path_text, _, name = spec.rpartition(":")
    if not path_text or not name.isidentifier():
        raise UserError(f"--model-module needs PATH.py:FACTORY, got {spec!r}; for example {EXAMPLE}")
    path = Path(path_text)
    if not path.is_file():
        raise UserError(f"--model-module: {path} does not exist; give the path of a Python file")
    module_spec = importlib.util.spec_from_file_location(f"pyro_vae_user_module_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise UserError(f"--model-module: {path} is not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.path.insert(0, str(path.resolve().parent))  # so that the file can import its neighbours
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:  # the user's code: any failure becomes one line
        raise UserError(f"--model-module: importing {path} failed: {type(err).__name__}: {err}") from None
    finally:
        sys.path.remove(str(path.resolve().parent))
    factory = getattr(module, name, None)
    if not callable(factory):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise UserError(f"--model-module: {path} has no function {name!r}; it defines {', '.join(found) or 'none'}")
    try:
        made = factory()
    except Exception as err:
        raise UserError(f"--model-module: {name}() failed: {type(err).__name__}: {err}") from None
    if isinstance(made, tuple) and len(made) == 2:
        model, guide = made
    else:
        model, guide = getattr(made, "model", None), getattr(made, "guide", None)
    if not (callable(model) and callable(guide)):
        raise UserError(
            f"--model-module: {name}() must return (model, guide) or an object with .model and .guide, "
            f"got {type(made).__name__}"
        )
    return model, guide


def check_module_fits(model: Callable[..., Any], guide: Callable[..., Any], x: Tensor, data_name: str) -> None:
    """Run the guide, then the model on the guide's latents, once on two examples of ``x``: a failure (a model
    written for other data, e.g. ``x.reshape(-1, 784)`` on the 8x8 digits) is one ``UserError`` line naming the
    data's shape and the user's error, which names the shape the code expected."""
    batch = x[:2]
    try:
        with poutine.block(), torch.no_grad():
            guide_trace = poutine.trace(guide).get_trace(batch)
            poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(batch)
    except Exception as err:  # the user's code: any failure becomes one line
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise UserError(
            f"--model-module: the model and guide do not fit the data: {data_name} gives batches of shape "
            f"(N, {', '.join(map(str, x.shape[1:]))}) (x_shape {tuple(x.shape[1:])}, {x[0].numel()} values per "
            f"example), and running them on 2 examples failed with {type(err).__name__}: {first}; choose the "
            "data set the module was written for (--dataset) or adapt its shapes"
        ) from None


def module_test_data(args: argparse.Namespace) -> tuple[Tensor, str]:
    """The test split of ``--dataset`` for a user's module, binarised once unless ``--no-binarize``."""
    dataset = getattr(args, "dataset", None) or "digits"
    data = load_data(dataset, data_dir=getattr(args, "data_dir", None), download=getattr(args, "download", True))
    # prepare() binarises grey values once with a fixed seed for a likelihood that declares binary data.
    data.prepare(SimpleNamespace(binary_data=args.binarize, check_support=None))
    return data.test_x_eval, data.name
