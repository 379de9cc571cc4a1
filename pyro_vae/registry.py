"""The component registries (priors, likelihoods, encoders, decoders, guide families) and ``build``.

A component is a factory that reads what it needs from the config (``z_dim``, ``x_shape``, ``hidden``: a
``ModelSpec``, which ``pyro_vae.config.VAEConfig`` is) and returns an ``nn.Module``. It may declare two needs,
which ``build`` then passes as keywords:

- ``needs_posterior=True`` (priors): ``factory(config, posterior=guide.posterior)``, the guide's q(z|x)
  whatever the guide family, for priors built from it (the VampPrior);
- ``options=SomeDataclass``: ``factory(config, options=SomeDataclass(**config.options["<kind>"]))``, the
  component's own settings, so that each component's options hold only its own fields (as in pythae). The
  dataclass checks its values in ``__post_init__`` (a ValueError becomes a one-line ``UserError``); its fields
  are the command line's ``--KIND-FIELD`` (``--prior-scale``), its "Fields:" docstring their help.

Priors and guides may also declare where z lives, ``latent="real"`` (R^J) or ``"sphere"`` (the unit sphere in
R^J), or ``"guide"`` (a prior made from q(z|x): wherever the guide's z lives), and ``min_z_dim``. A prior and a
guide on different spaces are refused when the ``VAEConfig`` is validated (``check_latents``), in one line.

Guide-family factories also get the encoder: ``factory(config, encoder)``. Adding a component is one file (the
module) and one registry line; ``register(PRIORS, "name", factory)`` or ``PRIORS["name"] = factory`` does it
from user code, and the name is then valid in ``VAEConfig`` and on the command line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from torch import nn

from pyro_vae.errors import UserError
from pyro_vae.guides import (
    BernoulliGuide,
    CategoricalGuide,
    CategoricalGuideOptions,
    FullCovarianceGuide,
    IAFGuide,
    IAFOptions,
    MLPEncoder,
    NormalGuide,
    NormalGuideOptions,
    PowerSphericalGuide,
)
from pyro_vae.guides.conditional import Classifier, ConditionalGuide, LabelledNormalHead, M2Guide
from pyro_vae.guides.encoders import ConvEncoder, ConvEncoderOptions, MLPEncoderOptions
from pyro_vae.guides.encoders.gated_mlp import GatedMLPEncoder, GatedMLPEncoderOptions
from pyro_vae.guides.hierarchical import BottomUpGuide, Features, LadderGuide, upward_network
from pyro_vae.models import VAEModel
from pyro_vae.models.conditional import ClassConditionalPrior, ConditionalOptions, ConditionalVAEModel
from pyro_vae.models.decoders import ConvDecoder, ConvDecoderOptions, LinearDecoder, MLPDecoder, MLPDecoderOptions
from pyro_vae.models.decoders.gated_mlp import GatedMLPDecoder, GatedMLPDecoderOptions
from pyro_vae.models.gaussian_conditional import GaussianConditional
from pyro_vae.models.hierarchical import HierarchicalModel, HierarchicalOptions
from pyro_vae.models.likelihoods import (
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    DiscretizedLogisticLikelihood,
    DiscretizedLogisticOptions,
    GaussianLikelihood,
    GaussianLikelihoodOptions,
    LearnedGaussianLikelihood,
    LearnedGaussianOptions,
)
from pyro_vae.models.m2 import M2Model, M2Options
from pyro_vae.models.priors import (
    BernoulliPrior,
    BernoulliPriorOptions,
    CategoricalPrior,
    CategoricalPriorOptions,
    FlowPrior,
    FlowPriorOptions,
    GaussianPrior,
    GaussianPriorOptions,
    MixturePrior,
    MixturePriorOptions,
    StandardNormalPrior,
    UniformSpherePrior,
    VampPrior,
    VampPriorOptions,
)
from pyro_vae.named import Registry


class ModelSpec(Protocol):
    """What a component factory and ``build`` read of a config; ``pyro_vae.config.VAEConfig`` is one."""

    x_shape: tuple[int, ...] | None
    z_dim: int
    hidden: tuple[int, ...]
    prior: str
    likelihood: str
    encoder: str
    decoder: str
    guide: str
    model: str

    def validate(self) -> None: ...

    def options_of(self, kind: str) -> dict[str, Any]: ...


def widths(config: ModelSpec, options: Any) -> tuple[int, ...]:
    """The hidden widths of a network: its options' ``hidden`` when set, else the config's ``hidden``."""
    own = getattr(options, "hidden", None)
    return tuple(config.hidden if own is None else own)


#: Where z may live, as a component declares it (``Component(latent=...)``), and how messages name it.
LATENT_SPACES = {
    "real": "R^J",
    "sphere": "the unit sphere S^(J-1) in R^J",
    "binary": "the binary vectors {0,1}^J",
    "onehot": "D one-hot codes of C classes, J = D*C",
}
#: The latent spaces whose samples are discrete: no reparameterised gradient through z (pyro_vae.config refuses the
#: reparameterised-only estimators for a guide there), no HMC (AIS refuses them).
DISCRETE_LATENTS = ("binary", "onehot")


@dataclass(frozen=True)
class Component:
    """A registered factory and what it declares (see the module docstring)."""

    factory: Callable[..., nn.Module]
    description: str = ""
    needs_posterior: bool = False
    options: type | None = None
    latent: str | None = None
    min_z_dim: int = 1

    def __post_init__(self) -> None:
        if not callable(self.factory):
            raise ValueError(f"a component's factory must be callable, got {self.factory!r}")
        if self.options is not None and not dataclasses.is_dataclass(self.options):
            raise ValueError(f"a component's options must be a dataclass, got {self.options!r}")
        if self.latent is not None and self.latent not in (*LATENT_SPACES, "guide"):
            raise ValueError(f"a component's latent must be one of {', '.join(LATENT_SPACES)}, guide or None")

    def option_fields(self) -> list[dataclasses.Field]:
        return list(dataclasses.fields(self.options)) if self.options is not None else []

    def make_options(self, values: Mapping[str, Any], what: str) -> Any:
        """The options dataclass filled from ``values`` (sequences are tuples, as ``VAEConfig`` stores them);
        one-line ``UserError`` for a name it does not have. None when the component declares no options."""
        fields = {f.name: f for f in self.option_fields()}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            has = f"its options are {', '.join(fields)}" if fields else "it takes no options"
            raise UserError(f"{what} has no option(s) {', '.join(unknown)}; {has}")
        if self.options is None:
            return None
        try:
            return self.options(**values)
        except (TypeError, ValueError) as err:  # an unexpected keyword, or the dataclass's own checks
            raise UserError(f"{what}: {err}") from None

    def make(self, config: ModelSpec, *args: Any, kind: str, name: str, posterior: Any = None) -> nn.Module:
        """Call the factory with ``config``, ``args`` and what it declared."""
        extra: dict[str, Any] = {}
        if self.needs_posterior:
            extra["posterior"] = posterior
        if self.options is not None:
            extra["options"] = self.make_options(config.options_of(kind), f"{kind} {name!r}")
        return self.factory(config, *args, **extra)


def as_component(entry: object, name: str | None = None) -> Component:
    """A ``Component`` as is; a plain factory wrapped in one that declares nothing."""
    return entry if isinstance(entry, Component) else Component(entry)  # type: ignore[arg-type]


#: The entry-point group of each kind: an installed package adds a prior with, in its pyproject.toml,
#: ``[project.entry-points."pyro_vae.priors"]`` ``student-t = "my_package.priors:make_student_t"``.
ENTRY_POINT_GROUPS = {
    "prior": "pyro_vae.priors",
    "likelihood": "pyro_vae.likelihoods",
    "encoder": "pyro_vae.encoders",
    "decoder": "pyro_vae.decoders",
    "guide": "pyro_vae.guides",
    "model": "pyro_vae.model_structures",
}


def _registry(kind: str, entries: dict[str, object]) -> Registry[Component]:
    return Registry(kind, entries, wrap=as_component, entry_points=ENTRY_POINT_GROUPS[kind])


PRIORS = _registry(
    "prior",
    {
        "standard": Component(lambda c: StandardNormalPrior(c.z_dim), "N(0, I)", latent="real"),
        "gaussian": Component(
            lambda c, options: GaussianPrior(c.z_dim, options.loc, options.scale, learnable=options.learn),
            "N(mu_p, diag sigma_p^2), --prior-loc, --prior-scale, --prior-learn",
            options=GaussianPriorOptions,
            latent="real",
        ),
        "mixture": Component(
            lambda c, options: MixturePrior(c.z_dim, options.components),
            "K learned Gaussians",
            options=MixturePriorOptions,
            latent="real",
        ),
        "vamp": Component(
            lambda c, posterior, options: VampPrior(
                posterior, c.x_shape, options.components, learn_weights=options.learn_weights
            ),
            "VampPrior, a mixture of q(z|u_k) at K pseudo-inputs",
            needs_posterior=True,
            options=VampPriorOptions,
            latent="guide",
        ),
        "flow": Component(
            lambda c, options: FlowPrior(c.z_dim, **dataclasses.asdict(options)),
            "N(0, I) through K learned autoregressive transforms",
            options=FlowPriorOptions,
            latent="real",
            min_z_dim=2,
        ),
        "uniform-sphere": Component(
            lambda c: UniformSpherePrior(c.z_dim), "uniform on the sphere S^(J-1)", latent="sphere", min_z_dim=2
        ),
        "bernoulli": Component(
            lambda c, options: BernoulliPrior(c.z_dim, options.probs, learnable=options.learn),
            "factorised Bernoulli on z in {0,1}^J, --prior-probs, --prior-learn",
            options=BernoulliPriorOptions,
            latent="binary",
        ),
        "categorical": Component(
            lambda c, options: CategoricalPrior(c.z_dim, options.classes, learnable=options.learn),
            "J/C one-hot categoricals of C = --prior-classes classes (uniform unless --prior-learn)",
            options=CategoricalPriorOptions,
            latent="onehot",
        ),
    },
)

LIKELIHOODS = _registry(
    "likelihood",
    {
        "bernoulli": Component(lambda c: BernoulliLikelihood(len(c.x_shape)), "binary pixels, from logits"),
        "gaussian": Component(
            lambda c, options: GaussianLikelihood(options.sigma, len(c.x_shape)),
            "N(f(z), sigma^2 I)",
            options=GaussianLikelihoodOptions,
        ),
        "gaussian-learned": Component(
            lambda c, options: LearnedGaussianLikelihood(
                c.x_shape, options.sigma, per_pixel=options.per_pixel, min_sigma=options.min_sigma
            ),
            "N(f(z), diag sigma^2), sigma learned",
            options=LearnedGaussianOptions,
        ),
        "continuous-bernoulli": Component(
            lambda c: ContinuousBernoulliLikelihood(len(c.x_shape)), "grey pixels in [0, 1]"
        ),
        "discretized-logistic": Component(
            lambda c, options: DiscretizedLogisticLikelihood(c.x_shape, **vars(options)),
            "8-bit pixels; logistic discretised to 256 values, learned scale",
            options=DiscretizedLogisticOptions,
        ),
    },
)

ENCODERS = _registry(
    "encoder",
    {
        "mlp": Component(
            lambda c, options: MLPEncoder(c.x_shape, widths(c, options), options.activation),
            "MLP, widths --encoder-hidden",
            options=MLPEncoderOptions,
        ),
        "conv": Component(
            lambda c, options: ConvEncoder(c.x_shape, options.channels, widths(c, options)),
            "stride-2 convolutions (--encoder-channels), then an MLP (--encoder-hidden)",
            options=ConvEncoderOptions,
        ),
        "gated-mlp": Component(
            lambda c, options: GatedMLPEncoder(c.x_shape, widths(c, options)),
            "gated dense layers (Tomczak & Welling 2018), widths --encoder-hidden",
            options=GatedMLPEncoderOptions,
        ),
    },
)

DECODERS = _registry(
    "decoder",
    {
        "mlp": Component(
            lambda c, options: MLPDecoder(c.z_dim, c.x_shape, widths(c, options), options.activation),
            "MLP, widths --decoder-hidden",
            options=MLPDecoderOptions,
        ),
        "linear": Component(lambda c: LinearDecoder(c.z_dim, c.x_shape), "f(z) = W z + b (probabilistic PCA)"),
        "conv": Component(
            lambda c, options: ConvDecoder(c.z_dim, c.x_shape, options.channels, widths(c, options)),
            "an MLP (--decoder-hidden), then transposed stride-2 convolutions (--decoder-channels)",
            options=ConvDecoderOptions,
        ),
        "gated-mlp": Component(
            lambda c, options: GatedMLPDecoder(c.z_dim, c.x_shape, widths(c, options)),
            "gated dense layers (Tomczak & Welling 2018), widths --decoder-hidden",
            options=GatedMLPDecoderOptions,
        ),
    },
)

GUIDES = _registry(
    "guide",
    {
        "normal": Component(
            lambda c, encoder, options: NormalGuide(encoder, c.z_dim, (options.log_var_min, options.log_var_max)),
            "diagonal Normal q(z|x)",
            options=NormalGuideOptions,
            latent="real",
        ),
        "fullcov": Component(
            lambda c, encoder: FullCovarianceGuide(encoder, c.z_dim),
            "full-covariance Normal q(z|x), Cholesky factor from the encoder",
            latent="real",
        ),
        "iaf": Component(
            lambda c, encoder, options: IAFGuide(encoder, c.z_dim, options.steps, options.hidden, options.stable),
            "diagonal Normal then K inverse autoregressive flow steps (Kingma et al. 2016)",
            options=IAFOptions,
            latent="real",
            min_z_dim=2,
        ),
        "power-spherical": Component(
            lambda c, encoder: PowerSphericalGuide(encoder, c.z_dim),
            "power spherical q(z|x) on the sphere S^(J-1) (De Cao & Aziz 2020)",
            latent="sphere",
            min_z_dim=2,
        ),
        "bernoulli": Component(
            lambda c, encoder: BernoulliGuide(encoder, c.z_dim),
            "factorised Bernoulli q(z|x) on {0,1}^J, logits from the encoder (discrete: no reparameterisation)",
            latent="binary",
        ),
        "categorical": Component(
            lambda c, encoder, options: CategoricalGuide(encoder, c.z_dim, options.classes),
            "J/C one-hot categoricals of C = --guide-classes classes, logits from the encoder (discrete)",
            options=CategoricalGuideOptions,
            latent="onehot",
        ),
    },
)


def _no_prior_given(prior: object, structure: str, options: Any) -> Any:
    """``options``, or a one-line ``UserError`` for ``build``'s prior override (these models make their own prior)."""
    if prior is not None:
        raise UserError(f"a prior of your own goes with --model vae; the {structure} model makes its own prior")
    return options


