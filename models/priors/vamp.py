"""The VampPrior (Tomczak & Welling 2018, "VAE with a VampPrior", eq. 9):

    p(z) = (1/K) sum_{k=1}^K q(z | u_k),

a mixture of the guide's own posteriors at K learnable pseudo-inputs u_k. The prior is given the guide's
posterior function q(z|x), whatever the guide family, not the encoder's internals. No KL(Normal || mixture)
has a closed form, so ``TraceMeanField_ELBO`` falls back to the one-sample Monte Carlo estimate for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyro.distributions as dist
import torch
from pyro_vae.models.networks import as_shape, check_count, check_flag
from torch import Tensor, nn

from pyro_vae.checks import check_number

#: q(z|x) for a batch x of shape ``(K, *x_shape)``: a distribution of batch shape (K,) and event shape (z_dim,).
Posterior = Callable[[Tensor], dist.Distribution]


@dataclass
class VampPriorOptions:
    """Fields:
    components: K, the number of pseudo-inputs of the VampPrior.
    learn_weights: learn the VampPrior's mixture weights instead of the paper's uniform 1/K.
    init_from_data: before training, start the pseudo-inputs at K random training examples (Tomczak and
        Welling's initialisation) instead of uniform noise.
    """

    components: int = 10
    learn_weights: bool = False
    init_from_data: bool = False

    def __post_init__(self) -> None:
        check_count(self.components, "components")
        check_flag(self.learn_weights, "learn_weights")
        check_flag(self.init_from_data, "init_from_data")


class VampPrior(nn.Module):
    """p(z) = sum_k w_k q(z | u_k), with ``posterior`` the guide's q(z|x) (e.g. ``guide.posterior``).

    Args:
        posterior: the guide's posterior function, called on the pseudo-inputs.
        x_shape: the shape of one example (an int D for flat data); each pseudo-input u_k has it.
        num_components: K.
        pseudo_inputs: optional ``(K, *x_shape)`` initial values, e.g. K training images; default: uniform on
            [0, 1], the range of pixel intensities.
        learn_weights: learn w = softmax(logits) instead of the paper's uniform w_k = 1/K.

    The pseudo-inputs are parameters of the *model* (Pyro name "model$$$prior.pseudo_inputs"). The posterior
    is a function, not a submodule: the guide's parameters stay the guide's only (one optimiser over model and
    guide updates each once; the model's state_dict has no copy of them), and gradients still flow into them
    through log p(z).
    """

    def __init__(
        self,
        posterior: Posterior,
        x_shape: int | Sequence[int],
        num_components: int = 10,
        pseudo_inputs: Tensor | None = None,
        learn_weights: bool = False,
    ) -> None:
        super().__init__()
        if not callable(posterior):
            raise ValueError(f"the VampPrior needs the guide's posterior function q(z|x), got {posterior!r}")
        x_shape = as_shape(x_shape)
        if not x_shape or min(x_shape) < 1:
            raise ValueError(f"x_shape must be positive integers, got {x_shape!r}")
        check_number(num_components, "the VampPrior's number of pseudo-inputs", integer=True, low=1)
        self.posterior = posterior
        self.x_shape = x_shape
        self.num_components = num_components
        if pseudo_inputs is None:
            pseudo_inputs = torch.rand(num_components, *x_shape)
        pseudo_inputs = torch.as_tensor(pseudo_inputs, dtype=torch.get_default_dtype())
        if pseudo_inputs.shape != (num_components, *x_shape):
            raise ValueError(
                f"pseudo_inputs must have shape (num_components, *x_shape) = {(num_components, *x_shape)}, "
                f"got {tuple(pseudo_inputs.shape)}"
            )
        self.pseudo_inputs = nn.Parameter(pseudo_inputs.clone())
        self.learn_weights = learn_weights
        if learn_weights:
            self.logits = nn.Parameter(torch.zeros(num_components))
        else:
            self.register_buffer("logits", torch.zeros(num_components))

    @property
    def weights(self) -> Tensor:
        """w_k = softmax(logits)_k (1/K unless ``learn_weights``)."""
        return torch.softmax(self.logits, -1)

    @torch.no_grad()
    def init_from_data(self, x: Tensor, generator: torch.Generator | None = None) -> None:
        """Set the pseudo-inputs to K distinct rows of ``x`` drawn at random (Tomczak & Welling's data init)."""
        if math.prod(x.shape[1:]) != math.prod(self.x_shape):
            raise ValueError(
                f"data rows have shape {tuple(x.shape[1:])} but the VampPrior's pseudo-inputs have {self.x_shape}"
            )
        x = x.reshape(x.shape[0], *self.x_shape)
        if x.shape[0] < self.num_components:
            raise ValueError(
                f"need at least {self.num_components} data rows to initialise the pseudo-inputs, got {x.shape[0]}"
            )
        idx = torch.randperm(x.shape[0], generator=generator)[: self.num_components]
        self.pseudo_inputs.copy_(x[idx].to(self.pseudo_inputs))

    def forward(self) -> dist.Distribution:
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), self.posterior(self.pseudo_inputs))
