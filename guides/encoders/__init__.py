"""Encoders: networks mapping a batch x of shape (N, *x_shape) to features h of shape (N, out_features).

The guide family (``pyro_vae.guides.NormalGuide``, ...) turns h into the parameters of q(z|x), so any encoder
serves any family. An encoder factory gets the ``VAEConfig`` and returns the module; register it in
``pyro_vae.registry.ENCODERS``. Every encoder has an ``out_features`` attribute.
"""

from pyro_vae.guides.encoders.conv import ConvEncoder, ConvEncoderOptions
from pyro_vae.guides.encoders.gated_mlp import GatedMLPEncoder, GatedMLPEncoderOptions
from pyro_vae.guides.encoders.mlp import MLPEncoder, MLPEncoderOptions

__all__ = [
    "ConvEncoder",
    "ConvEncoderOptions",
    "GatedMLPEncoder",
    "GatedMLPEncoderOptions",
    "MLPEncoder",
    "MLPEncoderOptions",
]
