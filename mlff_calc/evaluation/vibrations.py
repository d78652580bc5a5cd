"""Harmonic vibrational frequencies of a molecule for any calculator, and student-vs-teacher comparisons.

Each model is relaxed by itself (the frequencies of a model belong to *its* minimum), then the Hessian is
built from central differences of forces along every Cartesian axis (6N calls), mass-weighted, and the
six rigid-body motions (five for a linear molecule) are projected out exactly (Eckart), so the 3N - 6
internal frequencies come out with no spurious near-zero modes mixed in. Frequencies are in cm⁻¹;
imaginary ones are returned as negative numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import BaseCalculator
from ase.optimize import BFGS

from ..errors import InputError

FMAX = 1e-3  # eV/Å, the relaxation's convergence
DELTA = 0.005  # Å, the central-difference step of the Hessian
# sqrt(eV / Å² / amu) -> cm⁻¹ (hbar ω in eV, divided by the energy of one cm⁻¹)
_TO_INVCM = units._hbar * 1e10 / np.sqrt(units._e * units._amu) / units.invcm


@dataclass
class Frequencies:
    """``atoms``: the relaxed structure; ``frequencies``: (3N - 6,) cm⁻¹ ascending (imaginary < 0);
    ``max_force``: eV/Å left after relaxation; ``relax_steps``: optimiser steps taken."""

    atoms: Atoms
    frequencies: np.ndarray
    max_force: float
    relax_steps: int


def relax(atoms: Atoms, calc: BaseCalculator, fmax: float = FMAX, steps: int = 1000) -> tuple[Atoms, int]:
    """A copy of ``atoms`` relaxed with BFGS to ``fmax`` eV/Å (or ``steps`` steps) on ``calc``."""
    work = atoms.copy()
    work.calc = calc
    opt = BFGS(work, logfile=None)
    opt.run(fmax=fmax, steps=steps)
    return work, int(opt.nsteps)


def hessian(atoms: Atoms, calc: BaseCalculator, delta: float = DELTA) -> np.ndarray:
    """``(3N, 3N)`` eV/Å², symmetrised, by central differences of ``calc``'s forces (step ``delta`` Å)."""
    x0 = atoms.positions.copy()
    work = atoms.copy()
    work.calc = calc
    n = 3 * len(atoms)
    h = np.empty((n, n))
    for k in range(n):
        column = []
        for sign in (1.0, -1.0):
            x = x0.copy()
            x.reshape(-1)[k] += sign * delta
            work.positions = x
            column.append(work.get_forces().reshape(-1))
        h[:, k] = -(column[0] - column[1]) / (2.0 * delta)
    return 0.5 * (h + h.T)


def internal_basis(atoms: Atoms) -> np.ndarray:
    """``(3N, 3N - 6)`` (``3N - 5`` if linear): orthonormal mass-weighted coordinates with the rigid-body
    motions (translations, rotations about the centre of mass) removed exactly (Eckart)."""
    masses = atoms.get_masses()
    if len(atoms) < 2:
        raise InputError("a single atom has no vibrations")
    centred = atoms.positions - atoms.get_center_of_mass()
    rigid = []
    for axis in np.eye(3):
        rigid.append((np.tile(axis, (len(atoms), 1)) * np.sqrt(masses)[:, None]).reshape(-1))  # translation
        rigid.append((np.cross(axis, centred) * np.sqrt(masses)[:, None]).reshape(-1))  # rotation
    basis, s, _ = np.linalg.svd(np.array(rigid).T, full_matrices=True)
    rank = int((s > 1e-6 * s.max()).sum())  # 5 for a linear molecule, 6 otherwise
    return basis[:, rank:]  # orthonormal complement of the rigid-body motions


def internal_frequencies(atoms: Atoms, h: np.ndarray) -> np.ndarray:
    """Frequencies (cm⁻¹, ascending, imaginary < 0) of the Hessian ``h`` with rigid-body motions removed."""
    sqrt_m = np.repeat(np.sqrt(atoms.get_masses()), 3)
    hm = h / np.outer(sqrt_m, sqrt_m)
    internal = internal_basis(atoms)
    eigenvalues = np.linalg.eigvalsh(internal.T @ hm @ internal)
    return np.sign(eigenvalues) * np.sqrt(np.abs(eigenvalues)) * _TO_INVCM


def harmonic_frequencies(
    atoms: Atoms, calc: BaseCalculator, fmax: float = FMAX, delta: float = DELTA, steps: int = 1000
) -> Frequencies:
    """Relax ``atoms`` on ``calc``, then its internal harmonic frequencies (molecules: no periodic cell)."""
    if atoms.pbc.any():
        raise InputError("harmonic_frequencies is for molecules (no periodic directions)")
    relaxed, n_steps = relax(atoms, calc, fmax=fmax, steps=steps)
    max_force = float(np.linalg.norm(relaxed.get_forces(), axis=1).max())
    freqs = internal_frequencies(relaxed, hessian(relaxed, calc, delta=delta))
    return Frequencies(relaxed, freqs, max_force, n_steps)


def compare_frequencies(seeds, student: BaseCalculator, teacher: BaseCalculator, teacher_known=None,
                        **kwargs) -> dict:
    """Student vs teacher frequencies at each model's own minimum, for every seed molecule.

    ``seeds``: ``[(name, atoms)]``. ``teacher_known``: ``[Frequencies | None]`` per seed, the teacher's
    already computed the same way (None: compute). Returns ``{"per_seed": [{name, formula, student_cm1,
    teacher_cm1, mae_cm1, max_error_cm1}], "mae_cm1", "max_error_cm1"}`` (modes matched in ascending order).
    """
    rows, errors = [], []
    for k, (name, atoms) in enumerate(seeds):
        s = harmonic_frequencies(atoms, student, **kwargs)
        t = teacher_known[k] if teacher_known is not None and teacher_known[k] is not None \
            else harmonic_frequencies(atoms, teacher, **kwargs)
        err = np.abs(s.frequencies - t.frequencies)
        errors.append(err)
        rows.append({"name": name, "formula": atoms.get_chemical_formula(),
                     "student_cm1": s.frequencies.tolist(), "teacher_cm1": t.frequencies.tolist(),
                     "mae_cm1": float(err.mean()), "max_error_cm1": float(err.max()),
                     "student_max_force": s.max_force, "teacher_max_force": t.max_force})
    all_err = np.concatenate(errors) if errors else np.zeros(0)
    return {"per_seed": rows, "mae_cm1": float(all_err.mean()) if all_err.size else float("nan"),
            "max_error_cm1": float(all_err.max()) if all_err.size else float("nan")}
