"""``VAEConfig`` (what ``build`` makes) and ``TrainConfig`` (what a training run does): dataclasses, JSON round trip.

Both validate on construction, with one-line ``ValueError`` messages (``pyro_vae.errors.UserError``).
``VAEConfig.x_shape`` may be left out (None) when the data set will supply it: ``train`` fills it in.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from pyro_vae.beta import KL_SCHEDULES, kl_beta
from pyro_vae.checks import check_number
from pyro_vae.data import BINARIZATIONS, BUILTIN_DATASETS, check_data_options, load_data
from pyro_vae.errors import UserError
from pyro_vae.estimators import ESTIMATORS
from pyro_vae.presets import apply_preset, get_preset
from pyro_vae.registry import COMPONENTS, DISCRETE_LATENTS, GUIDES, check_combination

if TYPE_CHECKING:
    from pyro_vae.data import VAEData


#: The estimators whose gradient assumes a reparameterised guide (z = g(eps, x)): with a discrete guide they would
#: train on a wrong or needlessly noisy gradient, so ``TrainConfig`` refuses them (docs/estimators.md, "Supported
#: latents"). Pyro's TraceMeanField_ELBO drops the score-function term of the reconstruction (biased encoder
#: gradient; with validation on it raises NotImplementedError); the project's iwae, renyi, stl and dreg differentiate
#: through z; Pyro's Trace_ELBO adds the plain score-function term with no baseline or Rao-Blackwellisation (unbiased
#: but very noisy): the discrete estimators do that job with variance reduction.
REPARAMETERISED_ONLY = ("trace", "meanfield", "iwae", "renyi", "stl", "dreg")
#: What the refusal suggests, in this order, when they are registered (pyro_vae.estimators of the discrete branch).
DISCRETE_ESTIMATORS = ("enum", "reinforce", "vimco", "rws", "relaxed", "disarm", "tvo")


def check_estimator_for_guide(elbo: str, guide: str) -> None:
    """One-line ``UserError`` when ``elbo`` (or its ``jit-`` form) needs a reparameterised guide and ``guide`` samples
    discrete z (its registry ``latent`` is one of ``DISCRETE_LATENTS``), naming the estimators that can train it; and
    when an estimator for discrete latents only (``EstimatorSpec.latents == "discrete"``: enum, relaxed, disarm) meets a
    guide of continuous z."""
    spec = GUIDES[guide] if guide in GUIDES else None
    base = elbo[4:] if elbo.startswith("jit-") else elbo
    if spec is not None and spec.latent not in DISCRETE_LATENTS and base in ESTIMATORS:
        if not ESTIMATORS[base].works_with(False):  # enum, relaxed, disarm: refused here, not at the first step
            usable = ", ".join(n for n in ESTIMATORS if ESTIMATORS[n].latents == "continuous")
            raise UserError(
                f"estimator {elbo!r} is for discrete latents; guide {guide!r} samples continuous z: use --elbo {usable}"
            )
    if spec is None or spec.latent not in DISCRETE_LATENTS or base not in REPARAMETERISED_ONLY:
        return
    usable = [n for n in DISCRETE_ESTIMATORS if n in ESTIMATORS]
    usable += [n for n in ESTIMATORS if n not in REPARAMETERISED_ONLY and n not in usable]
    if usable:
        use = f"use --elbo {' or '.join(usable) if len(usable) < 3 else ', '.join(usable[:-1]) + ' or ' + usable[-1]}"
    else:
        use = (
            "register an estimator with score-function gradients, e.g. "
            "pyro_vae.register_estimator('tracegraph', pyro.infer.TraceGraph_ELBO), and use --elbo tracegraph"
        )
    raise UserError(f"estimator {elbo!r} needs a reparameterised guide; guide {guide!r} samples discrete z: {use}")


#: The learning-rate schedules of ``TrainConfig.lr_schedule`` (``pyro_vae.step.make_scheduler``).
LR_SCHEDULES = ("constant", "step", "cosine", "plateau", "burda", "multistep")
#: How ``TrainConfig.validation`` examples are held out of the training set (``pyro_vae.validation.hold_out``).
VALIDATION_SPLITS = ("random", "last")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tuples(value: Any) -> Any:
    """Lists (as JSON gives them back) as tuples, recursively, so a config equals its JSON round trip."""
    if isinstance(value, (list, tuple)):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def _from_dict(cls: type, d: Any) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise UserError(f"a {cls.__name__} must be a JSON object, got {type(d).__name__}")
    if unknown := sorted(set(d) - {f.name for f in dataclasses.fields(cls)}):
        raise UserError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    return d


def absolute_paths(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the user's files (dataset, labels, data_dir) as absolute paths, where they exist, so that a
    run stored with them can be reloaded from any directory."""
    options = dict(options)
    for name in ("dataset", "labels", "data_dir"):
        value = options.get(name)
        if isinstance(value, str) and value.lower() not in BUILTIN_DATASETS and Path(value).exists():
            options[name] = str(Path(value).resolve())
    return options


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the VAEConfig fields, the rest) of ``options``, for configs given as one set of keywords."""
    model_fields = {f.name for f in dataclasses.fields(VAEConfig)}
    return {k: v for k, v in options.items() if k in model_fields}, {
        k: v for k, v in options.items() if k not in model_fields
    }


#: Where each component setting of config formats 2-4 (a flat VAEConfig field then) went: old field -> (kind,
#: {component: its option}). ``migrate_config`` moves them; a keyword of that name is refused with this spelling.
FLAT_FIELDS: dict[str, tuple[str, dict[str, str]]] = {
    "prior_loc": ("prior", {"gaussian": "loc"}),
    "prior_scale": ("prior", {"gaussian": "scale"}),
    "learn_prior": ("prior", {"gaussian": "learn"}),
    "mixture_components": ("prior", {"mixture": "components", "vamp": "components"}),
    "vamp_learn_weights": ("prior", {"vamp": "learn_weights"}),
    "prior_init_from_data": ("prior", {"vamp": "init_from_data"}),
    "sigma": ("likelihood", {"gaussian": "sigma", "gaussian-learned": "sigma"}),
    "sigma_per_pixel": ("likelihood", {"gaussian-learned": "per_pixel"}),
    "min_sigma": ("likelihood", {"gaussian-learned": "min_sigma"}),
    "encoder_hidden": ("encoder", {"mlp": "hidden", "conv": "hidden"}),
    "decoder_hidden": ("decoder", {"mlp": "hidden", "conv": "hidden"}),
}
#: Renamed TrainConfig fields: old name -> new name.
RENAMED_FIELDS = {"num_particles": "particles"}


def _new_spelling(old: str) -> str:
    """How the old flat field ``old`` is written now, for error messages."""
    if old in RENAMED_FIELDS:
        return RENAMED_FIELDS[old]
    kind, where = FLAT_FIELDS[old]
    options = sorted(set(where.values()))
    return f"options={{{kind!r}: {{{options[0]!r}: ...}}}} (an option of the {' and '.join(where)} {kind})"


def _refuse_old_fields(cls: type, given: dict[str, Any]) -> None:
    for name in given:
        if name in FLAT_FIELDS or name in RENAMED_FIELDS:
            raise UserError(f"{cls.__name__} has no field {name} any more; use {_new_spelling(name)}")


def migrate_config(d: dict[str, Any]) -> dict[str, Any]:
    """A config dict of formats 2-4 in today's form (a new one is returned unchanged): ``num_particles`` is
    ``particles``, and each flat component field of the model (``FLAT_FIELDS``) becomes the option of the component
    the config chose, when that component takes it (it had no effect otherwise, and is dropped). Options already
    given in ``model.options`` win. Reads no code and imports nothing."""
    if not isinstance(d, dict):
        return d
    d = dict(d)
    for old, new in RENAMED_FIELDS.items():
        if old in d:
            value = d.pop(old)
            d.setdefault(new, value)
    if isinstance(d.get("model"), dict):
        d["model"] = migrate_model(d["model"])
    return d


def migrate_model(d: dict[str, Any]) -> dict[str, Any]:
    """The VAEConfig part of ``migrate_config``."""
    if not isinstance(d, dict) or not set(d) & set(FLAT_FIELDS):
        return d
    d = dict(d)
    given = d.get("options") if isinstance(d.get("options"), dict) else {}
    moved: dict[str, dict[str, Any]] = {}
    defaults = {f.name: f.default for f in dataclasses.fields(VAEConfig)}
    for old, (kind, where) in FLAT_FIELDS.items():
        if old not in d:
            continue
        value = d.pop(old)
        name = d.get(kind, defaults[kind])
        option = where.get(name.lower() if isinstance(name, str) else name)
        if option is not None and value is not None:
            moved.setdefault(kind, {})[option] = value
    d["options"] = {kind: {**moved.get(kind, {}), **(given.get(kind) or {})} for kind in {*moved, *given}}
    return d


class _NoOldFields:
    """Refuses, in one line naming the new spelling, a keyword of a field that moved (``FLAT_FIELDS``)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        _refuse_old_fields(cls, kwargs)
        return super().__new__(cls)


