"""Physics checks any conservative ASE calculator must pass, as a pytest mixin.

Subclass :class:`CalculatorPhysicsTests` and implement ``make_calculator(self, dtype)``; every test
runs in float32 and float64 (tolerances per dtype below). The checks: rotation equivariance of
energy, forces and stress; translation and permutation invariance; forces and stress against
finite differences; periodic images (supercells, slabs, wrapping); locality at the cutoff and
additivity of distant fragments; batched evaluation is not checked here (it is model specific).
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.stress import voigt_6_to_full_3x3_stress

from .structures import organic_molecule, random_rotation, slab, small_triclinic_cell

# Absolute tolerances: (energy eV, forces eV/Å, stress eV/Å³). float64 ones are the acceptance bounds.
TOLERANCES = {
    "float64": {"symmetry": 1e-9, "fd_forces": 1e-6, "fd_stress": 1e-6},
    "float32": {"symmetry": 2e-4, "fd_forces": None, "fd_stress": None},  # FD in float32 is noise
}


def _evaluate(atoms: Atoms, calc, stress: bool = False) -> dict:
    atoms = atoms.copy()
    atoms.calc = calc
    out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if stress:
        out["stress"] = voigt_6_to_full_3x3_stress(atoms.get_stress())
    return out


@pytest.mark.parametrize("dtype", ["float64", "float32"])
class CalculatorPhysicsTests:
    """Mixin: provide ``make_calculator(self, dtype) -> ase Calculator`` (a fresh one each call)."""

    cutoff: float = 5.0

    def make_calculator(self, dtype: str):  # pragma: no cover - overridden
        raise NotImplementedError

    def tol(self, dtype: str, key: str) -> float:
        return TOLERANCES[dtype][key]

    # ---- symmetry ------------------------------------------------------------------------------------
    def test_rotation_molecule(self, dtype):
        atoms = organic_molecule()
        rotation = random_rotation(1)
        ref = _evaluate(atoms, self.make_calculator(dtype))
        rotated = atoms.copy()
        rotated.positions = atoms.positions @ rotation.T
        out = _evaluate(rotated, self.make_calculator(dtype))
        tol = self.tol(dtype, "symmetry")
        assert abs(out["energy"] - ref["energy"]) < tol * max(1.0, abs(ref["energy"]))
        np.testing.assert_allclose(out["forces"], ref["forces"] @ rotation.T, atol=tol, rtol=0)

    def test_rotation_triclinic_cell(self, dtype):
        atoms = small_triclinic_cell()
        rotation = random_rotation(2)
        ref = _evaluate(atoms, self.make_calculator(dtype), stress=True)
        rotated = atoms.copy()
        rotated.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
        rotated.positions = atoms.positions @ rotation.T
        out = _evaluate(rotated, self.make_calculator(dtype), stress=True)
        tol = self.tol(dtype, "symmetry")
        assert abs(out["energy"] - ref["energy"]) < tol * max(1.0, abs(ref["energy"]))
        np.testing.assert_allclose(out["forces"], ref["forces"] @ rotation.T, atol=tol, rtol=0)
        np.testing.assert_allclose(out["stress"], rotation @ ref["stress"] @ rotation.T, atol=tol, rtol=0)

    def test_translation(self, dtype):
        tol = self.tol(dtype, "symmetry")
        for atoms in (organic_molecule(), small_triclinic_cell()):
            ref = _evaluate(atoms, self.make_calculator(dtype))
            moved = atoms.copy()
            moved.positions += np.array([1.3, -2.1, 0.7])
            out = _evaluate(moved, self.make_calculator(dtype))
            assert abs(out["energy"] - ref["energy"]) < tol * max(1.0, abs(ref["energy"]))
            np.testing.assert_allclose(out["forces"], ref["forces"], atol=tol, rtol=0)

    def test_permutation(self, dtype):
        tol = self.tol(dtype, "symmetry")
        for atoms in (organic_molecule(), small_triclinic_cell()):
            perm = np.random.default_rng(3).permutation(len(atoms))
            ref = _evaluate(atoms, self.make_calculator(dtype))
            out = _evaluate(atoms[perm], self.make_calculator(dtype))
            assert abs(out["energy"] - ref["energy"]) < tol * max(1.0, abs(ref["energy"]))
            np.testing.assert_allclose(out["forces"], ref["forces"][perm], atol=tol, rtol=0)

    # ---- derivatives -----------------------------------------------------------------------------------
    def test_forces_finite_differences(self, dtype):
        tol = self.tol(dtype, "fd_forces")
        if tol is None:
            return  # finite differences of a float32 energy measure round-off, not the derivative
        for atoms in (organic_molecule(), small_triclinic_cell()):
            atoms = atoms.copy()
            atoms.calc = self.make_calculator(dtype)
            numerical = calculate_numerical_forces(atoms, eps=1e-4)
            np.testing.assert_allclose(atoms.get_forces(), numerical, atol=tol, rtol=0)

    def test_stress_finite_differences(self, dtype):
        tol = self.tol(dtype, "fd_stress")
        if tol is None:
            return
        atoms = small_triclinic_cell()  # heights ~3 Å < cutoff: images matter
        atoms.calc = self.make_calculator(dtype)
        numerical = calculate_numerical_stress(atoms, eps=1e-5)
        np.testing.assert_allclose(atoms.get_stress(), numerical, atol=tol, rtol=0)

    # ---- periodic images -------------------------------------------------------------------------------
    def test_supercell_extensive(self, dtype):
        atoms = small_triclinic_cell()
        ref = _evaluate(atoms, self.make_calculator(dtype), stress=True)
        supercell = atoms.repeat((2, 1, 3))
        out = _evaluate(supercell, self.make_calculator(dtype), stress=True)
        tol = self.tol(dtype, "symmetry")
        assert abs(out["energy"] - 6 * ref["energy"]) < tol * max(1.0, abs(6 * ref["energy"])) * 6
        np.testing.assert_allclose(out["forces"], np.tile(ref["forces"], (6, 1)), atol=tol * 6, rtol=0)
        np.testing.assert_allclose(out["stress"], ref["stress"], atol=tol * 6, rtol=0)

    def test_slab_vacuum_independent(self, dtype):
        tol = self.tol(dtype, "symmetry")
        ref = _evaluate(slab(vacuum=8.0), self.make_calculator(dtype))
        for vacuum in (12.0, 30.0):
            out = _evaluate(slab(vacuum=vacuum), self.make_calculator(dtype))
            assert abs(out["energy"] - ref["energy"]) < tol * max(1.0, abs(ref["energy"]))
            np.testing.assert_allclose(out["forces"], ref["forces"], atol=tol, rtol=0)

    def test_wrapped_unwrapped(self, dtype):
        tol = self.tol(dtype, "symmetry")
        for atoms in (small_triclinic_cell(), slab()):
            unwrapped = atoms.copy()
            shifts = np.random.default_rng(4).integers(-2, 3, size=(len(atoms), 3)) * atoms.pbc
            unwrapped.positions += shifts @ atoms.cell.array
            ref = _evaluate(atoms, self.make_calculator(dtype))
            out = _evaluate(unwrapped, self.make_calculator(dtype))
            assert abs(out["energy"] - ref["energy"]) < tol * max(1.0, abs(ref["energy"]))
            np.testing.assert_allclose(out["forces"], ref["forces"], atol=tol, rtol=0)

    # ---- locality ------------------------------------------------------------------------------------
    def test_smooth_at_cutoff(self, dtype):
        """Energy of a dimer is continuous through the cutoff and the force goes to zero there."""
        rc = self.cutoff
        calc = self.make_calculator(dtype)

        def dimer(r):
            return _evaluate(Atoms("CO", positions=[[0, 0, 0], [r, 0, 0]]), calc)

        far = dimer(rc + 0.5)
        for delta in (1e-2, 1e-3):
            inside = dimer(rc - delta)
            # E ~ (rc - r)^2 near the cutoff (cosine envelope): continuity with a vanishing slope.
            assert abs(inside["energy"] - far["energy"]) < 50 * delta**2 + self.tol(dtype, "symmetry")
            assert np.abs(inside["forces"]).max() < 50 * delta + self.tol(dtype, "symmetry")
        np.testing.assert_allclose(dimer(rc)["energy"], far["energy"], atol=self.tol(dtype, "symmetry"))

    def test_smooth_at_symmetric_structure(self, dtype):
        """Near a perfect lattice (forces zero by symmetry) the energy is quadratic in the displacement.

        A norm like sqrt(|v|² + tiny) makes it grow like |δ| instead: a cusp that breaks MD started
        from a crystal and phonons. E(2δ) - E(0) must be 4 (E(δ) - E(0)).
        """
        if dtype != "float64":
            return  # micro-eV energy differences: below float32 resolution
        from ase.build import bulk

        crystal = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
        direction = np.random.default_rng(5).normal(size=crystal.positions.shape)
        direction /= np.linalg.norm(direction)
        calc = self.make_calculator(dtype)
        np.testing.assert_allclose(_evaluate(crystal, calc)["forces"], 0.0, atol=1e-10)
        energies = []
        for delta in (0.0, 0.01, 0.02):
            displaced = crystal.copy()
            displaced.positions += delta * direction
            energies.append(_evaluate(displaced, calc)["energy"])
        ratio = (energies[2] - energies[0]) / (energies[1] - energies[0])
        assert 3.6 < ratio < 4.4, f"E(2δ)-E0 = {ratio:.2f} x (E(δ)-E0), expected 4 (quadratic)"

    def test_distant_fragments_add_up(self, dtype):
        tol = self.tol(dtype, "symmetry")
        a = organic_molecule(seed=1)
        b = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
        b.positions += [self.cutoff + 12.0, 0, 0]
        calc = self.make_calculator(dtype)
        ea, eb = _evaluate(a, calc), _evaluate(b, calc)
        both = _evaluate(a + b, calc)
        assert abs(both["energy"] - ea["energy"] - eb["energy"]) < 2 * tol * max(1.0, abs(both["energy"]))
        np.testing.assert_allclose(both["forces"], np.vstack([ea["forces"], eb["forces"]]), atol=tol, rtol=0)