def _labelled_parts(config: ModelSpec, classes: int) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(encoder of x, decoder of [z, onehot(y)], likelihood) of a model that reads labels: the configured
    components, the decoder made for z_dim + classes inputs."""
    encoder = ENCODERS[config.encoder].make(config, kind="encoder", name=config.encoder)
    wider = dataclasses.replace(config, z_dim=config.z_dim + classes)  # type: ignore[type-var]
    decoder = DECODERS[config.decoder].make(wider, kind="decoder", name=config.decoder)
    likelihood = LIKELIHOODS[config.likelihood].make(config, kind="likelihood", name=config.likelihood)
    return encoder, decoder, likelihood


def build_conditional(
    config: ModelSpec, prior: object = None, options: ConditionalOptions | None = None
) -> tuple[nn.Module, nn.Module]:
    """The conditional VAE (``pyro_vae.models.conditional``): p(z|y) p(x|z,y) and q(z|x,y)."""
    options = _no_prior_given(prior, "conditional", options or ConditionalOptions())
    encoder, decoder, likelihood = _labelled_parts(config, options.classes)
    guide = ConditionalGuide(encoder, config.z_dim, options.classes, config.x_shape)
    prior = ClassConditionalPrior(options.classes, config.z_dim)
    return ConditionalVAEModel(prior, decoder, likelihood, config.x_shape), guide


def build_m2(config: ModelSpec, prior: object = None, options: M2Options | None = None) -> tuple[nn.Module, nn.Module]:
    """M2 (``pyro_vae.models.m2``): p(y) p(z) p(x|y,z) and q(y|x) q(z|x,y), the classifier on its own encoder."""
    options = _no_prior_given(prior, "m2", options or M2Options())
    encoder, decoder, likelihood = _labelled_parts(config, options.classes)
    classifier = Classifier(ENCODERS[config.encoder].make(config, kind="encoder", name=config.encoder), options.classes)
    guide = M2Guide(LabelledNormalHead(encoder, config.z_dim, options.classes), classifier, config.x_shape)
    model = M2Model(decoder, likelihood, classifier, config.x_shape, config.z_dim, options.classes, options.alpha)
    return model, guide


#: The registry of each kind of component, by the VAEConfig field that names it.
COMPONENTS: dict[str, Registry[Component]] = {
    "prior": PRIORS,
    "likelihood": LIKELIHOODS,
    "encoder": ENCODERS,
    "decoder": DECODERS,
    "guide": GUIDES,
}


def _latent_names(registry: Registry[Component], latent: str, also: str | None = None) -> str:
    names = [name for name, c in registry.items() if c.latent in (latent, also)]
    return " or ".join(names) if len(names) < 3 else ", ".join(names[:-1]) + " or " + names[-1]


def check_latents(prior: Component, prior_name: str, guide: Component, guide_name: str) -> None:
    """One-line ``UserError`` when the prior's density and the guide's samples live on different spaces (a
    spherical guide with a Euclidean prior: log p(z) would be scored off its support); undeclared spaces pass."""
    if prior.latent in (None, "guide") or guide.latent is None or prior.latent == guide.latent:
        return
    raise UserError(
        f"the {guide_name} guide puts z on {LATENT_SPACES[guide.latent]} but the {prior_name} prior is a density on "
        f"{LATENT_SPACES[prior.latent]}; use --prior {_latent_names(PRIORS, guide.latent, 'guide')} with it, or "
        f"--guide {_latent_names(GUIDES, prior.latent)}"
    )


def check_combination(config: ModelSpec) -> None:
    """Refuse, in one line, a ``VAEConfig`` whose components cannot go together: a z_dim below one's
    ``min_z_dim``, or a prior and guide on different latent spaces (``check_latents``)."""
    for kind, registry in COMPONENTS.items():
        name = getattr(config, kind)
        need = registry[name].min_z_dim
        if config.z_dim < need:
            raise UserError(f"the {name} {kind} needs z_dim >= {need}, got {config.z_dim}; use --z-dim {need} or more")
    check_latents(PRIORS[config.prior], config.prior, GUIDES[config.guide], config.guide)
    check_classes(config)


def _classes(config: ModelSpec, kind: str) -> int | None:
    """C of the chosen prior or guide when it declares one-hot latents and a ``classes`` option, else None."""
    component = COMPONENTS[kind][getattr(config, kind)]
    if component.latent != "onehot":
        return None
    options = component.make_options(config.options_of(kind), f"{kind} {getattr(config, kind)!r}")
    return getattr(options, "classes", None)


def check_classes(config: ModelSpec) -> None:
    """One-line ``UserError`` unless the one-hot prior and guide have the same classes C and C divides z_dim
    (z_dim = D variables x C classes, the length of the flat one-hot vector z)."""
    prior, guide = _classes(config, "prior"), _classes(config, "guide")
    if prior is not None and guide is not None and prior != guide:
        raise UserError(
            f"the {config.prior} prior has {prior} classes but the {config.guide} guide {guide}; give the same "
            f"--prior-classes and --guide-classes"
        )
    for classes in {prior, guide} - {None}:
        if config.z_dim % classes:
            raise UserError(
                f"z_dim = {config.z_dim} is not a multiple of {classes} classes: for categorical latents z_dim is "
                f"D variables x C classes, e.g. --z-dim {classes * max(1, config.z_dim // classes)}"
            )


def register(
    registry: Registry[Component],
    name: str,
    factory: Callable[..., nn.Module] | None = None,
    **declared: Any,
) -> Any:
    """Register ``factory`` under ``name`` (``declared``: ``needs_posterior``, ``options``, ``description``).

    Usable as a decorator: ``@register(PRIORS, "student-t")`` above the factory.
    """

    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        registry[name] = Component(fn, **declared)
        return fn

    return add if factory is None else add(factory)


def register_prior(name: str, factory: Callable[..., nn.Module] | None = None, **declared: Any) -> Any:
    """``register(PRIORS, name, factory, **declared)``; ``needs_posterior=True`` to receive q(z|x)."""
    return register(PRIORS, name, factory, **declared)


def register_likelihood(name: str, factory: Callable[..., nn.Module] | None = None, **declared: Any) -> Any:
    """``register(LIKELIHOODS, name, factory, **declared)``."""
    return register(LIKELIHOODS, name, factory, **declared)


def register_encoder(name: str, factory: Callable[..., nn.Module] | None = None, **declared: Any) -> Any:
    """``register(ENCODERS, name, factory, **declared)``; the encoder needs an ``out_features`` attribute."""
    return register(ENCODERS, name, factory, **declared)


def register_decoder(name: str, factory: Callable[..., nn.Module] | None = None, **declared: Any) -> Any:
    """``register(DECODERS, name, factory, **declared)``."""
    return register(DECODERS, name, factory, **declared)


def register_guide(name: str, factory: Callable[..., nn.Module] | None = None, **declared: Any) -> Any:
    """``register(GUIDES, name, factory, **declared)``; the factory gets ``(config, encoder)``; ``latent="sphere"``
    for a family on the unit sphere (then only spherical priors and the VampPrior go with it)."""
    return register(GUIDES, name, factory, **declared)


def build(
    config: ModelSpec, prior: nn.Module | Component | Callable[..., nn.Module] | None = None
) -> tuple[nn.Module, nn.Module]:
    """Construct the Pyro model and guide described by ``config``: the model structure ``config.model`` (a name in
    ``MODELS``: "vae", the one-latent VAE, by default) built from the chosen components.

    ``prior`` overrides ``config.prior`` with a user's own prior: a module (any module whose ``forward()``
    returns a distribution with event shape (z_dim,)), a factory ``f(config)``, or a ``Component`` that may
    declare ``needs_posterior=True`` to receive the guide's q(z|x) as registered priors do.

    Returns ``(model, guide)``: ``model(x)`` and ``guide(x)`` are the Pyro model and guide for a batch x
    of shape ``(N, *x_shape)``, both ``nn.Module`` so ``.to(device)``, ``.parameters()`` and ``state_dict`` work.
    The modules are made in a fixed order (encoder, guide, prior, decoder, likelihood), so a seed fixes the
    initial weights.
    """
    config.validate()
    if config.x_shape is None:
        raise UserError("the VAEConfig has no x_shape: give x_shape (or x_dim), or let train() take it from the data")
    # A ModelSpec of an earlier release has no ``model``: it is the one-latent VAE.
    name = getattr(config, "model", "vae")
    return MODELS[name].make(config, prior, kind="model", name=name)  # type: ignore[return-value]


def build_vae(
    config: ModelSpec, prior: nn.Module | Component | Callable[..., nn.Module] | None = None
) -> tuple[VAEModel, nn.Module]:
    """The one-latent VAE p(z) p(x|z) (``VAEModel``) and the chosen guide family q(z|x): ``MODELS["vae"]``."""
    encoder = ENCODERS[config.encoder].make(config, kind="encoder", name=config.encoder)
    guide = GUIDES[config.guide].make(config, encoder, kind="guide", name=config.guide)
    if isinstance(prior, nn.Module):
        prior_module = prior
    else:
        spec = PRIORS[config.prior] if prior is None else as_component(prior)
        check_latents(spec, config.prior if prior is None else "given", GUIDES[config.guide], config.guide)
        prior_module = spec.make(config, kind="prior", name=config.prior, posterior=guide.posterior)
    decoder = DECODERS[config.decoder].make(config, kind="decoder", name=config.decoder)
    likelihood = LIKELIHOODS[config.likelihood].make(config, kind="likelihood", name=config.likelihood)
    return VAEModel(prior_module, decoder, likelihood), guide


class _Layer:
    """The config as one stochastic layer's component sees it: ``z_dim`` is that layer's size."""

    def __init__(self, config: ModelSpec, z_dim: int) -> None:
        self._config, self.z_dim = config, z_dim

    def __getattr__(self, name: str) -> Any:
        return getattr(self._config, name)


def _check_hierarchy(config: ModelSpec, sizes: tuple[int, ...], prior: object) -> None:
    if prior is not None:
        raise UserError("the hierarchical model takes its top prior by name (--prior); register your prior first")
    for kind, registry in (("prior", PRIORS), ("guide", GUIDES)):
        name = getattr(config, kind)
        if registry[name].latent == "sphere":
            raise UserError(f"the hierarchical model's layers are Gaussian on R^J; the {name} {kind} is on the sphere")
    need = PRIORS[config.prior].min_z_dim
    if sizes[-1] < need:
        raise UserError(f"the {config.prior} prior needs its (top) layer of size >= {need}, got {sizes[-1]}")


def build_hierarchical(
    config: ModelSpec, prior: object = None, options: HierarchicalOptions | None = None
) -> tuple[HierarchicalModel, nn.Module]:
    """The hierarchical VAE (``pyro_vae.models.hierarchical``) and its bottom-up or ladder guide
    (``pyro_vae.guides.hierarchical``): ``MODELS["hierarchical"]``. The chosen encoder reads x, the chosen guide
    family gives q(z_1|x) (bottom-up) or q(z_L|x) (ladder), the chosen prior is p(z_L), the decoder and
    likelihood p(x|z_1); the links between layers are ``GaussianConditional`` MLPs of the options' ``hidden``."""
    options = options or HierarchicalOptions()
    sizes = options.layer_sizes(config.z_dim)
    _check_hierarchy(config, sizes, prior)
    hidden, act = tuple(config.hidden if options.hidden is None else options.hidden), options.activation
    pairs = list(zip(sizes[:-1], sizes[1:], strict=True))  # (size of z_l, size of z_l+1), l = 1 ... L-1
    encoder = ENCODERS[config.encoder].make(config, kind="encoder", name=config.encoder)
    family = GUIDES[config.guide]
    if options.order == "bottomup":
        first = family.make(_Layer(config, sizes[0]), encoder, kind="guide", name=config.guide)
        guide: nn.Module = BottomUpGuide(first, [GaussianConditional(lo, hi, hidden, act) for lo, hi in pairs])
        posterior = None
    else:
        ups, widths = [], [encoder.out_features]
        for _ in pairs:
            net, width = upward_network(widths[-1], hidden, act)
            ups.append(net)
            widths.append(width)
        top = family.make(_Layer(config, sizes[-1]), Features(widths[-1]), kind="guide", name=config.guide)
        heads = [nn.Linear(w, 2 * lo) for w, (lo, _) in zip(widths[:-1], pairs, strict=True)]
        downs = [GaussianConditional(hi, lo, hidden, act) for lo, hi in pairs]
        guide = LadderGuide(encoder, ups, top, heads, downs)
        posterior = guide.top_posterior
    spec = PRIORS[config.prior]
    if spec.needs_posterior and posterior is None:
        raise UserError(
            f"the {config.prior} prior is made from q(z_L|x), which the bottomup guide has not; use "
            "--model-order ladder"
        )
    top_prior = spec.make(_Layer(config, sizes[-1]), kind="prior", name=config.prior, posterior=posterior)
    conditionals = [GaussianConditional(hi, lo, hidden, act) for lo, hi in pairs]
    decoder = DECODERS[config.decoder].make(_Layer(config, sizes[0]), kind="decoder", name=config.decoder)
    likelihood = LIKELIHOODS[config.likelihood].make(config, kind="likelihood", name=config.likelihood)
    return HierarchicalModel(top_prior, conditionals, decoder, likelihood), guide


#: The model structures: what ``build`` makes of the components. A factory gets ``(config, prior)`` (``prior``:
#: ``build``'s override, or None) and returns ``(model, guide)``.
MODELS = _registry(
    "model",
    {
        "vae": Component(build_vae, "one latent z: p(z) p(x|z), guide q(z|x)"),
        "hierarchical": Component(
            build_hierarchical,
            "L stochastic layers z_L -> ... -> z_1 -> x, sites z1 ... zL (Burda et al. 2015; Sonderby et al. 2016)",
            options=HierarchicalOptions,
        ),
        "conditional": Component(
            build_conditional,
            "conditional VAE: p(z|y) p(x|z,y), q(z|x,y) on the data's labels (--model-classes)",
            options=ConditionalOptions,
        ),
        "m2": Component(
            build_m2,
            "semi-supervised M2 (Kingma et al. 2014): --labelled N labels, y enumerated elsewhere; --model-alpha",
            options=M2Options,
        ),
    },
)
COMPONENTS["model"] = MODELS
