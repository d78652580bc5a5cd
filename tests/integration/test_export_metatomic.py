"""The metatomic export: the exported file, run by metatomic-ase, equals StudentCalculator.

Float64 parity to 1e-6 relative on a molecule, a triclinic cell smaller than the cutoff, a slab and
batches; the declared capabilities; domain decomposition (selected atoms); loading in a process where
mlff_calc cannot be imported; clear refusals for an untrained model and a garbage checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("metatomic.torch")
metatomic_ase = pytest.importorskip("metatomic_ase")

from mlff_calc import StudentCalculator, StudentForceField  # noqa: E402
from mlff_calc.cli import main as cli_main  # noqa: E402
from mlff_calc.errors import CheckpointError, InputError  # noqa: E402
from mlff_calc.integrations.metatomic import export_metatomic, to_atomistic_model  # noqa: E402
from mlff_calc.model.student import randomize_parameters  # noqa: E402
from mlff_calc.testing.structures import organic_molecule, slab, small_triclinic_cell  # noqa: E402

# TorchScript (the metatomic file format) is deprecated upstream in favour of torch.export: not our warning.
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning")

ELEMENTS = [1, 6, 8, 14, 29]
RTOL = 1e-6


def _student() -> StudentForceField:
    model = randomize_parameters(StudentForceField(hidden_dim=16, num_interactions=2, num_rbf=8), seed=3)
    with torch.no_grad():  # non-trivial energy head, as after training
        model.scale.fill_(0.7)
        model.shift.fill_(-0.3)
        model.atom_ref[ELEMENTS] = torch.tensor([-13.6, -1027.0, -2041.0, -7.5, -1.2])
    model.metadata = {
        "elements": ELEMENTS,
        "teacher": {"name": "emt", "options": {}},
        "data": {"n_frames": 40, "elements": ELEMENTS},
    }
    return model


@pytest.fixture(scope="module")
def student() -> StudentForceField:
    return _student()


@pytest.fixture(scope="module")
def checkpoint(student, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "student.pt"
    student.save(path)
    return path


@pytest.fixture(scope="module")
def exported(checkpoint):
    """``{dtype: path}`` of the checkpoint exported in float64 and float32."""
    return {
        dtype: export_metatomic(checkpoint, checkpoint.parent / f"student-{dtype}.pt", dtype=dtype)
        for dtype in ("float64", "float32")
    }


def _assert_close(actual, expected, what, rtol=RTOL):
    actual, expected = np.asarray(actual, dtype=float), np.asarray(expected, dtype=float)
    scale = max(float(np.abs(expected).max()), 1e-12)  # relative to the largest component (forces near 0)
    err = float(np.abs(actual - expected).max()) / scale
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:g}"


def _properties(atoms, calc) -> dict:
    atoms = atoms.copy()
    atoms.calc = calc
    out = {
        "energy": atoms.get_potential_energy(),
        "forces": atoms.get_forces(),
        "energies": atoms.get_potential_energies(),
    }
    if atoms.pbc.all():
        out["stress"] = atoms.get_stress()
    return out


@pytest.mark.parametrize(
    "build",
    [organic_molecule, small_triclinic_cell, slab],
    ids=["molecule", "triclinic-below-cutoff", "slab"],
)
def test_parity_float64(build, student, exported):
    atoms = build()
    ours = _properties(atoms, StudentCalculator(student, device="cpu", dtype="float64"))
    theirs = _properties(
        atoms,
        metatomic_ase.MetatomicCalculator(str(exported["float64"]), device="cpu", check_consistency=True),
    )
    assert set(theirs) == set(ours)
    for key in ours:
        _assert_close(theirs[key], ours[key], key)
    if atoms.pbc.all():
        assert np.abs(ours["stress"]).max() > 0


def test_parity_float32(student, exported):
    atoms = small_triclinic_cell()
    ours = _properties(atoms, StudentCalculator(student, device="cpu", dtype="float32"))
    theirs = _properties(atoms, metatomic_ase.MetatomicCalculator(str(exported["float32"]), device="cpu"))
    for key in ours:
        _assert_close(theirs[key], ours[key], key, rtol=1e-4)


@pytest.mark.parametrize("periodic_only", [False, True], ids=["mixed", "periodic-with-stress"])
def test_parity_batch(periodic_only, student, exported):
    if periodic_only:
        images = [small_triclinic_cell(seed=s) for s in range(3)]
        images[2] = images[2].repeat((2, 1, 1))
    else:
        images = [organic_molecule(), small_triclinic_cell(), slab(), organic_molecule(seed=1)]
    calc = metatomic_ase.MetatomicCalculator(str(exported["float64"]), device="cpu")
    theirs = calc.compute_energy(images, compute_forces_and_stresses=True, per_atom=True)
    props = ("energy", "forces", "stress") if periodic_only else ("energy", "forces")
    ours = StudentCalculator(student, device="cpu", dtype="float64").batch_calculate(images, props)
    for b, result in enumerate(ours):
        _assert_close(theirs["energy"][b], result["energy"], f"energy of image {b}")
        _assert_close(theirs["energies"][b], result["energies"], f"per-atom energies of image {b}")
        _assert_close(theirs["forces"][b], result["forces"], f"forces of image {b}")
        if periodic_only:
            stress = np.asarray(theirs["stress"][b]).reshape(3, 3)
            voigt = stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
            _assert_close(voigt, result["stress"], f"stress of image {b}")
    assert ("stress" in theirs) == periodic_only


def test_capabilities_and_metadata(student):
    atomistic = to_atomistic_model(student, dtype="float64")
    caps = atomistic.capabilities()
    assert list(caps.atomic_types) == ELEMENTS
    assert caps.interaction_range == pytest.approx(student.cutoff * student.num_interactions)
    assert caps.length_unit == "angstrom" and caps.dtype == "float64"
    assert list(caps.supported_devices) == ["cuda", "cpu"]
    assert caps.outputs["energy"].unit == "eV" and caps.outputs["energy"].sample_kind == "atom"
    (request,) = atomistic.requested_neighbor_lists()
    assert request.cutoff == pytest.approx(student.cutoff) and request.full_list and request.strict
    meta = atomistic.metadata()
    assert "emt" in meta.name and "PaiNN" in meta.description
    assert json.loads(meta.extra["teacher"])["name"] == "emt"
    assert json.loads(meta.extra["training_data"])["n_frames"] == 40
    assert meta.extra["mlff_calc_version"] and "arXiv:2102.03150" in meta.references["architecture"][0]
    assert to_atomistic_model(student, dtype="float32").capabilities().dtype == "float32"
    assert student.dtype == torch.float32  # the caller's model is not cast


def test_selected_atoms_domain_decomposition(exported):
    """LAMMPS passes local + ghost atoms and selects the local ones: only their energies count; the ghosts
    still act as neighbours of the selected atoms."""
    from metatensor.torch import Labels
    from metatomic.torch import ModelEvaluationOptions, ModelOutput, load_atomistic_model, systems_to_torch
    from vesin.metatomic import neighbor_lists_for_model

    model = load_atomistic_model(str(exported["float64"]))
    system = systems_to_torch(organic_molecule(), dtype=torch.float64)
    for calculator in neighbor_lists_for_model("angstrom", model):
        calculator.add_neighbor_list([system])

    def energy(per_atom: bool, selected=None):
        options = ModelEvaluationOptions(
            length_unit="angstrom",
            selected_atoms=selected,
            outputs={"energy": ModelOutput(unit="eV", sample_kind="atom" if per_atom else "system")},
        )
        return model([system], options, check_consistency=True)["energy"].block()

    all_atoms = energy(True)
    chosen = torch.tensor([[0, 1], [0, 4], [0, 7]], dtype=torch.int32)
    selected = energy(True, Labels(["system", "atom"], chosen))
    assert selected.samples.values.tolist() == chosen.tolist()
    np.testing.assert_allclose(selected.values[:, 0], all_atoms.values[[1, 4, 7], 0], rtol=1e-12)
    total = energy(False, Labels(["system", "atom"], chosen)).values
    np.testing.assert_allclose(total[0, 0], all_atoms.values[[1, 4, 7], 0].sum(), rtol=1e-12)


def test_loads_without_mlff_calc(exported, student):
    """The file is self-contained: it loads and runs in a fresh process where mlff_calc cannot be imported."""
    atoms = organic_molecule()
    atoms.calc = StudentCalculator(student, device="cpu", dtype="float64")
    expected = atoms.get_potential_energy()
    code = (
        "import sys, json; sys.modules['mlff_calc'] = None\n"  # any import of mlff_calc now fails
        "from ase import Atoms\n"
        "from metatomic_ase import MetatomicCalculator\n"
        "data = json.loads(sys.argv[1])\n"
        "atoms = Atoms(numbers=data['numbers'], positions=data['positions'])\n"
        "atoms.calc = MetatomicCalculator(sys.argv[2], device='cpu')\n"
        "print(repr(float(atoms.get_potential_energy())))\n"
        "assert not any(m.startswith('mlff_calc') for m in sys.modules if sys.modules[m] is not None)\n"
    )
    payload = json.dumps({"numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist()})
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", code, payload, str(exported["float64"])],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=exported["float64"].parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_close(float(proc.stdout.strip().splitlines()[-1]), expected, "energy in a fresh process")


def test_untrained_model_is_refused(tmp_path):
    model = StudentForceField(hidden_dim=8, num_interactions=1, num_rbf=4)
    with pytest.raises(InputError, match="elements"):
        to_atomistic_model(model)
    path = tmp_path / "untrained.pt"
    model.save(path)
    with pytest.raises(InputError, match="elements"):
        export_metatomic(path, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_cli_export_and_refusals(checkpoint, tmp_path, capsys):
    out = tmp_path / "student-mta.pt"
    assert cli_main(["export", str(checkpoint), "--format", "metatomic", "--out", str(out)]) == 0
    assert "interaction range 10 Å" in capsys.readouterr().out and out.stat().st_size > 0

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    assert cli_main(["export", str(garbage), "--out", str(tmp_path / "g.pt")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("mlff-calc export: error: checkpoint") and len(err.splitlines()) == 1
    with pytest.raises(CheckpointError):
        export_metatomic(garbage, tmp_path / "g.pt")

    untrained = tmp_path / "untrained.pt"
    StudentForceField(hidden_dim=8, num_interactions=1, num_rbf=4).save(untrained)
    assert cli_main(["export", str(untrained), "--out", str(tmp_path / "u.pt")]) == 1
    err = capsys.readouterr().err.strip()
    assert "metadata['elements']" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "g.pt").exists() and not (tmp_path / "u.pt").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_parity_cuda(student, exported):
    atoms = small_triclinic_cell()
    ours = _properties(atoms, StudentCalculator(student, device="cuda", dtype="float64"))
    theirs = _properties(atoms, metatomic_ase.MetatomicCalculator(str(exported["float64"]), device="cuda"))
    for key in ours:
        _assert_close(theirs[key], ours[key], key)


def test_cli_export_refuses_to_replace(checkpoint, tmp_path):
    from mlff_calc.cli.export import run
    from mlff_calc.errors import OutputExistsError

    out = tmp_path / "student-mta.pt"
    out.write_text("the user's file")
    args = cli_args(checkpoint, out)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        run(args)
    assert out.read_text() == "the user's file"
    with pytest.raises(OutputExistsError, match="also an input"):
        run(cli_args(checkpoint, checkpoint, overwrite=True))
    assert run(cli_args(checkpoint, out, overwrite=True)) == 0
    assert out.stat().st_size > 1000


def cli_args(model, out, overwrite: bool = False):
    from mlff_calc.cli import build_parser

    argv = ["export", str(model), "--out", str(out)] + (["--overwrite"] if overwrite else [])
    return build_parser().parse_args(argv)
