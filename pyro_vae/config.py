"""VAEConfig: the whole description of a VAE, as a dataclass that round-trips to JSON."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class VAEConfig:
    """What ``build`` needs to construct a model and guide.

    Fields:
        x_dim: data dimension D (pixels per image).
        z_dim: latent dimension J.
        prior: name in ``pyro_vae.registry.PRIORS`` ("standard", "gaussian", ...).
        likelihood: name in ``LIKELIHOODS`` ("bernoulli", "gaussian", ...).
        decoder: name in ``DECODERS`` ("mlp", "linear").
        hidden: hidden layer widths of the MLP decoder (and of the encoder unless ``encoder_hidden`` is set).
        encoder_hidden: hidden widths of the encoder; None means "same as hidden"; () makes it affine.
        prior_loc, prior_scale: mu_p and sigma_p of the "gaussian" prior (a number or one per latent dimension).
        learn_prior: make the "gaussian" prior's mu_p and sigma_p learnable.
        sigma: the fixed standard deviation of the "gaussian" likelihood (1 gives 1/2 the summed squared
            error; 1/sqrt(2) gives the blog's summed squared error, up to constants); the initial sigma of
            the "gaussian-learned" likelihood.
        mixture_components: K, the number of components of the "mixture" prior and of pseudo-inputs of the
            "vamp" prior.
        vamp_learn_weights: learn the VampPrior's mixture weights (default: uniform 1/K, as in the paper).
        prior_init_from_data: before training, start the prior from the training data by calling its
            ``init_from_data(x_train)`` ("vamp": K random training images as pseudo-inputs, Tomczak & Welling's
            initialisation, instead of uniform noise); a prior without that method refuses it.
        sigma_per_pixel: the "gaussian-learned" likelihood learns one sigma per pixel instead of one global sigma.
        min_sigma: floor of the learned sigma (constant pixels would otherwise drive it to 0 and the ELBO to +inf).
    """

    x_dim: int
    z_dim: int = 2
    prior: str = "standard"
    likelihood: str = "bernoulli"
    decoder: str = "mlp"
    hidden: tuple[int, ...] = (256,)
    encoder_hidden: tuple[int, ...] | None = None
    prior_loc: float | list[float] = 0.0
    prior_scale: float | list[float] = 1.0
    learn_prior: bool = False
    sigma: float = 1.0
    mixture_components: int = 10
    vamp_learn_weights: bool = False
    prior_init_from_data: bool = False
    sigma_per_pixel: bool = False
    min_sigma: float = 1e-3

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        if self.encoder_hidden is not None:
            self.encoder_hidden = tuple(int(h) for h in self.encoder_hidden)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError with a one-line message for any value that cannot build a VAE."""
        from pyro_vae.registry import DECODERS, LIKELIHOODS, PRIORS

        for name, value in (("x_dim", self.x_dim), ("z_dim", self.z_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for kind, value, registry in (
            ("prior", self.prior, PRIORS),
            ("likelihood", self.likelihood, LIKELIHOODS),
            ("decoder", self.decoder, DECODERS),
        ):
            if value not in registry:
                raise ValueError(f"unknown {kind} {value!r}; choose one of: {', '.join(sorted(registry))}")
        for name, widths in (("hidden", self.hidden), ("encoder_hidden", self.encoder_hidden or ())):
            if any(w < 1 for w in widths):
                raise ValueError(f"{name} sizes must be positive integers, got {list(widths)}")
        if not (isinstance(self.sigma, (int, float)) and math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"sigma must be a positive finite number, got {self.sigma!r}")
        k = self.mixture_components
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"mixture_components must be a positive integer, got {k!r}")
        if not (isinstance(self.min_sigma, (int, float)) and math.isfinite(self.min_sigma) and self.min_sigma > 0):
            raise ValueError(f"min_sigma must be a positive finite number, got {self.min_sigma!r}")
        if self.likelihood == "gaussian-learned" and not self.sigma > self.min_sigma:
            raise ValueError(
                f"the initial sigma ({self.sigma}) of the gaussian-learned likelihood must exceed "
                f"min_sigma ({self.min_sigma})"
            )

    @property
    def encoder_widths(self) -> tuple[int, ...]:
        return self.hidden if self.encoder_hidden is None else self.encoder_hidden

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        d["encoder_hidden"] = None if self.encoder_hidden is None else list(self.encoder_hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VAEConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown VAEConfig field(s): {', '.join(unknown)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> VAEConfig:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> VAEConfig:
        return cls.from_json(Path(path).read_text())
