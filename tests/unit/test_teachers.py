"""Teachers: registry, option checking, compute_labels, and each real teacher on a molecule and a cell."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms

from mlff_calc.teachers import TEACHERS, TeacherError, compute_labels, load_teacher, teacher_spec
from mlff_calc.teachers import orb as orb_teacher


def rattled_cu(repeat=1, seed=0) -> Atoms:
    atoms = bulk("Cu", cubic=True).repeat(repeat)
    atoms.rattle(0.05, seed=seed)
    return atoms


class ScriptedCalculator(Calculator):
    """EMT whose results can be spoiled: NaN forces, an exception, or no stress."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, spoil=None, with_stress=True):
        super().__init__()
        self.spoil = spoil
        if not with_stress:
            self.implemented_properties = ["energy", "free_energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if self.spoil == "raise":
            raise RuntimeError("SCF exploded")
        emt = EMT()
        emt.calculate(self.atoms, ["energy", "forces", "stress"], all_changes)
        self.results = dict(emt.results)
        if self.spoil == "nan":
            self.results["forces"][1, 2] = np.nan
        if self.spoil == "inf-energy":
            self.results["energy"] = np.inf


# ---- registry and options ------------------------------------------------------------------------------


def test_registry_names_and_unknown_name():
    assert {"emt", "orb-v2", "gfn2-xtb", "sevennet-0"} <= set(TEACHERS)
    with pytest.raises(ValueError, match="unknown teacher 'nope'") as info:
        load_teacher("nope")
    for name in ("emt", "orb-v2", "gfn2-xtb", "sevennet-0", "package.module:callable"):
        assert name in str(info.value)


@pytest.mark.parametrize(
    "name, options, words",
    [
        ("emt", {"weights": "x.ckpt"}, ["'weights'", "asap_cutoff"]),
        ("gfn2-xtb", {"acuracy": 1.0}, ["'acuracy'", "did you mean 'accuracy'"]),
        ("gfn2-xtb", {"method": "GFN1-xTB"}, ["'method'"]),
        ("orb-v2", {"cutoff": 5.0}, ["'cutoff'", "weights"]),
        ("orb-v2", {"precision": "float16"}, ["precision='float16'", "float64"]),
        ("orb-v2", {"device": "tpu"}, ["device='tpu'"]),
        ("sevennet-0", {"dtype": "float64"}, ["'dtype'", "device"]),
    ],
)
def test_bad_option_is_a_value_error_naming_it(name, options, words):
    with pytest.raises(ValueError) as info:
        load_teacher(name, **options)
    for word in words:
        assert word in str(info.value)


def test_teacher_spec_is_json_safe():
    spec = teacher_spec("orb-v2", {"weights": "/a/b.ckpt", "device": "cpu", "x": (1, 2)})
    assert spec == {"name": "orb-v2", "options": {"device": "cpu", "weights": "/a/b.ckpt", "x": "(1, 2)"}}


# ---- package.module:callable ---------------------------------------------------------------------------


def test_callable_teacher_from_module_and_from_cwd(tmp_path, monkeypatch):
    assert isinstance(load_teacher("ase.calculators.emt:EMT"), EMT)
    (tmp_path / "my_teacher_mod.py").write_text(
        "from ase.calculators.emt import EMT\n"
        "def make(asap_cutoff=False):\n    return EMT(asap_cutoff=asap_cutoff)\n"
        "def not_a_calc():\n    return 42\n"
        "VALUE = 3\n"
    )
    monkeypatch.chdir(tmp_path)  # a module next to the user's files is found without installing it
    monkeypatch.delitem(sys.modules, "my_teacher_mod", raising=False)
    calc = load_teacher("my_teacher_mod:make", asap_cutoff=True)
    assert isinstance(calc, EMT) and calc.parameters.asap_cutoff is True
    with pytest.raises(ValueError, match="'bogus'"):
        load_teacher("my_teacher_mod:make", bogus=1)
    with pytest.raises(ValueError, match="returned int, not an ase Calculator"):
        load_teacher("my_teacher_mod:not_a_calc")
    with pytest.raises(ValueError, match="not callable"):
        load_teacher("my_teacher_mod:VALUE")
    with pytest.raises(ValueError, match="has no attribute 'missing'"):
        load_teacher("my_teacher_mod:missing")
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        load_teacher("no_such_module_xyz:make")
    with pytest.raises(ValueError, match="expected 'package.module:callable'"):
        load_teacher("my_teacher_mod:")


# ---- compute_labels ------------------------------------------------------------------------------------


def test_compute_labels_periodic_cell_matches_emt():
    atoms = rattled_cu(2)
    labels = compute_labels(EMT(), atoms)
    ref = atoms.copy()
    ref.calc = EMT()
    assert isinstance(labels["energy"], float)
    assert labels["energy"] == pytest.approx(ref.get_potential_energy(), abs=1e-10)
    assert labels["forces"].shape == (32, 3) and labels["forces"].dtype == np.float64
    np.testing.assert_allclose(labels["forces"], ref.get_forces(), atol=1e-10)
    assert labels["stress"].shape == (3, 3)
    np.testing.assert_allclose(labels["stress"], labels["stress"].T, atol=1e-12)  # Voigt -> full is symmetric
    np.testing.assert_allclose(labels["stress"], ref.get_stress(voigt=False), atol=1e-12)
    assert atoms.calc is None  # the caller's atoms are not touched


def test_compute_labels_no_stress_unless_fully_periodic():
    slab = fcc111("Cu", (2, 2, 2), vacuum=4.0)
    cluster = Atoms("Cu4", positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [0, 0, 2.5]])
    for atoms in (slab, cluster):
        labels = compute_labels(EMT(), atoms)
        assert labels["stress"] is None and np.isfinite(labels["forces"]).all()
    # A periodic cell and a teacher without stress: None too.
    assert compute_labels(ScriptedCalculator(with_stress=False), rattled_cu())["stress"] is None


