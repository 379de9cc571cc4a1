"""The VampPrior (Tomczak & Welling 2018, "VAE with a VampPrior", eq. 9):

    p(z) = (1/K) sum_{k=1}^K q(z | u_k),

a mixture of the guide's own posteriors at K learnable pseudo-inputs u_k. No KL(Normal || mixture) has
a closed form, so ``TraceMeanField_ELBO`` falls back to the one-sample Monte Carlo estimate for it.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.distributions as dist
import torch
from torch import Tensor, nn


class VampPrior(nn.Module):
    """p(z) = sum_k w_k N(z; mu(u_k), diag sigma(u_k)^2) with the guide's encoder x -> (mu(x), sigma(x)).

    Args:
        encoder: the guide's encoder (called on the pseudo-inputs; must return ``(loc, scale)``).
        x_dim: data dimension; each pseudo-input u_k has shape (x_dim,).
        num_components: K.
        pseudo_inputs: optional (K, x_dim) initial values, e.g. K training images; default: uniform on
            [0, 1], the range of pixel intensities.
        learn_weights: learn w = softmax(logits) instead of the paper's uniform w_k = 1/K.

    The pseudo-inputs are parameters of the *model* (Pyro name "model$$$prior.pseudo_inputs"); the encoder
    stays a parameter of the *guide* only, see ``__init__``.
    """

    def __init__(
        self,
        encoder: Callable[[Tensor], tuple[Tensor, Tensor]],
        x_dim: int,
        num_components: int = 10,
        pseudo_inputs: Tensor | None = None,
        learn_weights: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(x_dim, bool) or not isinstance(x_dim, int) or x_dim < 1:
            raise ValueError(f"x_dim must be a positive integer, got {x_dim!r}")
        if isinstance(num_components, bool) or not isinstance(num_components, int) or num_components < 1:
            raise ValueError(f"the VampPrior needs a positive integer number of pseudo-inputs, got {num_components!r}")
        # Hold the encoder in a tuple so nn.Module does NOT register it as a submodule of the prior.
        # Registered, its parameters would belong to the model as well as the guide: the usual
        # torch.optim.Adam([*model.parameters(), *guide.parameters()]) would hold each encoder weight
        # twice and apply every update twice per step; pyro.module("model") and pyro.module("guide")
        # would put the same tensor in the param store under two names; the model's state_dict would
        # carry a second copy of the encoder. Gradients still flow: log p(z) calls the encoder.
        # (The guide owns the encoder, so guide.to(device) moves it for the prior too.)
        self._encoder = (encoder,)
        self.x_dim = x_dim
        self.num_components = num_components
        if pseudo_inputs is None:
            pseudo_inputs = torch.rand(num_components, x_dim)
        pseudo_inputs = torch.as_tensor(pseudo_inputs, dtype=torch.get_default_dtype())
        if pseudo_inputs.shape != (num_components, x_dim):
            raise ValueError(
                f"pseudo_inputs must have shape (num_components, x_dim) = ({num_components}, {x_dim}), "
                f"got {tuple(pseudo_inputs.shape)}"
            )
        self.pseudo_inputs = nn.Parameter(pseudo_inputs.clone())
        self.learn_weights = learn_weights
        if learn_weights:
            self.logits = nn.Parameter(torch.zeros(num_components))
        else:
            self.register_buffer("logits", torch.zeros(num_components))

    @property
    def encoder(self) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
        return self._encoder[0]

    @property
    def weights(self) -> Tensor:
        """w_k = softmax(logits)_k (1/K unless ``learn_weights``)."""
        return torch.softmax(self.logits, -1)

    @torch.no_grad()
    def init_from_data(self, x: Tensor, generator: torch.Generator | None = None) -> None:
        """Set the pseudo-inputs to K distinct rows of ``x`` drawn at random (Tomczak & Welling's data init)."""
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.x_dim:
            raise ValueError(f"data rows have {x.shape[1]} values but the VampPrior's x_dim is {self.x_dim}")
        if x.shape[0] < self.num_components:
            raise ValueError(
                f"need at least {self.num_components} data rows to initialise the pseudo-inputs, got {x.shape[0]}"
            )
        idx = torch.randperm(x.shape[0], generator=generator)[: self.num_components]
        self.pseudo_inputs.copy_(x[idx].to(self.pseudo_inputs))

    def forward(self) -> dist.Distribution:
        loc, scale = self.encoder(self.pseudo_inputs)
        components = dist.Normal(loc, scale).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), components)
