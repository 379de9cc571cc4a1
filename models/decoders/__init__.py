"""Decoders: networks mapping z of shape (..., z_dim) to the likelihood's parameters (..., x_dim)."""

from models.decoders.linear import LinearDecoder
from models.decoders.mlp import MLPDecoder

__all__ = ["LinearDecoder", "MLPDecoder"]
