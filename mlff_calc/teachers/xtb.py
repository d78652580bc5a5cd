"""``gfn2-xtb``: GFN2-xTB tight binding through tblite (offline, molecules and periodic cells).

Options are tblite's ``TBLite`` keywords: ``accuracy``, ``electronic_temperature`` (K),
``max_iterations``, ``charge``, ``multiplicity``, ``mixer``, ``mixer_damping``, ``solvation``, ...
(``method`` is fixed to GFN2-xTB; ``verbosity`` defaults to 0, so labelling stays quiet).
The total charge and spin can also come from each structure's initial charges / magnetic moments.

An SCF that does not converge raises ``ase.calculators.calculator.CalculationFailed`` (a
``RuntimeError``), so a failed point can never be stored as a label.
"""

from __future__ import annotations

from typing import Any

from ase.calculators.calculator import Calculator

from ._options import check_options

# Keyword spellings that tblite.ase maps onto ``solvation`` itself.
_SOLVATION_ALIASES = tuple(f"{m}_solvation" for m in ("alpb", "gbsa", "cosmo", "cpcm", "pcm", "gbe", "gb"))


def build(**options: Any) -> Calculator:
    """``TBLite(method="GFN2-xTB", verbosity=0, **options)``; ``ValueError`` for unknown options."""
    try:
        from tblite.ase import TBLite
    except ImportError as exc:
        raise ValueError(f"teacher 'gfn2-xtb' needs tblite: pip install 'mlff-calc[xtb]' ({exc})") from exc
    # TBLite accepts any keyword silently; "method" is what this teacher *is*, so it is not an option.
    allowed = (set(TBLite.default_parameters) | set(_SOLVATION_ALIASES)) - {"method"}
    check_options("gfn2-xtb", options, allowed)
    return TBLite(**{"verbosity": 0, **options, "method": "GFN2-xTB"})
