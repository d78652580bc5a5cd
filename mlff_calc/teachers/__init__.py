"""Teachers: any ASE calculator, built by name.

``load_teacher(name, **options) -> ase.calculators.calculator.Calculator``

Names: ``emt`` (ASE, tests), ``orb-v2``, ``gfn2-xtb``, ``sevennet-0``, ``package.module:callable``.
``teacher_spec(name, options)`` is the JSON-safe record stored with every label.
``compute_labels(calc, atoms)`` runs one checked teacher call; failures raise :class:`TeacherError`.

Each teacher lives in its own module and imports its (heavy, optional) package only when built.
"""

from __future__ import annotations

from typing import Any

from ase.calculators.calculator import Calculator

from . import custom, emt, orb, sevennet, xtb
from .labels import TeacherError, compute_labels

# name -> factory(**options); ValueError for bad options, never a bare TypeError.
TEACHERS = {
    "emt": emt.build,
    "orb-v2": orb.build,
    "gfn2-xtb": xtb.build,
    "sevennet-0": sevennet.build,
}


def load_teacher(name: str, **options: Any) -> Calculator:
    """Build the teacher ``name`` with ``options``; ``ValueError`` for an unknown name or a bad option."""
    key = name.lower()
    if key in TEACHERS:
        return TEACHERS[key](**options)
    if ":" in name:
        return custom.build(name, **options)
    raise ValueError(f"unknown teacher {name!r}; choose one of {sorted(TEACHERS)} "
                     "or give package.module:callable")


def teacher_spec(name: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """JSON-safe description of a teacher, stored in datasets and checkpoints."""
    return {"name": name, "options": {k: (v if isinstance(v, (str, int, float, bool, type(None))) else str(v))
                                      for k, v in sorted((options or {}).items())}}


__all__ = ["TEACHERS", "TeacherError", "compute_labels", "load_teacher", "teacher_spec"]
