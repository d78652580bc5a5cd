"""Physics check: float32 results do not depend on where the structure sits.

Positions enter the model relative to a reference (wrapped into the cell along periodic directions,
relative to the centroid along open ones) and edge vectors are float64 differences, all before the
cast to float32. A molecule shifted by 1e6 Å and a periodic box whose atoms are unwrapped by up to
1,000 cells must give the forces (and stress) of the structure at the origin, to float32 precision.
Before this was done, the former gave force errors of ~1.8 eV/Å and the latter ~0.03 eV/Å.
"""

import numpy as np
import pytest

from mlff_calc import StudentCalculator, StudentForceField
from mlff_calc.model.student import randomize_parameters
from mlff_calc.testing.structures import organic_molecule, slab, small_triclinic_cell

# float32 precision of forces of order 1 eV/Å, as two evaluations at the origin already differ in
# their last bits after round-off (a wrapped coordinate is rounded differently).
ATOL_F32 = 5e-5


@pytest.fixture(scope="module")
def model():
    model = randomize_parameters(StudentForceField(hidden_dim=16, num_interactions=2, num_rbf=8), std=0.5, seed=4)
    model.scale.fill_(10.0)  # forces of a few eV/Å, as in a trained model, so that errors show
    return model


def _evaluate(model, atoms, dtype="float32", stress=False):
    atoms = atoms.copy()
    atoms.calc = StudentCalculator(model, device="cpu", dtype=dtype)
    out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if stress:
        out["stress"] = atoms.get_stress()
    return out


def _unwrapped_box(cells: int = 1000, seed: int = 0):
    """A periodic box and a copy whose atoms each sit up to ``cells`` lattice vectors away."""
    atoms = small_triclinic_cell().repeat((2, 2, 2))
    atoms.rattle(0.05, seed=seed)
    moved = atoms.copy()
    jumps = np.random.default_rng(seed).integers(-cells, cells + 1, size=(len(atoms), 3))
    jumps[0] = cells  # at least one atom the full distance away
    moved.positions = atoms.positions + jumps @ atoms.cell.array
    return atoms, moved


def test_molecule_shifted_by_1e6_angstrom(model):
    atoms = organic_molecule()
    ref = _evaluate(model, atoms)
    far = atoms.copy()
    far.positions += np.array([1.0e6, -0.7e6, 0.3e6])
    out = _evaluate(model, far)
    assert np.abs(ref["forces"]).max() > 0.5  # forces large enough for an error to show
    np.testing.assert_allclose(out["forces"], ref["forces"], atol=ATOL_F32, rtol=0)
    assert abs(out["energy"] - ref["energy"]) < ATOL_F32 * max(1.0, abs(ref["energy"]))


def test_periodic_box_unwrapped_by_1000_cells(model):
    atoms, moved = _unwrapped_box(1000)
    assert np.abs(moved.positions).max() > 1000 * 2.9  # really far out
    ref = _evaluate(model, atoms, stress=True)
    out = _evaluate(model, moved, stress=True)
    assert np.abs(ref["forces"]).max() > 0.5
    np.testing.assert_allclose(out["forces"], ref["forces"], atol=ATOL_F32, rtol=0)
    np.testing.assert_allclose(out["stress"], ref["stress"], atol=ATOL_F32, rtol=0)
    assert abs(out["energy"] - ref["energy"]) < ATOL_F32 * max(1.0, abs(ref["energy"]))


def test_slab_far_along_open_and_periodic_directions(model):
    atoms = slab()
    far = atoms.copy()
    far.positions += 700 * atoms.cell.array[0] - 300 * atoms.cell.array[1] + [0.0, 0.0, 2.0e5]
    ref, out = _evaluate(model, atoms), _evaluate(model, far)
    np.testing.assert_allclose(out["forces"], ref["forces"], atol=ATOL_F32, rtol=0)


def test_batch_and_float64_agree_far_away(model):
    """batch_calculate goes through the same reference; float64 matches float32 there too."""
    atoms, moved = _unwrapped_box(1000, seed=1)
    molecule = organic_molecule()
    far = molecule.copy()
    far.positions += 1.0e6
    calc = StudentCalculator(model, device="cpu", dtype="float32")
    batched = calc.batch_calculate([moved, far], properties=("energy", "forces", "stress"))
    for structure, got in zip((atoms, molecule), batched):
        ref = _evaluate(model, structure, dtype="float64")
        np.testing.assert_allclose(got["forces"], ref["forces"], atol=ATOL_F32, rtol=0)
