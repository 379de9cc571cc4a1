"""The hand-written PyTorch VAE that the benchmarks measure the library against (it lives only in ``benchmarks/``).

The project's networks written directly in PyTorch, no Pyro: the MLP (Linear, Softplus, Linear each way) or the
conv networks on 1 x 28 x 28 images (encoder Conv(1->32, 4, stride 2) ReLU Conv(32->64, 4, stride 2) ReLU,
Linear(3136->hidden) ReLU, Linear(hidden->2 z); decoder Linear(z->hidden) ReLU Linear(hidden->3136) ReLU,
ConvTranspose(64->32, 4, stride 2) ReLU ConvTranspose(32->1, 4, stride 2)); sigma = softplus(s) + 1e-5; the
loss is the closed-form KL(q || N(0, I)) (Odaibo, "Tutorial: Deriving the Standard Variational Autoencoder (VAE)
Loss Function", eq. 40) plus the Bernoulli cross-entropy with logits. ``copy_from`` takes the project's weights,
so both sides start from (or score) the same network. Used by ``step_time.py``, ``family_step_time.py``,
``end_to_end.py`` and ``eval_speed.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MIN_SCALE = 1e-5  # the project's scale floor (guides/normal_guide.py)


class HandWrittenVAE(nn.Module):
    """The reference VAE: ``arch`` "mlp" (x of shape (N, *x_shape), flattened) or "conv" (x of shape (N, 1, 28, 28))."""

    def __init__(self, arch: str, x_shape: tuple[int, ...], hidden: int, z_dim: int) -> None:
        super().__init__()
        self.arch, self.z_dim = arch, z_dim
        if arch == "conv":
            self.encoder = nn.Sequential(
                nn.Conv2d(1, 32, 4, 2, 1),
                nn.ReLU(),
                nn.Conv2d(32, 64, 4, 2, 1),
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(64 * 7 * 7, hidden),
                nn.ReLU(),
                nn.Linear(hidden, 2 * z_dim),
            )
            self.decoder = nn.Sequential(
                nn.Linear(z_dim, hidden),
                nn.ReLU(),
                nn.Linear(hidden, 64 * 7 * 7),
                nn.ReLU(),
                nn.Unflatten(1, (64, 7, 7)),
                nn.ConvTranspose2d(64, 32, 4, 2, 1),
                nn.ReLU(),
                nn.ConvTranspose2d(32, 1, 4, 2, 1),
            )
        else:
            x_dim = math.prod(x_shape)
            self.encoder = nn.Sequential(nn.Linear(x_dim, hidden), nn.Softplus(), nn.Linear(hidden, 2 * z_dim))
            self.decoder = nn.Sequential(nn.Linear(z_dim, hidden), nn.Softplus(), nn.Linear(hidden, x_dim))

    def copy_from(self, model: nn.Module, guide: nn.Module) -> None:
        """Take the project's weights (same layers, so the same initialisation or the trained weights)."""
        if self.arch == "conv":
            enc, dec = guide.encoder, model.decoder
            for i in (0, 2):
                self.encoder[i].load_state_dict(enc.conv[i].state_dict())
            self.encoder[5].load_state_dict(enc.fc[0].state_dict())
            self.encoder[7].load_state_dict(guide.head.state_dict())
            self.decoder[0].load_state_dict(dec.fc[0][0].state_dict())
            self.decoder[2].load_state_dict(dec.fc[0][2].state_dict())
            self.decoder[5].load_state_dict(dec.deconv[0].state_dict())
            self.decoder[7].load_state_dict(dec.deconv[2].state_dict())
            return
        # The project's guide is an encoder trunk (Linear, Softplus) and a head (the last Linear).
        self.encoder[0].load_state_dict(guide.encoder.net[0].state_dict())
        self.encoder[2].load_state_dict(guide.head.state_dict())
        self.decoder.load_state_dict(model.decoder.net.state_dict())

    def _posterior(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.arch == "mlp":
            x = x.reshape(x.shape[0], -1)
        h = self.encoder(x)
        return x, h[:, : self.z_dim], F.softplus(h[:, self.z_dim :]) + MIN_SCALE

    def per_example(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        """-ELBO per example at one z ~ q(z|x) (given or drawn): KL (eq. 40) + BCE(x, decoder(z))."""
        x, loc, scale = self._posterior(x)
        if z is None:
            z = loc + scale * torch.randn_like(loc)
        kl = -0.5 * torch.sum(1 + torch.log(scale**2) - loc**2 - scale**2, dim=1)
        bce = F.binary_cross_entropy_with_logits(self.decoder(z).reshape(x.shape), x, reduction="none")
        return kl + bce.reshape(x.shape[0], -1).sum(1)

    def loss(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        """``per_example(x, z).sum()``, written as a PyTorch user writes a training loss (each term summed whole)."""
        x, loc, scale = self._posterior(x)
        if z is None:
            z = loc + scale * torch.randn_like(loc)
        kl = -0.5 * torch.sum(1 + torch.log(scale**2) - loc**2 - scale**2)
        logits = self.decoder(z)
        if logits.shape != x.shape:  # the yardstick stays lean: no view where none is needed
            logits = logits.reshape(x.shape)
        return kl + F.binary_cross_entropy_with_logits(logits, x, reduction="sum")


def adam_step(
    ref: nn.Module, lr: float, fused: bool, eps: float = 1e-8
) -> tuple[torch.optim.Adam, Callable[[Tensor], float]]:
    """The hand-written training step of ``ref`` (a module with ``loss(x)``: ``loss.item()`` at its end, as a loop needs
    the number) and its Adam (epsilon ``eps``)."""
    opt = torch.optim.Adam(ref.parameters(), lr=lr, fused=fused, eps=eps)

    def step(x: Tensor) -> float:
        opt.zero_grad(set_to_none=True)
        loss = ref.loss(x)
        loss.backward()
        opt.step()
        return loss.item()

    return opt, step


class HandWrittenTwoLayerVAE(nn.Module):
    """Burda et al.'s two-stochastic-layer VAE written in PyTorch alone, the yardstick of ``two_layer_reference.py``:

    q(z1|x) q(z2|z1) and p(z2) p(z1|z2) p(x|z1), each conditional a diagonal Gaussian N(mu, softplus(s) + 1e-5) from an
    MLP with tanh between its layers (784 -> 200 -> 200 -> z1, z1 -> 100 -> 100 -> z2 and back), the decoder
    z1 -> 200 -> 200 -> 784 Bernoulli logits. The ELBO is the one-sample Monte Carlo estimate Pyro's ``Trace_ELBO``
    makes, log p(x, z1, z2) - log q(z1, z2 | x) at z ~ q, every term written out.
    """

    def __init__(
        self,
        x_dim: int = 784,
        hidden: tuple[int, ...] = (200, 200),
        sizes: tuple[int, int] = (100, 50),
        mid: tuple[int, ...] = (100, 100),
    ) -> None:
        super().__init__()
        self.sizes = sizes
        z1, z2 = sizes
        self.q1 = _tanh_mlp(x_dim, hidden, 2 * z1)
        self.q2 = _tanh_mlp(z1, mid, 2 * z2)
        self.p1 = _tanh_mlp(z2, mid, 2 * z1)
        self.px = _tanh_mlp(z1, tuple(reversed(hidden)), x_dim)

    def copy_from(self, model: nn.Module, guide: nn.Module) -> None:
        """Take the project's ``HierarchicalModel`` and bottom-up guide's weights (the same layers, in order)."""
        mine = [m for m in self.q1 if isinstance(m, nn.Linear)]
        theirs = [m for m in guide.first.encoder.net if isinstance(m, nn.Linear)] + [guide.first.head]
        for net, project in (
            (self.q2, guide.ups[0].net),
            (self.p1, model.conditionals[0].net),
            (self.px, model.decoder.net),
        ):
            mine += [m for m in net if isinstance(m, nn.Linear)]
            theirs += [m for m in project if isinstance(m, nn.Linear)]
        for a, b in zip(mine, theirs, strict=True):  # a ValueError if the project's have another number of layers
            a.load_state_dict(b.state_dict())

    @staticmethod
    def _gaussian(out: Tensor) -> tuple[Tensor, Tensor]:
        half = out.shape[-1] // 2
        return out[..., :half], F.softplus(out[..., half:]) + MIN_SCALE

    def per_example(self, x: Tensor, z1: Tensor | None = None, z2: Tensor | None = None) -> Tensor:
        """The one-sample ELBO per example at z1 ~ q(z1|x), z2 ~ q(z2|z1) (drawn unless given)."""
        m1, s1 = self._gaussian(self.q1(x))
        if z1 is None:
            z1 = m1 + s1 * torch.randn_like(m1)
        m2, s2 = self._gaussian(self.q2(z1))
        if z2 is None:
            z2 = m2 + s2 * torch.randn_like(m2)
        pm, ps = self._gaussian(self.p1(z2))
        log_px = -F.binary_cross_entropy_with_logits(self.px(z1), x, reduction="none").sum(-1)
        log_p = log_px + _log_normal(z1, pm, ps) + _log_normal(z2, torch.zeros_like(z2), torch.ones_like(z2))
        return log_p - _log_normal(z1, m1, s1) - _log_normal(z2, m2, s2)

    def loss(self, x: Tensor) -> Tensor:
        """-ELBO summed over the batch (what Pyro's ``Trace_ELBO`` reports)."""
        return -self.per_example(x).sum()


def _tanh_mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.Tanh()]
        in_dim = width
    return nn.Sequential(*layers, nn.Linear(in_dim, out_dim))


def _log_normal(z: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """log N(z; loc, diag scale^2) summed over the last dimension."""
    return (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