@dataclass
class VAEConfig(_NoOldFields):
    """What ``build`` needs to construct a model and guide: the components by name, and each one's options.

    Each component's own settings live in its options dataclass, declared with it in the registry
    (``pyro_vae.registry``; gaussian prior: loc, scale, learn; mixture prior: components; vamp prior:
    components, learn_weights, init_from_data; gaussian likelihood: sigma; gaussian-learned likelihood: sigma,
    per_pixel, min_sigma; mlp and conv encoder and decoder: hidden; conv: channels; ...), as in pythae, where a
    config holds only its own fields: ``VAEConfig(prior="gaussian", options={"prior": {"scale": 2.0}})``. On the
    command line they are ``--KIND-OPTION``: ``--prior-scale 2``.

    Fields:
        x_shape: the shape of one example: (D,) for flat data, (C, H, W) for images; None until the data set
            gives it (train() fills it in).
        x_dim: D, the number of values of one example; ``x_dim=64`` is short for ``x_shape=(64,)``.
        z_dim: latent dimension J.
        prior: the prior p(z), a name in pyro_vae.PRIORS.
        likelihood: the likelihood p(x|z), a name in pyro_vae.LIKELIHOODS.
        encoder: the guide's network x -> features, a name in pyro_vae.ENCODERS.
        decoder: the network z -> the likelihood's parameters, a name in pyro_vae.DECODERS.
        guide: the variational family q(z|x), a name in pyro_vae.GUIDES; a spherical guide needs a prior on the
            sphere.
        hidden: the hidden layer widths of every network whose own ``hidden`` option is unset (the mlp and conv
            encoder and decoder).
        model: the model structure, a name in pyro_vae.MODELS (docs/models.md); its options are options["model"]
            (--model-layers, ...).
        options: each chosen component's own settings, by kind: {"prior": {"scale": 2.0}, "decoder": {"channels":
            [64, 32]}} (on the command line: --prior-scale 2 --decoder-channels 64 32); what is not given takes
            the component's default.
        model: the model structure, a name in pyro_vae.MODELS: "vae" (the components above), "conditional" (a
            conditional VAE on the data's labels) or "m2" (semi-supervised, Kingma et al. 2014); its options are
            ``options["model"]`` (--model-OPTION).
    """

    x_shape: tuple[int, ...] | None = None
    x_dim: int | None = None
    z_dim: int = 2
    prior: str = "standard"
    likelihood: str = "bernoulli"
    encoder: str = "mlp"
    decoder: str = "mlp"
    guide: str = "normal"
    hidden: tuple[int, ...] = (256,)
    model: str = "vae"
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    model: str = "vae"

    def __post_init__(self) -> None:
        self._shape()
        if isinstance(self.hidden, (tuple, list)):
            self.hidden = tuple(self.hidden)
        if isinstance(self.options, dict):
            self.options = {kind: dict(_tuples(v)) if isinstance(v, dict) else v for kind, v in self.options.items()}
        for kind, registry in COMPONENTS.items():
            # Case-insensitive names: "Standard" is stored as the registered "standard".
            value = getattr(self, kind)
            if isinstance(value, str):
                setattr(self, kind, registry.canonical(value) or value)
        self.validate()

    def _shape(self) -> None:
        """x_shape as a tuple (from x_dim when only that is given), and x_dim its number of values."""
        if _is_int(self.x_shape):
            self.x_shape = (self.x_shape,)
        if self.x_shape is not None:
            if not isinstance(self.x_shape, (tuple, list)) or not all(_is_int(s) and s >= 1 for s in self.x_shape):
                raise UserError(f"x_shape must be a list of positive integers, got {self.x_shape!r}")
            self.x_shape = tuple(self.x_shape) or None
        if self.x_shape is None and self.x_dim is not None:
            check_number(self.x_dim, "x_dim", integer=True, low=1)
            self.x_shape = (self.x_dim,)
        if self.x_shape is not None:
            size = math.prod(self.x_shape)
            if self.x_dim is not None and self.x_dim != size:
                raise UserError(f"x_dim = {self.x_dim} does not match x_shape {self.x_shape} ({size} values)")
            self.x_dim = size

    def validate(self) -> None:
        """Raise ``UserError`` (a ValueError) with a one-line message for any value that cannot build a VAE; each
        component's options are checked by its own options dataclass."""
        check_number(self.z_dim, "z_dim", integer=True, low=1)
        if not isinstance(self.hidden, tuple) or not all(_is_int(w) and w >= 1 for w in self.hidden):
            raise UserError(f"hidden sizes must be positive integers, got {self.hidden!r}")
        if not isinstance(self.options, dict) or not all(isinstance(v, dict) for v in self.options.values()):
            raise UserError(f"options must map a kind of component to its options, got {self.options!r}")
        for kind in self.options:
            if kind not in COMPONENTS:
                raise UserError(f"options for unknown kind {kind!r}; the kinds are {', '.join(COMPONENTS)}")
        for kind in COMPONENTS:
            self.component_options(kind)
        check_combination(self)

    def options_of(self, kind: str) -> dict[str, Any]:
        """The options given for the component of ``kind`` ("decoder", ...), empty if none."""
        return dict(self.options.get(kind, {}))

    def component_options(self, kind: str) -> Any:
        """The options dataclass of the chosen component of ``kind``, filled from ``options`` and checked (one-line
        ``UserError``); None when that component declares none."""
        name = getattr(self, kind)
        return COMPONENTS[kind][name].make_options(self.options_of(kind), f"{kind} {name!r}")

    def resolved_options(self) -> dict[str, dict[str, Any]]:
        """Every option of the chosen components, given or default: what the built model uses."""
        found = {kind: self.component_options(kind) for kind in COMPONENTS}
        return {kind: _tuples(dataclasses.asdict(o)) for kind, o in found.items() if o is not None}

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VAEConfig:
        """A config from its dict; one of formats 2-4, with flat component fields, is migrated (``migrate_model``)."""
        return cls(**_from_dict(cls, migrate_model(d)))

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


