"""mlff_calc: distil a slow teacher force field into a small, fast, energy-conserving PaiNN student.

Public API (see DESIGN.md)::

    from mlff_calc import StudentForceField, StudentCalculator, load_teacher

The names are imported lazily, so ``mlff-calc --help`` and light sub-commands start without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "StudentForceField": "mlff_calc.model.student",
    "StudentCalculator": "mlff_calc.calculator",
    "load_teacher": "mlff_calc.teachers",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mlff_calc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))


__all__ = ["StudentForceField", "StudentCalculator", "load_teacher", "__version__"]
