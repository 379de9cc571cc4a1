"""Decoders: networks mapping z of shape (..., z_dim) to the likelihood's parameters, shaped (..., *x_shape).

A decoder factory gets the ``VAEConfig`` (``config.z_dim``, ``config.x_shape``, its widths) and returns the
module; register it in ``pyro_vae.registry.DECODERS``.
"""

from pyro_vae.models.decoders.conv import ConvDecoder, ConvDecoderOptions
from pyro_vae.models.decoders.gated_mlp import GatedMLPDecoder, GatedMLPDecoderOptions
from pyro_vae.models.decoders.linear import LinearDecoder
from pyro_vae.models.decoders.mlp import MLPDecoder, MLPDecoderOptions

__all__ = [
    "ConvDecoder",
    "ConvDecoderOptions",
    "GatedMLPDecoder",
    "GatedMLPDecoderOptions",
    "LinearDecoder",
    "MLPDecoder",
    "MLPDecoderOptions",
]