def test_compute_labels_ignores_constraints():
    atoms = rattled_cu()
    atoms.set_constraint(FixAtoms(indices=[0]))
    forces = compute_labels(EMT(), atoms)["forces"]
    assert np.abs(forces[0]).max() > 1e-3  # ASE's get_forces() would have zeroed it
    assert len(atoms.constraints) == 1


@pytest.mark.parametrize("spoil, reason", [("raise", "RuntimeError: SCF exploded"),
                                           ("nan", "non-finite forces on atoms \\[1\\]"),
                                           ("inf-energy", "non-finite")])
def test_compute_labels_failures_raise_teacher_error(spoil, reason):
    with pytest.raises(TeacherError, match=reason) as info:
        compute_labels(ScriptedCalculator(spoil), rattled_cu())
    assert isinstance(info.value, RuntimeError)


# ---- gfn2-xtb (tblite) ---------------------------------------------------------------------------------


@pytest.mark.teacher
def test_gfn2_xtb_molecule_and_periodic_cell():
    pytest.importorskip("tblite.ase")
    calc = load_teacher("gfn2-xtb")
    assert calc.parameters.verbosity == 0 and calc.parameters.method == "GFN2-xTB"
    water = molecule("H2O")
    labels = compute_labels(calc, water)
    assert labels["energy"] < -100 and labels["forces"].shape == (3, 3) and labels["stress"] is None
    # Forces are -dE/dx: check one component by central differences.
    h, (i, k) = 1e-4, (1, 1)
    energies = []
    for sign in (1, -1):
        moved = water.copy()
        moved.positions[i, k] += sign * h
        energies.append(compute_labels(calc, moved)["energy"])
    assert labels["forces"][i, k] == pytest.approx(-(energies[0] - energies[1]) / (2 * h), abs=2e-3)

    silicon = bulk("Si")  # 2-atom primitive cell
    silicon.rattle(0.02, seed=1)
    labels = compute_labels(calc, silicon)
    assert labels["forces"].shape == (2, 3) and labels["stress"].shape == (3, 3)
    assert np.isfinite(labels["stress"]).all()


@pytest.mark.teacher
def test_gfn2_xtb_scf_failure_is_an_exception():
    pytest.importorskip("tblite.ase")
    with pytest.raises(TeacherError, match="SCF not converged"):
        compute_labels(load_teacher("gfn2-xtb", max_iterations=1), molecule("H2O"))


# ---- orb-v2 (random weights: the real ones cannot be downloaded here) ---------------------------------


@pytest.fixture(scope="module")
def orb_weights(orb_random_weights):
    return orb_random_weights  # tests/conftest.py: built once per session, shared with test_physics


@pytest.fixture(scope="module")
def orb(orb_random_teacher):
    return orb_random_teacher


@pytest.mark.teacher
def test_orb_labels_molecule_and_cell(orb):
    labels = compute_labels(orb, molecule("CH4"))
    assert labels["forces"].shape == (5, 3) and np.isfinite(labels["forces"]).all()
    assert labels["stress"] is None  # Orb's stress head answers for molecules too; we drop it
    labels = compute_labels(orb, rattled_cu())
    assert np.isfinite(labels["energy"]) and labels["forces"].shape == (4, 3)
    assert labels["stress"].shape == (3, 3) and np.isfinite(labels["stress"]).all()


@pytest.mark.teacher
def test_orb_mixed_pbc_equals_vacuum_padded_cell(orb):
    slab = fcc111("Cu", (2, 2, 2), vacuum=4.0)
    slab.rattle(0.05, seed=2)  # no exact ties among neighbour distances (Orb keeps the 20 nearest)
    padded = slab.copy()
    padded.pbc = True
    padded.cell[2] = [0.0, 0.0, 40.0]
    got, ref = compute_labels(orb, slab), compute_labels(orb, padded)
    assert got["energy"] == pytest.approx(ref["energy"], abs=1e-4)
    np.testing.assert_allclose(got["forces"], ref["forces"], atol=1e-4)
    assert got["stress"] is None


