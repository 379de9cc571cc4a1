"""Class-conditional samples of the models that read labels (``--model conditional``, ``--model m2``).

``class_samples(model, 3, 8)`` draws 8 examples of class 3: z from the model's prior for that class (p(z|y) of
the conditional VAE, N(0, I) for M2), shown as E[x | z, y]. ``pyro_vae.figures.write_class_samples`` writes
``class_samples.png`` from them, one row per class.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from pyro_vae.errors import UserError

#: Seed of the class-sample figure's draws (the caller's random stream is left as it was).
CLASS_SAMPLE_SEED = 0


@torch.no_grad()
def class_samples(model: nn.Module, label: int, count: int = 8, seed: int | None = CLASS_SAMPLE_SEED) -> Tensor:
    """``count`` samples E[x | z, y=label], z ~ the model's prior given y, shape ``(count, *x_shape)``, on the CPU.

    ``model`` is a conditional VAE or M2 model (``pyro_vae.build`` of ``--model conditional`` / ``m2``); ``seed``
    fixes the draws without touching the caller's random stream (None: draw from the current stream)."""
    classes = getattr(model, "classes", None)
    if classes is None or not hasattr(model, "class_means"):
        raise UserError("class samples need a model that reads labels (--model conditional or --model m2)")
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < classes:
        raise UserError(f"the class must be an integer in 0 .. {classes - 1}, got {label!r}")
    device = next((b.device for b in [*model.parameters(), *model.buffers()]), torch.device("cpu"))
    y = torch.full((count,), int(label), dtype=torch.long, device=device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        return model.class_means(y).cpu()
