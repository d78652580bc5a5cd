"""One teacher call -> one checked label: ``compute_labels(calc, atoms)``."""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator, PropertyNotImplementedError

from ..errors import TeacherError  # re-exported: teachers.TeacherError is public




def compute_labels(calc: BaseCalculator, atoms: Atoms) -> dict[str, Any]:
    """Energy, forces and (fully periodic cells only) stress of ``atoms`` from the teacher ``calc``.

    Returns ``{"energy": float (eV), "forces": (n_atoms, 3) float64 (eV/Å),
    "stress": (3, 3) float64 (eV/Å³, ASE sign) or None}``. ``stress`` is ``None`` when the structure is
    not periodic along all three axes or the teacher does not implement it.

    The labels are the teacher's raw outputs: ``atoms`` is not modified, and its constraints (which
    ASE would apply to forces, e.g. zeroing fixed atoms) are ignored.

    Raises:
        TeacherError: the calculation raised, or gave non-finite values or wrongly shaped forces.
    """
    work = atoms.copy()  # keeps info/arrays (charges, spins) the teacher may read
    del work.constraints
    work.calc = calc
    n_atoms = len(work)
    try:
        energy = work.get_potential_energy()
        forces = np.array(work.get_forces(), dtype=np.float64)
        stress = None
        if work.pbc.all() and "stress" in getattr(calc, "implemented_properties", ()):
            try:
                stress = np.array(work.get_stress(voigt=False), dtype=np.float64)
            except PropertyNotImplementedError:
                stress = None
    except Exception as exc:  # any teacher failure is a per-structure failure to record, not a crash
        raise TeacherError(f"teacher raised {type(exc).__name__}: {exc}") from exc
    finally:
        work.calc = None

    energy = np.asarray(energy, dtype=np.float64)
    if energy.size != 1 or not np.isfinite(energy).all():
        raise TeacherError(f"teacher returned a non-finite or non-scalar energy: {energy!r}")
    if forces.shape != (n_atoms, 3):
        raise TeacherError(f"teacher returned forces of shape {forces.shape}, expected ({n_atoms}, 3)")
    if not np.isfinite(forces).all():
        bad = np.flatnonzero(~np.isfinite(forces).all(axis=1))
        raise TeacherError(f"teacher returned non-finite forces on atoms {bad[:10].tolist()}")
    if stress is not None and not np.isfinite(stress).all():
        raise TeacherError("teacher returned a non-finite stress")
    return {"energy": float(energy.reshape(())), "forces": forces, "stress": stress}
