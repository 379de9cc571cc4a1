"""Pyro guides q(z|x): encoders and variational families.

Nothing here imports ``pyro_vae``; the dependency points one way only.
"""

from guides.encoder import MLPEncoder
from guides.normal_guide import NormalGuide

__all__ = ["MLPEncoder", "NormalGuide"]
