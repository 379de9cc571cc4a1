"""pyro-vae: variational autoencoders as Pyro model/guide pairs, tied by tests to the closed-form loss.

The mathematics follows Odaibo, "Tutorial: Deriving the Standard VAE Loss Function", and the blog post
"Why we need KL divergence loss in VAEs".
"""

from pyro_vae.ais import AISOptions, ais_log_likelihood, bdmc, simulate
from pyro_vae.beta import BetaScaled, LatentScale
from pyro_vae.collapse import collapse_diagnostics
from pyro_vae.comparison import compare_estimators
from pyro_vae.config import TrainConfig, VAEConfig
from pyro_vae.data import load_data
from pyro_vae.estimators import ESTIMATORS, EstimatorSpec, make_elbo, register_estimator
from pyro_vae.evaluation import Evaluation, evaluate
from pyro_vae.gaps import GapOptions, inference_gaps
from pyro_vae.importance import log_likelihood
from pyro_vae.pairs import MissingMethod, PairModule
from pyro_vae.plugins import load_plugin
from pyro_vae.registry import (
    DECODERS,
    ENCODERS,
    GUIDES,
    LIKELIHOODS,
    MODELS,
    PRIORS,
    Component,
    build,
    register,
    register_decoder,
    register_encoder,
    register_guide,
    register_likelihood,
    register_prior,
)
from pyro_vae.run_dir import Run, RunDir, load_run
from pyro_vae.training import Trainer, TrainResult, train

__version__ = "0.2.0"

__all__ = [
    "AISOptions",
    "DECODERS",
    "ENCODERS",
    "ESTIMATORS",
    "GUIDES",
    "LIKELIHOODS",
    "MODELS",
    "PRIORS",
    "BetaScaled",
    "Component",
    "EstimatorSpec",
    "Evaluation",
    "GapOptions",
    "LatentScale",
    "MissingMethod",
    "PairModule",
    "Run",
    "RunDir",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "VAEConfig",
    "ais_log_likelihood",
    "bdmc",
    "build",
    "collapse_diagnostics",
    "compare_estimators",
    "evaluate",
    "inference_gaps",
    "load_data",
    "load_plugin",
    "load_run",
    "log_likelihood",
    "make_elbo",
    "register",
    "register_decoder",
    "register_encoder",
    "register_estimator",
    "register_guide",
    "register_likelihood",
    "register_prior",
    "simulate",
    "train",
    "__version__",
]
