"""``emt``: ASE's effective-medium potential (Al, Cu, Ag, Au, Ni, Pd, Pt; H, C, N, O as a toy).

Instant and dependency-free, so the tests and the demo use it as the teacher.
"""

from __future__ import annotations

from typing import Any

from ase.calculators.calculator import Calculator

from ._options import check_options


def build(**options: Any) -> Calculator:
    """``EMT(**options)``; the only option is ASE's ``asap_cutoff`` (bool)."""
    from ase.calculators.emt import EMT

    check_options("emt", options, EMT.default_parameters)
    return EMT(**options)
