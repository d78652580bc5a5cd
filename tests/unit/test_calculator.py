"""StudentCalculator behaviour: skin, batches, properties, devices/dtypes, bad input."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError
from ase.stress import voigt_6_to_full_3x3_stress

from mlff_calc import StudentCalculator, StudentForceField
from mlff_calc import _keys as K
from mlff_calc.model.student import randomize_parameters
from mlff_calc.testing.structures import organic_molecule, slab, small_triclinic_cell


@pytest.fixture(scope="module")
def model():
    m = StudentForceField(hidden_dim=16, num_interactions=2, num_rbf=8)
    return randomize_parameters(m, seed=1)


def test_properties(model):
    atoms = small_triclinic_cell()
    atoms.calc = StudentCalculator(model, device="cpu", dtype="float64")
    e = atoms.get_potential_energy()
    assert atoms.get_potential_energy(force_consistent=True) == e
    assert np.isclose(atoms.get_potential_energies().sum(), e, atol=1e-10)
    assert atoms.get_forces().shape == (len(atoms), 3)
    assert atoms.get_stress().shape == (6,)
    np.testing.assert_allclose(atoms.get_forces().sum(0), 0.0, atol=1e-10)  # Newton's third law


def test_stress_needs_full_pbc(model):
    for atoms in (organic_molecule(), slab()):
        atoms.calc = StudentCalculator(model, device="cpu")
        atoms.get_forces()
        with pytest.raises(PropertyNotImplementedError, match="periodic"):
            atoms.get_stress()


def test_float32_close_to_float64_and_dtypes_are_local(model):
    atoms = small_triclinic_cell()
    out = {}
    for dtype in ("float32", "float64"):
        atoms.calc = StudentCalculator(model, device="cpu", dtype=dtype)
        out[dtype] = (atoms.get_potential_energy(), atoms.get_forces())
        assert torch.get_default_dtype() == torch.float32
    assert abs(out["float32"][0] - out["float64"][0]) < 1e-4
    np.testing.assert_allclose(out["float32"][1], out["float64"][1], atol=1e-4)
    # The model handed in is not modified by the calculator.
    assert next(model.parameters()).dtype == torch.float32


def test_bad_device_and_dtype(model):
    with pytest.raises(ValueError, match="dtype"):
        StudentCalculator(model, device="cpu", dtype="float16")
    with pytest.raises(ValueError, match="device"):
        StudentCalculator(model, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            StudentCalculator(model, device="cuda")
    assert StudentCalculator(model, device="auto").device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def _md_like_path(atoms, steps, seed=0):
    """Small random moves every step, a cell strain every 10th step (as an NPT run would)."""
    rng = np.random.default_rng(seed)
    for step in range(steps):
        atoms.positions += rng.normal(0, 0.03, atoms.positions.shape)
        if step % 10 == 9 and atoms.pbc.all():
            strain = np.eye(3) + rng.normal(0, 0.004, (3, 3))
            atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
        yield atoms


@pytest.mark.parametrize("build", [small_triclinic_cell, organic_molecule])
def test_skin_equals_rebuild_every_step(model, build):
    atoms = build().repeat((2, 2, 1)) if build is small_triclinic_cell else build()
    with_skin = StudentCalculator(model, device="cpu", dtype="float64", skin=1.0)
    periodic = atoms.pbc.all()
    for atoms in _md_like_path(atoms, 40):
        a1, a2 = atoms.copy(), atoms.copy()
        a1.calc = with_skin
        a2.calc = StudentCalculator(model, device="cpu", dtype="float64", skin=0.0)  # fresh list each step
        assert a1.get_potential_energy() == a2.get_potential_energy()
        assert np.array_equal(a1.get_forces(), a2.get_forces())
        if periodic:
            assert np.array_equal(a1.get_stress(), a2.get_stress())
    n_cell_changes = 4 if periodic else 0
    # 0.03 Å random steps: the 1 Å skin (0.5 Å displacement) lasts many steps between rebuilds.
    assert with_skin.converter.n_builds < 40 // 2 + n_cell_changes


def test_batch_equals_one_by_one(model):
    structures = [organic_molecule(), small_triclinic_cell(), slab(), organic_molecule(seed=3)[:5]]
    m = model.double()
    singles = [m({K.ATOMIC_NUMBERS: a.numbers, K.POSITIONS: torch.tensor(a.positions),
                  K.CELL: torch.tensor(a.cell.array), K.PBC: torch.tensor(a.pbc)}, compute_stress=True)
               for a in structures]
    batch = {
        K.ATOMIC_NUMBERS: np.concatenate([a.numbers for a in structures]),
        K.POSITIONS: torch.tensor(np.concatenate([a.positions for a in structures])),
        K.CELL: torch.tensor(np.stack([a.cell.array for a in structures])),
        K.PBC: torch.tensor(np.stack([a.pbc for a in structures])),
        K.BATCH: torch.tensor(np.concatenate([[b] * len(a) for b, a in enumerate(structures)])),
    }
    out = m(batch, compute_stress=True)
    torch.testing.assert_close(out[K.ENERGY], torch.cat([s[K.ENERGY] for s in singles]), rtol=0, atol=1e-12)
    torch.testing.assert_close(out[K.FORCES], torch.cat([s[K.FORCES] for s in singles]), rtol=0, atol=1e-12)
    torch.testing.assert_close(out[K.STRESS], torch.cat([s[K.STRESS] for s in singles]), rtol=0, atol=1e-12,
                               equal_nan=True)
    assert torch.isnan(out[K.STRESS][0]).all() and torch.isfinite(out[K.STRESS][1]).all()


# ---- bad input: each one its own clear error ---------------------------------------------------------
def _calc(model, **kw):
    return StudentCalculator(model, device="cpu", **kw)


def test_empty_structure(model):
    with pytest.raises(ValueError, match="no atoms"):
        _calc(model).get_potential_energy(Atoms())


def test_non_finite_positions(model):
    atoms = organic_molecule()
    atoms.positions[4, 1] = np.nan
    with pytest.raises(ValueError, match="atom 4"):
        _calc(model).get_potential_energy(atoms)
    atoms.positions[4, 1] = np.inf
    with pytest.raises(ValueError, match="not finite"):
        _calc(model).get_potential_energy(atoms)


def test_non_finite_cell(model):
    atoms = small_triclinic_cell()
    atoms.cell[1, 1] = np.nan
    with pytest.raises(ValueError, match="cell.*not finite"):
        _calc(model).get_potential_energy(atoms)


@pytest.mark.parametrize("z", [0, 119, -1])
def test_atomic_number_out_of_range(model, z):
    atoms = organic_molecule()
    numbers = atoms.numbers.copy()
    numbers[2] = z
    atoms.numbers = numbers
    with pytest.raises(ValueError, match=rf"atom 2 has atomic number {z}, outside the range 1\.\.118"):
        _calc(model).get_potential_energy(atoms)


def test_element_not_seen_in_training(model):
    trained = StudentForceField(hidden_dim=16, num_interactions=2, num_rbf=8)
    trained.metadata["elements"] = [1, 6, 8]
    atoms = organic_molecule()
    _calc(trained).get_potential_energy(atoms)  # H, C, O: fine
    atoms.numbers[5] = 17
    with pytest.raises(ValueError, match=r"atom 5 is Cl \(Z=17\).*never saw in training.*H, C, O"):
        _calc(trained).get_potential_energy(atoms)


def test_degenerate_cell_with_pbc(model):
    atoms = organic_molecule()
    atoms.pbc = True  # zero cell, periodic
    with pytest.raises(ValueError, match="degenerate"):
        _calc(model).get_potential_energy(atoms)
    flat = small_triclinic_cell()
    flat.cell[2] = flat.cell[0] + flat.cell[1]  # coplanar vectors
    with pytest.raises(ValueError, match="degenerate"):
        _calc(model).get_potential_energy(flat)


def test_overlapping_atoms(model):
    atoms = organic_molecule()
    atoms.positions[7] = atoms.positions[3] + [0.05, 0, 0]
    with pytest.raises(ValueError, match=r"atoms 3 \(H\) and 7 \(H\) are 0\.0500 Å apart"):
        _calc(model).get_potential_energy(atoms)
    # An atom on top of another one's periodic image.
    cell = small_triclinic_cell()
    cell.positions[1] = cell.positions[0] + cell.cell[2] + [0.0, 0.0, 0.03]
    with pytest.raises(ValueError, match="periodic image"):
        _calc(model).get_potential_energy(cell)


def test_batch_calculate_equals_one_by_one(model):
    images = [organic_molecule(), small_triclinic_cell(), slab(), small_triclinic_cell(seed=2).repeat((1, 2, 1))]
    calc = StudentCalculator(model, device="cpu", dtype="float64")
    batched = calc.batch_calculate(images, properties=("energy", "forces", "stress"), max_atoms=20)
    for atoms, got in zip(images, batched):
        atoms.calc = StudentCalculator(model, device="cpu", dtype="float64")
        assert abs(got["energy"] - atoms.get_potential_energy()) < 1e-10
        np.testing.assert_allclose(got["forces"], atoms.get_forces(), atol=1e-10, rtol=0)
        np.testing.assert_allclose(got["energies"], atoms.get_potential_energies(), atol=1e-10, rtol=0)
        if atoms.pbc.all():
            np.testing.assert_allclose(got["stress"], atoms.get_stress(), atol=1e-10, rtol=0)
        else:
            assert "stress" not in got
    bad = organic_molecule()
    bad.positions[2] = bad.positions[1]
    with pytest.raises(ValueError, match="overlapping"):
        calc.batch_calculate([organic_molecule(), bad])


def test_ase_caching_contract(model):
    """The cheap record of the last structure behaves like ASE's ``calc.atoms = atoms.copy()``: every
    change (positions, numbers, cell, pbc, an added array) recomputes, nothing else does, ``calc.atoms``
    is an independent copy (info, constraints included), and edits to it count as ASE's would."""
    from ase.constraints import FixAtoms

    atoms = organic_molecule()
    atoms.info["tag"] = "kept"
    atoms.set_constraint(FixAtoms(indices=[0]))
    calc = StudentCalculator(model, device="cpu", dtype="float64")
    atoms.calc = calc
    assert calc.atoms is None and calc.get_property("energy", atoms, allow_calculation=False) is None
    e0 = atoms.get_potential_energy()
    calls = []
    original = calc._compute
    calc._compute = lambda *a, **k: (calls.append(1), original(*a, **k))[1]
    f0 = atoms.get_forces()  # computed with the energy: a cache hit
    assert calls == [] and calc.check_state(atoms) == []
    record = calc.atoms
    assert record is not atoms and record.info == {"tag": "kept"} and len(record.constraints) == 1
    np.testing.assert_array_equal(record.positions, atoms.positions)
    atoms.positions[1, 0] += 1e-9  # the smallest change recomputes
    assert calc.check_state(atoms) == ["positions"]
    assert atoms.get_potential_energy() != e0 and calls == [1]
    np.testing.assert_array_equal(record.positions[1], atoms.positions[1] - [1e-9, 0, 0])  # a copy
    atoms.set_initial_charges(np.zeros(len(atoms)))
    atoms.cell = [10.0, 10.0, 10.0]
    assert set(calc.check_state(atoms)) == {"cell", "initial_charges"}
    atoms.get_forces()
    assert calls == [1, 1]
    calc.atoms.positions[0] += 0.1  # editing the record, as in ASE, makes the next call a recomputation
    assert calc.check_state(atoms) == ["positions"]
    # the same numbers as a fresh calculator (no state carried over)
    fresh = atoms.copy()
    fresh.calc = StudentCalculator(model, device="cpu", dtype="float64")
    np.testing.assert_array_equal(atoms.get_forces(), fresh.get_forces())
    assert not np.array_equal(f0, fresh.get_forces())
    with pytest.raises(PropertyNotImplementedError, match="magmom"):
        calc.get_property("magmom", atoms)
