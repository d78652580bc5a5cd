"""Fused CPU kernels for PaiNN (compiled on first use with the system C++ compiler).

``available()`` says whether the kernels could be built here; everything falls back to the eager
PyTorch path when they cannot (no compiler, ``MLFF_CALC_NO_FUSED=1``, CUDA tensors, training with
``create_graph``). The fused path computes the same functions as the eager one, to round-off.
"""

from .build import available, load_library
from .message import fused_message

__all__ = ["available", "load_library", "fused_message"]
