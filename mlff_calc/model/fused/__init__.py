"""Fused CPU kernels for PaiNN (compiled on first use with the system C++ compiler).

``available()`` says whether the message kernel could be built here; everything falls back to the eager
PyTorch path when it cannot (no compiler, ``MLFF_CALC_NO_FUSED=1``, CUDA tensors, training with
``create_graph``). :mod:`.whole` runs the whole network and its gradient in one call
(``whole.available()``, ``whole.pack``, ``whole.evaluate``). The fused paths compute the same functions
as the eager one, to round-off.
"""

from . import whole
from .build import available, load_library
from .message import fused_message

__all__ = ["available", "fused_message", "load_library", "whole"]