@pytest.mark.teacher
def test_orb_leaves_torch_global_state_alone(orb_weights):
    before = torch.get_default_dtype(), torch.get_float32_matmul_precision()
    calc = load_teacher("orb-v2", weights=orb_weights, device="cpu", precision="float64")
    assert (torch.get_default_dtype(), torch.get_float32_matmul_precision()) == before
    assert np.isfinite(compute_labels(calc, rattled_cu())["energy"])
    assert (torch.get_default_dtype(), torch.get_float32_matmul_precision()) == before


def test_orb_weights_errors_name_the_option(tmp_path, monkeypatch):
    pytest.importorskip("orb_models")
    with pytest.raises(ValueError, match="weights file not found.*option 'weights'"):
        load_teacher("orb-v2", weights=str(tmp_path / "missing.ckpt"))

    def offline(url):
        raise ConnectionError("Failed to resolve host")

    monkeypatch.setattr(orb_teacher, "_download", offline)
    with pytest.raises(ValueError) as info:
        load_teacher("orb-v2")
    assert "could not download Orb-v2 weights" in str(info.value)
    assert "weights=PATH" in str(info.value) and "--teacher-weights" in str(info.value)

    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"this is not a torch checkpoint")
    with pytest.raises(ValueError, match="could not load Orb-v2 weights.*option 'weights'"):
        load_teacher("orb-v2", weights=str(garbage))


def test_orb_new_api_model_and_adapter(tmp_path, monkeypatch):
    """orb-models >= 0.6: ``orb_v2()`` returns ``(model, adapter)`` and the calculator takes the adapter."""
    pretrained = pytest.importorskip("orb_models.forcefield.pretrained")
    seen = {}

    def orb_v2(weights_path, device=None, precision="float32-high", compile=None):
        seen.update(weights_path=weights_path, compile=compile)
        return torch.nn.Linear(1, 1), "the-adapter"

    class FakeORBCalculator(Calculator):
        def __init__(self, model, atoms_adapter, *, device=None):
            super().__init__()
            self.model = model
            seen.update(adapter=atoms_adapter, device=device)

    fake = types.ModuleType("orb_models.forcefield.inference.calculator")
    fake.ORBCalculator = FakeORBCalculator
    monkeypatch.setattr(pretrained, "orb_v2", orb_v2)
    monkeypatch.setitem(sys.modules, "orb_models.forcefield.inference", types.ModuleType("inference"))
    monkeypatch.setitem(sys.modules, "orb_models.forcefield.inference.calculator", fake)
    weights = tmp_path / "w.ckpt"
    weights.write_bytes(b"")
    calc = load_teacher("orb-v2", weights=str(weights), device="cpu")
    assert isinstance(calc, orb_teacher.OrbTeacher) and isinstance(calc.orb, FakeORBCalculator)
    assert seen == {"weights_path": str(weights), "compile": False, "adapter": "the-adapter", "device": "cpu"}


def test_pad_mixed_pbc_geometry():
    wire = Atoms("Cu2", positions=[[0, 0, 0], [1.3, 0.4, 0.2]], cell=[[2.5, 0, 0], [0, 0, 0], [0, 0, 0]],
                 pbc=[True, False, False])
    padded = orb_teacher.pad_mixed_pbc(wire, gap=12.0)
    assert padded.pbc.all() and padded.get_volume() > 100
    np.testing.assert_allclose(padded.cell[0], wire.cell[0])
    np.testing.assert_allclose(padded.positions, wire.positions)
    cell = padded.cell.array
    assert abs(cell[1] @ cell[0]) < 1e-9 and abs(cell[2] @ cell[0]) < 1e-9 and abs(cell[1] @ cell[2]) < 1e-9
    assert min(np.linalg.norm(cell[1]), np.linalg.norm(cell[2])) >= 12.0
    cell_only = bulk("Cu")
    assert orb_teacher.pad_mixed_pbc(cell_only, 12.0) is cell_only


# ---- sevennet-0 ----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.teacher
def test_sevennet_molecule_and_cell():
    pytest.importorskip("sevenn")
    calc = load_teacher("sevennet-0", device="cpu")
    labels = compute_labels(calc, rattled_cu())
    assert labels["forces"].shape == (4, 3) and labels["stress"].shape == (3, 3)
    assert np.isfinite(labels["stress"]).all()
    labels = compute_labels(calc, molecule("H2O"))
    assert labels["forces"].shape == (3, 3) and labels["stress"] is None


def test_sevennet_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sevenn.calculator", None)  # makes the import fail
    with pytest.raises(ValueError, match=r"pip install 'mlff-calc\[sevennet\]'"):
        load_teacher("sevennet-0", device="cpu")
