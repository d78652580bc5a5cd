"""Teachers: any ASE calculator, built by name.

``load_teacher(name, **options) -> ase.calculators.calculator.Calculator``

Names: ``emt`` (ASE, tests), ``orb-v2``, ``gfn2-xtb``, ``sevennet-0``, ``package.module:callable``.
``teacher_spec(name, options)`` is the JSON-safe record stored with every label.
"""

from __future__ import annotations

from typing import Any

from ase.calculators.calculator import Calculator


def _emt(**options: Any) -> Calculator:
    from ase.calculators.emt import EMT

    return EMT(**options)


# name -> factory(**options). Other modules of this package add their teachers here.
TEACHERS = {"emt": _emt}


def load_teacher(name: str, **options: Any) -> Calculator:
    """Build the teacher ``name`` with ``options``; ``ValueError`` for an unknown name."""
    key = name.lower()
    if key in TEACHERS:
        return TEACHERS[key](**options)
    raise ValueError(f"unknown teacher {name!r}; choose one of {sorted(TEACHERS)} or give package.module:callable")


def teacher_spec(name: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """JSON-safe description of a teacher, stored in datasets and checkpoints."""
    return {"name": name, "options": {k: (v if isinstance(v, (str, int, float, bool, type(None))) else str(v))
                                      for k, v in sorted((options or {}).items())}}