@dataclass
class TrainConfig(_NoOldFields):
    """Everything a training run needs; ``to_json`` / ``from_json`` round-trip it (``DIR/config.json``).

    Fields:
        model: the VAEConfig (its x_shape is the data set's; left out, train() takes it from the data).
        dataset: digits (scikit-learn's 8x8 digits, offline; the default), mnist, fashion-mnist, static-mnist
            (Larochelle & Murray's fixed binarisation, its .amat files in data_dir/binarized_mnist/; any case), a
            path to a .npy or .pt array ((N, D), (N, H, W), (N, H, W, C) or (N, C, H, W) with C = 1 or 3; uint8 is
            scaled to [0, 1]), or a folder of PNG / JPEG images (optionally one sub-folder per label).
        data_dir: where mnist and fashion-mnist are read from and downloaded to, and static-mnist read from (None: a
            per-user cache directory).
        labels: a .npy or .pt file of integer labels for your own data set (used to colour plots).
        binarization: how grey training images meet a Bernoulli likelihood: dynamic (a fresh x ~ Bernoulli(pixels)
            every epoch) or fixed (one draw for the whole run, from a constant seed: a "static" binarised data set,
            made as Larochelle & Murray 2011 made theirs). Validation and test images are binarised once either way.
        elbo: the ELBO estimator, a name in pyro_vae.ESTIMATORS.
        elbo_options: the estimator's own options (its ``EstimatorSpec.options`` dataclass): {"alpha": 0.5} for
            renyi (on the command line: --elbo-alpha 0.5); what is not given takes the estimator's default.
        jit: compile the estimator with the PyTorch JIT (an option of every estimator that has a compiled form).
        particles: samples of z per example in each ELBO estimate (K of the iwae, renyi and dreg bounds).
        beta: weight of the KL term (1 = the ELBO; 0 = no KL, a plain autoencoder with noise).
        kl_warmup: epochs over which beta rises linearly from 0 to beta (0 = no warm-up; the linear schedule).
        kl_schedule: how beta changes per epoch: linear (from 0 to beta over kl_warmup epochs, then flat) or
            cyclical (Fu et al. 2019: kl_cycles cycles over the run's epochs, each rising linearly from 0 to beta
            over its first kl_ratio, then flat at beta).
        kl_cycles: the number M of cyclical annealing cycles over the run's epochs (at most epochs).
        kl_ratio: the fraction R of each cyclical annealing cycle over which beta rises from 0, in (0, 1].
        free_bits: lambda, the free-bits floor in nats on each latent dimension's KL averaged over the minibatch
            (Kingma et al. 2016): the training KL term is sum_j max(lambda, KL_j); 0 = the plain ELBO. Needs
            elbo meanfield (an analytic KL), without jit; the reported test ELBO stays the true ELBO.
        epochs: number of passes over the training set.
        batch_size: examples per gradient step.
        lr: Adam's learning rate (at the start, under lr_schedule).
        lr_schedule: the learning rate per epoch (torch.optim.lr_scheduler): constant, step (times lr_gamma every
            lr_step_epochs epochs), cosine (cosine annealing from lr to 0 over the run's epochs) or plateau (times
            lr_gamma when the test ELBO has not risen for more than lr_patience epochs; needs eval_every 1) or burda
            (Burda et al. 2016, Sec. 5: 3^i epochs at lr * 10^(-i/7) for i = 0..7, 3280 epochs; then the last rate) or
            multistep (times lr_gamma at each of the epochs lr_milestones).
        lr_step_epochs: epochs between two reductions of the step schedule.
        lr_milestones: the epochs, rising, after which the multistep schedule multiplies the rate by lr_gamma.
        lr_gamma: the factor in (0, 1) of each reduction of the step, plateau and multistep schedules.
        lr_patience: epochs without a rise of the test ELBO that the plateau schedule waits before reducing.
        adam_eps: Adam's epsilon, added to the root of the second-moment estimate (1e-8, torch's default; Burda et
            al. 2016 used 1e-4).
        validation: hold out this many training examples as a validation set (0 = none): they are not trained on,
            and their ELBO (beta = 1, eval_samples draws) is recorded every epoch as val_elbo.
        validation_split: which training examples are held out: random (a permutation drawn from a generator
            seeded with seed, the same for every run of that seed) or last (the last ones, as Burda et al. 2016 and
            Tomczak & Welling 2018 did).
        patience: early stopping: stop after this many epochs in a row in which the validation ELBO did not rise
            more than min_delta above its best (0 = never stop early; needs validation). The epochs of a linear KL
            warm-up do not count (Tomczak & Welling 2018). best.pt holds the weights of the best epoch.
        min_delta: the rise of the validation ELBO, in nats per example, that counts as an improvement.
        preset: the named protocol this run's defaults came from (pyro_vae.presets; --preset help lists them);
            a record: explicit options override the preset's values.
        clip_norm: clip the gradient's global 2-norm to this value (none = no clipping).
        seed: seeds torch, numpy and Python's random (model init, shuffling, binarisation, sampling).
        device: auto (cuda when available), cpu, cuda or cuda:N.
        require_analytic_kl: refuse to train if a meanfield ELBO would estimate any KL by Monte Carlo.
        eval_samples: samples of z per test example when estimating the test ELBO.
        eval_every: the test ELBO after every this many epochs and the last (other records have no test_* values).
        checkpoint_seconds: a checkpoint after the first epoch this long after the last one (0 = every epoch), after
            the last epoch and on Ctrl-C / SIGTERM; a crash loses at most this plus one epoch (docs/training.md).
        threads: torch CPU threads; 1, the default of every command, was the fastest measured for these models and
            the steadiest on a busy machine (docs/performance.md); None = torch's default, all cores.
        download: download mnist and fashion-mnist when missing.
        plugins: where the run's own components come from, {"prior:student-t": module, file or package}; filled
            in by train() and imported again when the run is loaded (pyro_vae.plugins).
        image_size: resize and centre-crop a folder's images to this many pixels square (none = keep their size,
            which must then be the same for all).
    """

    model: VAEConfig = field(default_factory=VAEConfig)
    dataset: str = "digits"
    data_dir: str | None = None
    labels: str | None = None
    binarization: Literal["dynamic", "fixed"] = "dynamic"
    elbo: str = "meanfield"
    elbo_options: dict[str, Any] = field(default_factory=dict)
    jit: bool = False
    particles: int = 1
    beta: float = 1.0
    kl_warmup: int = 0
    kl_schedule: Literal["linear", "cyclical"] = "linear"
    kl_cycles: int = 4
    kl_ratio: float = 0.5
    free_bits: float = 0.0
    epochs: int = 100
    batch_size: int = 128
    lr: float = 5e-3
    lr_schedule: Literal["constant", "step", "cosine", "plateau", "burda", "multistep"] = "constant"
    lr_step_epochs: int = 10
    lr_milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    lr_patience: int = 2
    adam_eps: float = 1e-8
    validation: int = 0
    validation_split: Literal["random", "last"] = "random"
    patience: int = 0
    min_delta: float = 0.0
    preset: str | None = None
    clip_norm: float | None = None
    seed: int = 0
    device: str = "auto"
    require_analytic_kl: bool = False
    eval_samples: int = 1
    eval_every: int = 1
    checkpoint_seconds: float = 10.0
    threads: int | None = 1
    download: bool = True
    plugins: dict[str, str] = field(default_factory=dict)
    image_size: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = VAEConfig.from_dict(self.model)
        if isinstance(self.elbo, str):
            self.elbo = ESTIMATORS.canonical(self.elbo) or self.elbo
        if isinstance(self.elbo_options, dict):
            self.elbo_options = dict(_tuples(self.elbo_options))
        if isinstance(self.dataset, str) and self.dataset.lower() in BUILTIN_DATASETS:
            self.dataset = self.dataset.lower()
        if isinstance(self.lr_milestones, list):
            self.lr_milestones = tuple(self.lr_milestones)  # read from JSON
        self.validate()

    def validate(self) -> None:
        """Raise ``UserError`` (a ValueError) with a one-line message for any value a run cannot use."""
        if not isinstance(self.model, VAEConfig):
            raise UserError(f"model must be a VAEConfig, got {type(self.model).__name__}")
        # self.model validated itself when it was made (VAEConfig.__post_init__): not again here.
        check_data_options(self.dataset, self.data_dir, self.labels, self.image_size)
        if self.binarization not in BINARIZATIONS:
            raise UserError(f"binarization must be one of {', '.join(BINARIZATIONS)}, got {self.binarization!r}")
        self._check_estimator()
        self._check_numbers()
        cuda_n = isinstance(self.device, str) and self.device.startswith("cuda:") and self.device[5:].isdigit()
        if not (isinstance(self.device, str) and self.device in ("auto", "cpu", "cuda") or cuda_n):
            raise UserError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        for name in ("require_analytic_kl", "download", "jit"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"{name} must be true or false, got {getattr(self, name)!r}")
        ESTIMATORS[self.elbo].check(jit=self.jit)
        check_estimator_for_guide(self.elbo, self.model.guide)
        if not isinstance(self.plugins, dict) or not all(isinstance(v, str) for v in self.plugins.values()):
            raise UserError(f"plugins must map components to their modules or files, got {self.plugins!r}")

    def _check_estimator(self) -> None:
        if self.elbo not in ESTIMATORS:
            raise ESTIMATORS.unknown(self.elbo, what="elbo")
        if not isinstance(self.elbo_options, dict):
            raise UserError(f"elbo_options must map option names to values, got {self.elbo_options!r}")
        ESTIMATORS[self.elbo].make_options(self.elbo_options)  # checked by the estimator's options dataclass
        # A model structure may refuse an estimator that is biased for it (the bottom-up hierarchical guide and
        # the meanfield ELBO): its options' ``check_estimator(name)`` says why.
        why = getattr(self.model.component_options("model"), "check_estimator", lambda _: None)(self.elbo)
        if why:
            raise UserError(why)

    def _check_numbers(self) -> None:
        for name in ("particles", "epochs", "batch_size", "eval_samples", "eval_every"):
            check_number(getattr(self, name), name, integer=True, low=1)
        check_number(self.kl_warmup, "kl_warmup", integer=True, low=0, note="epochs")
        self._check_kl_schedule()
        self._check_free_bits()
        self._check_lr_schedule()
        self._check_validation()
        for name in ("beta", "checkpoint_seconds"):
            check_number(getattr(self, name), name, low=0)
        for name in ("lr", "adam_eps"):
            check_number(getattr(self, name), name, positive=True)
        if self.clip_norm is not None:
            check_number(self.clip_norm, "clip_norm", positive=True, note="or None for no clipping")
        check_number(self.seed, "seed", integer=True, low=0, high=2**32, bounds="[)")
        if self.threads is not None:
            check_number(self.threads, "threads", integer=True, low=1, note="or None for torch's default")

    def _check_kl_schedule(self) -> None:
        if self.kl_schedule not in KL_SCHEDULES:
            raise UserError(f"kl_schedule must be one of {', '.join(KL_SCHEDULES)}, got {self.kl_schedule!r}")
        check_number(self.kl_cycles, "kl_cycles", integer=True, low=1)
        check_number(self.kl_ratio, "kl_ratio", low=0, high=1, bounds="(]")
        if self.kl_schedule != "cyclical":
            return
        if self.kl_warmup:
            raise UserError("kl_warmup is the linear schedule's; a cyclical schedule rises within each cycle: drop it")
        if _is_int(self.epochs) and self.kl_cycles > self.epochs:
            raise UserError(f"kl_cycles ({self.kl_cycles}) must be at most epochs ({self.epochs})")

    def _check_free_bits(self) -> None:
        check_number(self.free_bits, "free_bits", low=0, note="nats per latent dimension")
        if self.free_bits and (self.elbo != "meanfield" or self.jit):
            raise UserError(
                f"free_bits needs --elbo meanfield (its analytic KL per latent dimension) without --jit; got --elbo "
                f"{self.elbo}{' --jit' if self.jit else ''}"
            )

    def _check_lr_schedule(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise UserError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        check_number(self.lr_step_epochs, "lr_step_epochs", integer=True, low=1)
        check_number(self.lr_patience, "lr_patience", integer=True, low=0)
        check_number(self.lr_gamma, "lr_gamma", low=0, high=1, bounds="()")
        if not isinstance(self.lr_milestones, tuple):
            raise UserError(f"lr_milestones must be a list of epochs, got {self.lr_milestones!r}")
        for m in self.lr_milestones:
            check_number(m, "each of lr_milestones", integer=True, low=1, note="an epoch")
        if list(self.lr_milestones) != sorted(set(self.lr_milestones)):
            raise UserError(f"lr_milestones must rise, each epoch once: got {list(self.lr_milestones)}")
        if self.lr_schedule == "multistep" and not self.lr_milestones:
            raise UserError("lr_schedule multistep needs its epochs: give --lr-milestones E1 E2 ...")
        if self.lr_milestones and self.lr_schedule != "multistep":
            raise UserError(f"lr_milestones are the multistep schedule's; lr_schedule is {self.lr_schedule}")
        if self.lr_schedule == "plateau" and self.eval_every != 1:
            raise UserError(
                f"lr_schedule plateau follows the test ELBO of every epoch: needs eval_every 1, got {self.eval_every!r}"
            )

    def _check_validation(self) -> None:
        for name in ("validation", "patience"):
            check_number(getattr(self, name), name, integer=True, low=0)
        if self.validation_split not in VALIDATION_SPLITS:
            raise UserError(
                f"validation_split must be one of {', '.join(VALIDATION_SPLITS)}, got {self.validation_split!r}"
            )
        check_number(self.min_delta, "min_delta", low=0, note="nats per example")
        if self.patience and not self.validation:
            raise UserError("patience (early stopping) follows the validation ELBO: give --validation N too")
        if self.preset is not None:
            if not isinstance(self.preset, str):
                raise UserError(f"preset must be a preset's name, got {self.preset!r}")
            get_preset(self.preset)

    def kl_beta(self, epoch: int) -> float:
        """beta of the 0-based ``epoch`` under ``kl_schedule`` (``pyro_vae.beta.kl_beta``)."""
        return kl_beta(epoch, self.beta, self.kl_schedule, self.kl_warmup, self.epochs, self.kl_cycles, self.kl_ratio)

    def components(self) -> dict[str, str]:
        """The names of the run's components and estimator by kind: ``{"prior": "standard", ..., "estimator":
        "meanfield"}`` (what ``pyro_vae.plugins.required_plugins`` records)."""
        return {**{kind: getattr(self.model, kind) for kind in COMPONENTS}, "estimator": self.elbo}

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["model"] = self.model.to_dict()
        d["elbo_options"] = json.loads(json.dumps(self.elbo_options))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """A config from its dict (formats 2-4 are migrated, ``migrate_config``). Reading a config never imports
        code: the components of a run's plugins must be registered first (``recorded_plugins``, then
        ``pyro_vae.plugins.require_plugins``, as ``pyro_vae.run_dir.read_config`` and the commands do)."""
        d = _from_dict(cls, migrate_config(d))
        if "model" not in d:
            raise UserError("a TrainConfig needs a model (a VAEConfig)")
        return cls(**{**d, "model": VAEConfig.from_dict(d["model"])})

    @staticmethod
    def recorded_plugins(text: str | dict[str, Any]) -> dict[str, str]:
        """The ``plugins`` record of a config (its JSON text or dict), read without checking anything else."""
        try:
            d = json.loads(text) if isinstance(text, str) else text
        except ValueError:
            return {}
        plugins = d.get("plugins") if isinstance(d, dict) else None
        if not isinstance(plugins, dict):
            return {}
        return {k: v for k, v in plugins.items() if isinstance(k, str) and isinstance(v, str)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_options(cls, model: dict[str, Any] | None = None, train: dict[str, Any] | None = None) -> TrainConfig:
        """A config from VAEConfig fields ``model`` and TrainConfig fields ``train`` (the command line's), with
        the paths of the user's files stored absolute, so that the run can be reloaded from any directory. When
        ``train`` names a ``preset``, its values are the defaults (``pyro_vae.presets.apply_preset``)."""
        model, train = apply_preset((train or {}).get("preset"), model or {}, train or {})
        return cls(model=VAEConfig(**model), **absolute_paths(train))

    @classmethod
    def from_preset(
        cls, name: str, model: dict[str, Any] | None = None, train: dict[str, Any] | None = None
    ) -> TrainConfig:
        """The config of the preset ``name`` (``pyro_vae.presets``) with the VAEConfig fields ``model`` and the
        TrainConfig fields ``train`` over its values: ``TrainConfig.from_preset("burda2016", train={"elbo": "iwae",
        "particles": 50})``."""
        return cls.from_options(model, {**(train or {}), "preset": name})

    @classmethod
    def for_data(cls, data: VAEData, **options: Any) -> TrainConfig:
        """A config for ``data`` (x_shape and, unless given, dataset from them) and VAEConfig / training fields."""
        model_opts, train_opts = split_options(options)
        if data.name.lower() in BUILTIN_DATASETS or Path(data.name).exists():  # recorded, so load_run finds the data
            train_opts.setdefault("dataset", data.name)
        return cls(model=VAEConfig(**{**model_opts, "x_shape": data.x_shape, "x_dim": None}), **train_opts)

    def with_data_shape(self, data: VAEData) -> TrainConfig:
        """This config with ``model.x_shape`` taken from ``data``; a one-line error if it was set otherwise."""
        shape = tuple(data.x_shape)
        if self.model.x_shape is None:
            return dataclasses.replace(self, model=dataclasses.replace(self.model, x_shape=shape, x_dim=None))
        data.match_shape(self.model.x_shape)  # images as rows, for a model made for rows (runs of earlier releases)
        shape = tuple(data.x_shape)
        if self.model.x_shape != shape:
            raise UserError(
                f"the model's x_shape is {self.model.x_shape} but the {data.name} data have examples of shape {shape}"
            )
        return self

    def resolve_device(self) -> torch.device:
        """The torch device of ``device``: "auto" is cuda if available, else cpu; one line for cuda without a GPU."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(
                f"device {self.device} asked for but CUDA is not available here; use --device cpu (or auto)"
            )
        return torch.device(self.device)

    def load_data(self, device: torch.device | str = "cpu", download: bool | None = None) -> VAEData:
        """The run's data set, ``load_data(self.dataset, ...)`` with this config's paths and download setting."""
        return load_data(
            self.dataset,
            data_dir=self.data_dir,
            labels=self.labels,
            device=device,
            download=self.download if download is None else download,
            image_size=self.image_size,
        )

    def differences(self, other: TrainConfig) -> list[str]:
        """Names of the fields (``model.<field>`` for the VAEConfig) whose values differ; ``plugins`` is a record of
        where the components came from, not a setting, and is not compared."""
        a, b = self.to_dict(), other.to_dict()
        # Options compared as the model uses them: a default given explicitly is the same run.
        a["model"]["options"], b["model"]["options"] = self.model.resolved_options(), other.model.resolved_options()
        a["elbo_options"], b["elbo_options"] = self.resolved_elbo_options(), other.resolved_elbo_options()
        diffs = [f"model.{k}" for k in a["model"] if a["model"][k] != b["model"].get(k)]
        return diffs + [k for k in a if k not in ("model", "plugins") and a[k] != b[k]]

    def resolved_elbo_options(self) -> dict[str, Any]:
        """Every option of the estimator, given or default."""
        options = ESTIMATORS[self.elbo].make_options(self.elbo_options)
        return _tuples(dataclasses.asdict(options)) if options is not None else {}
