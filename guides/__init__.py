"""Pyro guides q(z|x): encoders (x -> features) and variational families (features -> q(z|x)).

Installed as ``pyro_vae.guides``. Nothing here imports the rest of ``pyro_vae`` except the shared network
building blocks of ``pyro_vae.models`` (``tests/test_architecture.py`` checks it).
"""

from pyro_vae.guides.bernoulli import BernoulliGuide
from pyro_vae.guides.categorical import CategoricalGuide, CategoricalGuideOptions
from pyro_vae.guides.encoders import MLPEncoder
from pyro_vae.guides.fullcov import FullCovarianceGuide
from pyro_vae.guides.hierarchical import BottomUpGuide, LadderGuide
from pyro_vae.guides.iaf import FlowPosterior, IAFGuide, IAFOptions
from pyro_vae.guides.normal_guide import MIN_SCALE, NormalGuide, NormalGuideOptions
from pyro_vae.guides.power_spherical import PowerSpherical, PowerSphericalGuide

__all__ = [
    "MIN_SCALE",
    "BernoulliGuide",
    "CategoricalGuide",
    "CategoricalGuideOptions",
    "BottomUpGuide",
    "FlowPosterior",
    "FullCovarianceGuide",
    "IAFGuide",
    "IAFOptions",
    "LadderGuide",
    "MLPEncoder",
    "NormalGuide",
    "NormalGuideOptions",
    "PowerSpherical",
    "PowerSphericalGuide",
]
