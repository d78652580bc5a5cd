"""The whole-model CPU kernel for PaiNN inference (compiled on first use with the system C++ compiler).

:mod:`.whole` runs the whole network and its analytic gradient in one call (``whole.pack``,
``whole.evaluate``). ``available()`` says whether it could be built here; everything falls back to the
eager PyTorch path when it cannot (no compiler, ``MLFF_CALC_NO_FUSED=1``), and for CUDA tensors and
training (a loss on forces needs a twice-differentiable graph). The kernel computes the same function
as the eager path, to round-off.
"""

from . import whole
from .build import whole_available as available

__all__ = ["available", "whole"]
