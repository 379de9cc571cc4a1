"""The semi-supervised M2 model (Kingma, Rezende, Mohamed & Welling 2014, "Semi-Supervised Learning with Deep
Generative Models", section 3.1.2): p(y) = Cat(1/K), p(z) = N(0, I), p(x|y,z) = f(x; y, z).

Kingma et al.'s objective (their eq. 9) on a batch with labelled rows L and unlabelled rows U:

    J^alpha = sum_{(x,y) in L} [-L(x, y) - alpha log q(y|x)] + sum_{x in U} -U(x),
    -L(x, y) = E_q(z|x,y)[log p(x|y,z) + log p(y) + log p(z) - log q(z|x,y)],
    -U(x) = sum_y q(y|x) (-L(x, y)) + H(q(y|x)).

In Pyro: y is observed at site "y_l" for the labelled rows and a latent site "y_u" for the unlabelled ones, which
the guide marks for parallel enumeration (``TraceEnum_ELBO`` sums over the K classes exactly: the U(x) bound), and
the classifier term alpha log q(y|x) is a ``pyro.factor`` in the labelled plate. The classifier q(y|x) is the
guide's; the model holds a reference to it (not a submodule: its weights belong to the guide's state).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from pyro.infer import TraceEnum_ELBO
from pyro_vae.models.labelled import join, one_hot, unpack
from pyro_vae.models.networks import check_count
from torch import Tensor, nn
from torch.distributions import kl_divergence

from pyro_vae.checks import check_number


@dataclass
class M2Options:
    """Fields:
    alpha: weight of the classifier term alpha * log q(y|x) on labelled examples (Kingma et al. 2014 eq. 9)
        (None: 0.1 N for N training examples, labelled and unlabelled, as Kingma et al.; set by the trainer).
    labelled: how many training examples keep their label, as equal a number per class as possible, chosen with a
        fixed seed and recorded in the run; the rest are unlabelled.
    classes: the number of classes K; the labels are 0 .. K-1.
    labelled_batch: labelled rows added to every training step, drawn cycling through the labelled examples (at
        most their number; ``pyro_vae.labelled_batches``, which scales them so that an epoch is unbiased for
        J^alpha).
    """

    alpha: float | None = None
    labelled: int = 100
    classes: int = 10
    labelled_batch: int = 100

    def __post_init__(self) -> None:
        if self.alpha is not None:
            check_number(self.alpha, "alpha", low=0, high=1e12, bounds="[)", note="or None: 0.1 N")
        check_count(self.labelled_batch, "labelled_batch", least=1)
        check_count(self.classes, "classes", least=2)
        check_count(self.labelled, "labelled", least=self.classes)


class M2Model(nn.Module):
    """Pyro model of a packed batch (``pyro_vae.models.labelled``): labelled rows in ``plate("labelled")`` (sites
    "y_l" observed, "z_l", "x_l" observed, the factor "classifier"), unlabelled rows in ``plate("unlabelled")``
    (sites "y_u", "z_u", "x_u" observed). The ``decoder`` takes z_dim + classes inputs. Train with
    ``training_elbo()`` (``TraceEnum_ELBO``, max_plate_nesting 1)."""

    labelled_input = True
    needs_all_labels = False
    plate_nesting = 1

    def __init__(
        self,
        decoder: nn.Module,
        likelihood: nn.Module,
        classifier: nn.Module,
        x_shape: Sequence[int],
        z_dim: int,
        classes: int,
        alpha: float | None,
    ) -> None:
        super().__init__()
        self.decoder = decoder
        self.likelihood = likelihood
        self._classifier = (classifier,)  # a reference: the guide owns (and saves) the classifier's weights
        self.x_shape = tuple(x_shape)
        self.z_dim = z_dim
        self.classes = classes
        self.alpha = None if alpha is None else float(alpha)
        self.labelled_scale = 1.0  # s of pyro_vae.labelled_batches: the trainer sets it (and the guide's)
        self.register_buffer("class_probs", torch.full((classes,), 1.0 / classes))
        self.register_buffer("z_loc", torch.zeros(z_dim))

    @property
    def classifier(self) -> nn.Module:
        """The guide's classifier network x -> logits of q(y|x)."""
        return self._classifier[0]

    @staticmethod
    def training_elbo(particles: int = 1) -> TraceEnum_ELBO:
        """The ELBO M2 trains with: ``TraceEnum_ELBO`` sums the unlabelled rows' y exactly."""
        return TraceEnum_ELBO(num_particles=particles, max_plate_nesting=1)

    def use_training_set(self, n_train: int) -> None:
        """alpha = 0.1 N (Kingma et al. 2014, section 4.2) for N = ``n_train`` examples, unless alpha was given."""
        if self.alpha is None:
            self.alpha = 0.1 * n_train

    def z_prior(self) -> dist.Distribution:
        return dist.Normal(self.z_loc, torch.ones_like(self.z_loc)).to_event(1)

    def latent_prior(self, y: Tensor) -> dist.Distribution:
        """p(z) = N(0, I) (z and y are independent a priori), batch shape y.shape."""
        return self.z_prior().expand(y.shape)

    def class_log_prior(self) -> Tensor:
        """log p(y) for y = 0 .. K-1."""
        return self.class_probs.log()

    def decode(self, z: Tensor, y: Tensor) -> dist.Distribution:
        """p(x | y, z) for latents z (..., z_dim) and classes y (...)."""
        return self.likelihood(self.decoder(join(z, one_hot(y, self.classes, z))))

    def forward(self, packed: Tensor) -> None:
        pyro.module("model", self)
        x, y = unpack(packed, self.x_shape)
        known = y >= 0
        if known.any():
            xl, yl = x[known], y[known]
            if self.alpha is None:
                raise RuntimeError("M2's alpha is 0.1 N: call use_training_set(N) before training on labelled rows")
            with pyro.plate("labelled", xl.shape[0]), poutine.scale(scale=self.labelled_scale):
                pyro.sample("y_l", dist.Categorical(self.class_probs), obs=yl)
                z = pyro.sample("z_l", self.z_prior())
                pyro.sample("x_l", self.decode(z, yl), obs=xl)
                if self.alpha > 0:
                    log_q = dist.Categorical(logits=self.classifier(xl)).log_prob(yl)
                    pyro.factor("classifier", self.alpha * log_q)
        if not known.all():
            xu = x[~known]
            with pyro.plate("unlabelled", xu.shape[0]):
                yu = pyro.sample("y_u", dist.Categorical(self.class_probs))
                z = pyro.sample("z_u", self.z_prior())
                pyro.sample("x_u", self.decode(z, yu), obs=xu)

    @torch.no_grad()
    def elbo_terms_exact(self, guide: nn.Module, packed: Tensor, num_samples: int = 1) -> tuple[Tensor, Tensor]:
        """Per row (N,): (recon, KL) of the test ELBO with y summed exactly, z sampled (``num_samples`` per class).

        Unlabelled rows: recon = -sum_y q(y|x) E_q(z|x,y)[log p(x|y,z)], KL = KL(q(y|x) || p(y)) + sum_y q(y|x)
        KL(q(z|x,y) || p(z)), so recon + KL = U(x) of Kingma et al. (eq. 7) with only z sampled; labelled rows the
        same at their y (recon also -log p(y)): L(x, y) (eq. 6). ``pyro_vae.elbo_terms`` uses this for M2."""
        x, y = unpack(packed, self.x_shape)
        log_q = F.log_softmax(guide.classifier(x), -1)  # (N, K)
        known = y >= 0
        log_py = self.class_log_prior()
        weights = torch.where(known[:, None], one_hot(y.clamp(min=0), self.classes, log_q), log_q.exp())
        recon = torch.where(known, -log_py[y.clamp(min=0)], torch.zeros_like(log_q[:, 0]))
        kl = torch.where(known, torch.zeros_like(recon), (log_q.exp() * (log_q - log_py)).sum(-1))
        for k in range(self.classes):
            yk = torch.full_like(y, k)
            q = guide.posterior_given(x, yk)
            z = q.sample((num_samples,))  # (S, N, z_dim)
            log_lik = self.decode(z, yk).log_prob(x).mean(0)
            kl_z = kl_divergence(q, self.latent_prior(yk))
            recon = recon - weights[:, k] * log_lik
            kl = kl + weights[:, k] * kl_z
        return recon, kl

    def class_means(self, y: Tensor) -> Tensor:
        """E[x | y, z] for one z ~ N(0, I) per entry of ``y`` (N,): class-conditional samples ``(N, *x_shape)``."""
        z = self.z_prior().sample(y.shape)
        return self.likelihood.mean(self.decoder(join(z, one_hot(y, self.classes, z))))
