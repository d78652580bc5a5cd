"""Physics checks any ASE force-field calculator should pass, as a pytest mixin that runs on any model.

Subclass :class:`CalculatorPhysicsTests` and provide a ``physics_model`` fixture returning a
:class:`PhysicsModel`: how to build a fresh calculator, its tolerances, the elements it knows (the
structures are built from them, see :class:`~mlff_calc.testing.structures.StructureSet`), and the checks
that do not apply to it, each with its reason. The checks: rotation equivariance of energy, forces and
stress; translation and permutation invariance; forces and stress against finite differences; periodic
images (supercells, slabs, wrapping); smoothness at the cutoff and at a symmetric lattice; additivity of
distant fragments; batched evaluation equal to one-by-one, and structures of a batch independent.

A check that does not apply calls ``pytest.skip`` with its reason (``PhysicsModel.skips``), never a bare
``return``; a check that ends without having compared anything fails. ``tests/conftest.py`` lists the
skipped physics checks with their reasons and fails the run if one was skipped without a reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pytest
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.stress import voigt_6_to_full_3x3_stress

from .structures import StructureSet, random_rotation

CHECKS = ("rotation_molecule", "rotation_triclinic_cell", "translation", "permutation",
          "forces_finite_differences", "stress_finite_differences", "supercell_extensive",
          "slab_vacuum_independent", "wrapped_unwrapped", "smooth_at_cutoff", "smooth_at_symmetric_structure",
          "distant_fragments_add_up", "batched_equals_single", "batch_structures_independent")
SKIP_MARK = "physics check does not apply: "  # prefix of every skip reason (the conftest hook finds them)


@dataclass
class PhysicsModel:
    """A model under test.

    ``make``: returns a fresh ASE calculator. Tolerances are absolute (energies scaled by max(1, |E|)):
    ``symmetry`` (eV, eV/Å, eV/Å³) for symmetry and image checks, ``fd_forces`` / ``fd_stress`` for
    finite differences. ``cutoff`` (Å): where the energy must vanish smoothly. ``elements``: atomic
    numbers the structures may use (None: any). ``periodic``: whether cells are supported (else every
    check runs on molecules only). ``skips``: ``{check: reason}`` for the checks that do not apply.
    """

    name: str
    make: Callable[[], Any]
    symmetry: float
    fd_forces: float = 1e-6
    fd_stress: float = 1e-6
    cutoff: float | None = None
    elements: tuple[int, ...] | None = None
    periodic: bool = True
    skips: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        unknown = set(self.skips) - set(CHECKS)
        empty = [name for name, reason in self.skips.items() if not str(reason).strip()]
        if unknown or empty:
            raise ValueError(f"PhysicsModel {self.name}: skips of unknown checks {sorted(unknown)} or "
                             f"without a reason {empty}")


def evaluate(atoms, calc, stress: bool = False) -> dict:
    """Energy, forces (and the 3x3 stress) of a copy of ``atoms`` with ``calc``."""
    atoms = atoms.copy()
    atoms.calc = calc
    out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if stress:
        out["stress"] = voigt_6_to_full_3x3_stress(atoms.get_stress())
    return out


class CalculatorPhysicsTests:
    """Mixin: provide a ``physics_model`` fixture (a :class:`PhysicsModel`), possibly parametrised."""

    # ---- fixtures and helpers ------------------------------------------------------------------------
    @pytest.fixture
    def structures(self, physics_model) -> StructureSet:
        return StructureSet(physics_model.elements)

    @pytest.fixture(autouse=True)
    def _must_compare_something(self, request, physics_model):
        """A physics check either skips with a reason or compares at least one quantity (set up after
        ``physics_model``: a model that is not installed skips before this runs)."""
        request.instance._compared, request.instance._skipped = 0, False
        yield
        if not request.instance._skipped and request.instance._compared == 0:
            pytest.fail(f"{request.node.name} compared nothing: a check that does not apply must skip")

    def applies(self, model: PhysicsModel, check: str) -> None:
        if check in model.skips:
            self._skipped = True
            pytest.skip(SKIP_MARK + f"{model.name}: {model.skips[check]}")

    def close(self, actual, expected, atol: float, what: str = "") -> None:
        """``|actual - expected| <= atol`` elementwise (counted: a check must compare something)."""
        self._compared += 1
        np.testing.assert_allclose(actual, expected, atol=atol, rtol=0, err_msg=what)

    def close_energy(self, actual: float, expected: float, tol: float, scale: float = 1.0) -> None:
        self._compared += 1
        bound = tol * max(1.0, abs(expected)) * scale
        assert abs(actual - expected) < bound, f"energy {actual} vs {expected}: off by more than {bound:.3g}"

    def systems(self, model: PhysicsModel, structures: StructureSet) -> list:
        """A molecule and (for periodic models) a triclinic cell smaller than the cutoff."""
        return [structures.molecule()] + ([structures.cell()] if model.periodic else [])

    # ---- symmetry ------------------------------------------------------------------------------------
    def test_rotation_molecule(self, physics_model, structures):
        self.applies(physics_model, "rotation_molecule")
        atoms, rotation, tol = structures.molecule(), random_rotation(1), physics_model.symmetry
        ref = evaluate(atoms, physics_model.make())
        rotated = atoms.copy()
        rotated.positions = atoms.positions @ rotation.T
        out = evaluate(rotated, physics_model.make())
        self.close_energy(out["energy"], ref["energy"], tol)
        self.close(out["forces"], ref["forces"] @ rotation.T, tol, "forces rotate with the molecule")

    def test_rotation_triclinic_cell(self, physics_model, structures):
        self.applies(physics_model, "rotation_triclinic_cell")
        atoms, rotation, tol = structures.cell(), random_rotation(2), physics_model.symmetry
        ref = evaluate(atoms, physics_model.make(), stress=True)
        rotated = atoms.copy()
        rotated.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
        rotated.positions = atoms.positions @ rotation.T
        out = evaluate(rotated, physics_model.make(), stress=True)
        self.close_energy(out["energy"], ref["energy"], tol)
        self.close(out["forces"], ref["forces"] @ rotation.T, tol, "forces rotate with the cell")
        self.close(out["stress"], rotation @ ref["stress"] @ rotation.T, tol, "stress rotates as a tensor")

    def test_translation(self, physics_model, structures):
        self.applies(physics_model, "translation")
        for atoms in self.systems(physics_model, structures):
            ref = evaluate(atoms, physics_model.make())
            moved = atoms.copy()
            moved.positions += np.array([1.3, -2.1, 0.7])
            out = evaluate(moved, physics_model.make())
            self.close_energy(out["energy"], ref["energy"], physics_model.symmetry)
            self.close(out["forces"], ref["forces"], physics_model.symmetry, "forces after a translation")

    def test_permutation(self, physics_model, structures):
        self.applies(physics_model, "permutation")
        for atoms in self.systems(physics_model, structures):
            perm = np.random.default_rng(3).permutation(len(atoms))
            ref = evaluate(atoms, physics_model.make())
            out = evaluate(atoms[perm], physics_model.make())
            self.close_energy(out["energy"], ref["energy"], physics_model.symmetry)
            self.close(out["forces"], ref["forces"][perm], physics_model.symmetry, "forces follow the atoms")

    # ---- derivatives -----------------------------------------------------------------------------------
    def test_forces_finite_differences(self, physics_model, structures):
        self.applies(physics_model, "forces_finite_differences")
        for atoms in self.systems(physics_model, structures):
            atoms.calc = physics_model.make()
            numerical = calculate_numerical_forces(atoms, eps=1e-4)
            self.close(atoms.get_forces(), numerical, physics_model.fd_forces, "forces = -dE/dx")

    def test_stress_finite_differences(self, physics_model, structures):
        self.applies(physics_model, "stress_finite_differences")
        atoms = structures.cell()  # heights ~3 Å < cutoff: images matter
        atoms.calc = physics_model.make()
        numerical = calculate_numerical_stress(atoms, eps=1e-5)
        self.close(atoms.get_stress(), numerical, physics_model.fd_stress, "stress = dE/dstrain / V")

    # ---- periodic images -------------------------------------------------------------------------------
    def test_supercell_extensive(self, physics_model, structures):
        self.applies(physics_model, "supercell_extensive")
        atoms, tol = structures.cell(), physics_model.symmetry
        ref = evaluate(atoms, physics_model.make(), stress=True)
        out = evaluate(atoms.repeat((2, 1, 3)), physics_model.make(), stress=True)
        self.close_energy(out["energy"], 6 * ref["energy"], tol, scale=6)
        self.close(out["forces"], np.tile(ref["forces"], (6, 1)), tol * 6, "supercell forces")
        self.close(out["stress"], ref["stress"], tol * 6, "supercell stress")

    def test_slab_vacuum_independent(self, physics_model, structures):
        self.applies(physics_model, "slab_vacuum_independent")
        ref = evaluate(structures.slab(vacuum=8.0), physics_model.make())
        for vacuum in (12.0, 30.0):
            out = evaluate(structures.slab(vacuum=vacuum), physics_model.make())
            self.close_energy(out["energy"], ref["energy"], physics_model.symmetry)
            self.close(out["forces"], ref["forces"], physics_model.symmetry, f"slab forces, vacuum {vacuum}")

    def test_wrapped_unwrapped(self, physics_model, structures):
        self.applies(physics_model, "wrapped_unwrapped")
        for atoms in (structures.cell(), structures.slab()):
            unwrapped = atoms.copy()
            shifts = np.random.default_rng(4).integers(-2, 3, size=(len(atoms), 3)) * atoms.pbc
            unwrapped.positions += shifts @ atoms.cell.array
            ref = evaluate(atoms, physics_model.make())
            out = evaluate(unwrapped, physics_model.make())
            self.close_energy(out["energy"], ref["energy"], physics_model.symmetry)
            self.close(out["forces"], ref["forces"], physics_model.symmetry, "forces of unwrapped positions")

    # ---- locality ------------------------------------------------------------------------------------
    def test_smooth_at_cutoff(self, physics_model, structures):
        """Energy of a dimer is continuous through the cutoff and the force goes to zero there."""
        self.applies(physics_model, "smooth_at_cutoff")
        rc, tol, calc = physics_model.cutoff, physics_model.symmetry, physics_model.make()
        far = evaluate(structures.dimer(rc + 0.5), calc)
        for delta in (1e-2, 1e-3):
            inside = evaluate(structures.dimer(rc - delta), calc)
            # E ~ (rc - r)^2 near the cutoff (cosine envelope): continuity with a vanishing slope.
            self.close(inside["energy"], far["energy"], 50 * delta**2 + tol, f"energy at rc - {delta}")
            self.close(inside["forces"], 0.0, 50 * delta + tol, f"force at rc - {delta}")
        self.close(evaluate(structures.dimer(rc), calc)["energy"], far["energy"], tol, "energy at rc")

    def test_smooth_at_symmetric_structure(self, physics_model, structures):
        """Near a perfect lattice (forces zero by symmetry) the energy is quadratic in the displacement.

        A norm like sqrt(|v|² + tiny) makes it grow like |δ| instead: a cusp that breaks MD started
        from a crystal and phonons. E(2δ) - E(0) must be 4 (E(δ) - E(0)).
        """
        self.applies(physics_model, "smooth_at_symmetric_structure")
        crystal = structures.crystal()
        direction = np.random.default_rng(5).normal(size=crystal.positions.shape)
        direction /= np.linalg.norm(direction)
        calc = physics_model.make()
        self.close(evaluate(crystal, calc)["forces"], 0.0, 1e-10, "forces on a perfect lattice")
        energies = []
        for delta in (0.0, 0.01, 0.02):
            displaced = crystal.copy()
            displaced.positions += delta * direction
            energies.append(evaluate(displaced, calc)["energy"])
        ratio = (energies[2] - energies[0]) / (energies[1] - energies[0])
        self._compared += 1
        assert 3.6 < ratio < 4.4, f"E(2δ)-E0 = {ratio:.2f} x (E(δ)-E0), expected 4 (quadratic)"

    def test_distant_fragments_add_up(self, physics_model, structures):
        self.applies(physics_model, "distant_fragments_add_up")
        a, b = structures.molecule(seed=1), structures.fragment()
        b.positions += [(physics_model.cutoff or 5.0) + 12.0, 0, 0]
        calc, tol = physics_model.make(), physics_model.symmetry
        ea, eb = evaluate(a, calc), evaluate(b, calc)
        both = evaluate(a + b, calc)
        self.close_energy(both["energy"], ea["energy"] + eb["energy"], 2 * tol)
        alone = np.vstack([ea["forces"], eb["forces"]])
        self.close(both["forces"], alone, tol, "forces of separate fragments")

    # ---- batches -------------------------------------------------------------------------------------
    def _batch(self, model: PhysicsModel, structures: StructureSet) -> tuple[Any, list]:
        calc = model.make()
        if not hasattr(calc, "batch_calculate"):
            self._skipped = True
            pytest.skip(SKIP_MARK + f"{model.name}: no batched evaluation (batch_calculate)")
        images = [structures.molecule(), structures.fragment()]
        if model.periodic:
            images += [structures.cell(), structures.slab()]
        return calc, images

    def test_batched_equals_single(self, physics_model, structures):
        """One batched call gives each structure what it gets alone (energy, forces, stress)."""
        self.applies(physics_model, "batched_equals_single")
        calc, images = self._batch(physics_model, structures)
        props = ("energy", "forces", "stress") if physics_model.periodic else ("energy", "forces")
        batched = calc.batch_calculate(images, props)
        tol = physics_model.symmetry
        for k, atoms in enumerate(images):
            single = evaluate(atoms, physics_model.make(), stress=atoms.pbc.all())
            self.close_energy(batched[k]["energy"], single["energy"], tol)
            self.close(batched[k]["forces"], single["forces"], tol, f"forces of structure {k} in a batch")
            if atoms.pbc.all():
                self.close(voigt_6_to_full_3x3_stress(batched[k]["stress"]), single["stress"], tol,
                           f"stress of structure {k} in a batch")

    def test_batch_structures_independent(self, physics_model, structures):
        """The gradient of a batch's energy with respect to structure A does not depend on structure B:
        changing B (moving its atoms) leaves A's energy and forces unchanged."""
        self.applies(physics_model, "batch_structures_independent")
        calc, images = self._batch(physics_model, structures)
        a, b = images[0], images[-1]
        moved = b.copy()
        moved.positions += np.random.default_rng(6).normal(0.0, 0.1, b.positions.shape)
        first = calc.batch_calculate([a, b])[0]
        second = calc.batch_calculate([a, moved])[0]
        self.close_energy(second["energy"], first["energy"], physics_model.symmetry)
        self.close(second["forces"], first["forces"], physics_model.symmetry, "forces on A with B changed")
