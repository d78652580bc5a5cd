"""mlff_calc: distil a slow teacher force field into a small, fast, energy-conserving PaiNN student.

Public API (see DESIGN.md)::

    from mlff_calc import StudentForceField, StudentCalculator, load_teacher
"""

__version__ = "0.1.0"

from .model.student import StudentForceField  # noqa: E402
from .calculator import StudentCalculator  # noqa: E402


def load_teacher(name: str, **options):
    """Build a teacher ASE calculator by name (``orb-v2``, ``gfn2-xtb``, ``sevennet-0``, ``emt``, ``pkg.mod:fn``)."""
    from .teachers import load_teacher as _load

    return _load(name, **options)


__all__ = ["StudentForceField", "StudentCalculator", "load_teacher", "__version__"]
