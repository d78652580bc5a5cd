"""The student in torch-sim: interface validation, batched == single, NVE against ASE, batched NVT,
``mlff-calc md`` with several structures, and example 05."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import units
from ase.build import molecule
from ase.io import read, write
from ase.md.verlet import VelocityVerlet

ts = pytest.importorskip("torch_sim")

from torch_sim.models.interface import validate_model_outputs  # noqa: E402

from mlff_calc import StudentCalculator, StudentForceField  # noqa: E402
from mlff_calc.cli import main as cli_main  # noqa: E402
from mlff_calc.errors import InputError  # noqa: E402
from mlff_calc.integrations.batched_md import initial_momenta, run_batched_md  # noqa: E402
from mlff_calc.integrations.torchsim import StudentModel, batch_state  # noqa: E402
from mlff_calc.model.student import randomize_parameters  # noqa: E402
from mlff_calc.testing.structures import organic_molecule, slab, small_triclinic_cell  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MOLECULES = ["CH3CH2OH", "H2O", "CH4", "C6H6", "NH3", "CH3OH", "HCOOH", "C2H4"]  # 8 sizes, 3 to 12 atoms


@pytest.fixture(scope="module")
def student() -> StudentForceField:
    # Small weights: a smooth random surface, so that short MD is well behaved without training.
    model = randomize_parameters(
        StudentForceField(hidden_dim=16, num_interactions=2, num_rbf=8), seed=2, std=0.1
    )
    model.metadata = {"elements": [1, 6, 7, 8, 14]}
    return model


def _molecules() -> list:
    out = []
    for k, name in enumerate(MOLECULES):
        atoms = molecule(name)
        atoms.rattle(0.02, seed=k)
        out.append(atoms)
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_passes_torchsim_validation(dtype):
    # torch-sim's own check uses Si and Fe: an untrained student (no element list) accepts them.
    model = randomize_parameters(
        StudentForceField(hidden_dim=16, num_interactions=2, num_rbf=8), seed=1, std=0.1
    )
    ts_model = StudentModel(model, device="cpu", dtype=dtype)
    validate_model_outputs(ts_model, torch.device("cpu"), dtype)
    assert ts_model.compute_stress and ts_model.memory_scales_with == "n_atoms_x_density"
    assert ts_model.dtype == dtype and ts_model.device == torch.device("cpu")


@pytest.mark.parametrize("periodic", [False, True], ids=["molecules", "periodic"])
def test_batch_equals_single_calculator(student, periodic):
    if periodic:
        images = [small_triclinic_cell(seed=s) for s in range(3)] + [
            small_triclinic_cell(seed=3).repeat((2, 1, 1))
        ]
    else:
        images = _molecules()
    ts_model = StudentModel(student, device="cpu", dtype="float64", compute_stress=periodic)
    out = ts_model(batch_state(images, ts_model.device, ts_model.dtype))
    assert ts_model.n_calls == 1
    start = 0
    for b, atoms in enumerate(images):
        atoms.calc = StudentCalculator(student, device="cpu", dtype="float64")
        stop = start + len(atoms)
        np.testing.assert_allclose(out["energy"][b].item(), atoms.get_potential_energy(), rtol=1e-10)
        np.testing.assert_allclose(out["forces"][start:stop].numpy(), atoms.get_forces(), atol=1e-10)
        if periodic:
            np.testing.assert_allclose(out["stress"][b].numpy(), atoms.get_stress(voigt=False), atol=1e-10)
        start = stop


def test_refusals(student):
    ts_model = StudentModel(student, device="cpu", dtype="float64")
    with pytest.raises(InputError, match="all fully periodic or all non-periodic"):
        batch_state([organic_molecule(), small_triclinic_cell()], ts_model.device, ts_model.dtype)
    with pytest.raises(InputError, match="all fully periodic or all non-periodic"):
        batch_state([slab()], ts_model.device, ts_model.dtype)
    silane = molecule("SiH4")
    silane.numbers[0] = 16  # sulfur: never seen in training
    with pytest.raises(InputError, match=r"S \(Z=16\), an element this model never saw"):
        ts_model(batch_state([silane], ts_model.device, ts_model.dtype))
    with pytest.raises(InputError, match="nvt"):
        run_batched_md([organic_molecule()], ts_model, ensemble="npt", steps=1)


def test_nve_conserves_energy_like_ase(student):
    """The same NVE run (same start, same velocity Verlet) in torch-sim and in ASE: same energies, drift."""
    steps, interval, dt = 60, 5, 0.5
    atoms = organic_molecule()
    p0 = initial_momenta(atoms, 300.0, np.random.default_rng(0))
    result = run_batched_md(
        [atoms],
        StudentModel(student, device="cpu", dtype="float64"),
        ensemble="nve",
        steps=steps,
        interval=interval,
        timestep=dt,
        momenta=[p0],
    )

    ase_atoms = atoms.copy()
    ase_atoms.set_momenta(p0)
    ase_atoms.calc = StudentCalculator(student, device="cpu", dtype="float64")
    dyn = VelocityVerlet(ase_atoms, timestep=dt * units.fs)
    totals = [ase_atoms.get_total_energy()]
    for _ in range(steps // interval):
        dyn.run(interval)
        totals.append(ase_atoms.get_total_energy())
    totals = np.asarray(totals)

    ts_totals = result.total_energies[:, 0]
    assert result.model_calls == steps + 1  # one call at init, one per step
    np.testing.assert_allclose(ts_totals, totals, atol=1e-7)  # the same trajectory, to round-off
    np.testing.assert_allclose(result.final[0].positions, ase_atoms.positions, atol=1e-7)
    ase_drift = np.polyfit(result.times_ps, totals / len(atoms), 1)[0] * 1e3
    ts_drift = result.drift_mev_per_atom_ps()[0]
    assert abs(ts_drift) <= 2 * abs(ase_drift) + 1e-3, (ts_drift, ase_drift)
    assert np.ptp(ts_totals) < 1e-3 * len(atoms)  # and it is conserved (< 1 meV/atom over the run)


def test_batched_nvt_many_structures(student):
    structures = _molecules()
    ts_model = StudentModel(student, device="cpu", dtype="float32")
    steps = 30
    result = run_batched_md(
        structures,
        ts_model,
        ensemble="nvt",
        temperature=300.0,
        steps=steps,
        interval=10,
        seed=1,
        friction=0.05,
    )
    assert result.model_calls == steps + 1  # all 8 structures in one call per step
    assert result.temperatures.shape == (4, len(structures)) and np.isfinite(result.temperatures).all()
    assert np.isfinite(result.potential_energies).all()
    for start, end in zip(structures, result.final):
        assert end.get_chemical_formula() == start.get_chemical_formula()
        assert 0 < np.abs(end.positions - start.positions).max() < 1.0
    again = run_batched_md(
        structures,
        StudentModel(student, device="cpu", dtype="float32"),
        ensemble="nvt",
        temperature=300.0,
        steps=steps,
        interval=10,
        seed=1,
        friction=0.05,
    )
    np.testing.assert_array_equal(again.potential_energies, result.potential_energies)  # seeded


def test_cli_md_several_structures(student, tmp_path, capsys):
    checkpoint = tmp_path / "student.pt"
    student.save(checkpoint)
    files = []
    for k, atoms in enumerate(_molecules()[:3]):
        files += ["--structure", str(tmp_path / f"m{k}.xyz")]
        write(tmp_path / f"m{k}.xyz", atoms)
    traj, log = tmp_path / "md.traj", tmp_path / "md.log"
    args = [
        "md",
        "--model",
        str(checkpoint),
        *files,
        "--steps",
        "10",
        "--interval",
        "5",
        "--device",
        "cpu",
        "--traj",
        str(traj),
        "--log",
        str(log),
        "--quiet",
    ]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "3 structures" in out and "11 model calls" in out
    for k in range(3):
        assert len(read(tmp_path / f"md.{k}.traj", ":")) == 3  # steps 0, 5, 10
    lines = [line for line in log.read_text().splitlines() if not line.startswith("#")]
    assert len(lines) == 3 * 3

    # A multi-frame file with --all-frames is a batch too; an ensemble torch-sim cannot run is refused.
    write(tmp_path / "all.extxyz", _molecules()[3:6])
    assert (
        cli_main(
            [
                "md",
                "--model",
                str(checkpoint),
                "--structure",
                str(tmp_path / "all.extxyz"),
                "--all-frames",
                "--steps",
                "4",
                "--interval",
                "2",
                "--device",
                "cpu",
                "--ensemble",
                "nve",
                "--quiet",
            ]
        )
        == 0
    )
    assert "3 structures" in capsys.readouterr().out
    assert cli_main(["md", "--model", str(checkpoint), *files, "--ensemble", "npt", "--device", "cpu"]) == 1
    assert "nvt (Langevin) or nve only" in capsys.readouterr().err


def test_example_05_torchsim_batch(student, tmp_path):
    checkpoint = tmp_path / "student.pt"
    student.save(checkpoint)
    write(tmp_path / "mols.extxyz", _molecules())
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "md_examples" / "05_torchsim_batch.py"),
            "--model",
            str(checkpoint),
            "--structures",
            str(tmp_path / "mols.extxyz"),
            "--device",
            "cpu",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "CI": "1", "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "8 structures" in proc.stdout and "atom-steps/s" in proc.stdout and "NVE drift" in proc.stdout
