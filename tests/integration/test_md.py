"""``run_md`` and ``mlff-calc md`` on the tiny EMT-distilled Cu student: every ensemble, output files,
blow-up detection with deliberately broken calculators, and the CLI's summary and error lines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.io import Trajectory, read, write

from mlff_calc import StudentCalculator
from mlff_calc.cli import main
from mlff_calc.md import MDBlowUp, run_md


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: faster for 4-32 atoms, and immune to oversubscription on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def student(tiny_student):
    return StudentCalculator.from_checkpoint(tiny_student, device="cpu", dtype="float64")


def cu4(a: float = 3.6) -> Atoms:
    return bulk("Cu", "fcc", a=a, cubic=True)


def test_nve_conserves_energy_and_writes_trajectory_and_log(tmp_path, student, tiny_student_structure):
    traj, log = tmp_path / "nve.traj", tmp_path / "nve.log"
    atoms = tiny_student_structure
    # Off the perfect lattice: there PaiNN's sqrt(|v|^2 + 1e-8) makes the energy sharply curved over
    # ~1e-4 Å, and the first step from it shows a one-off jump of ~0.03 meV/atom (the model, not the MD).
    atoms.rattle(0.02, seed=3)
    result = run_md(atoms, student, ensemble="nve", temperature=300, timestep=1.0, steps=200,
                    traj=traj, log=log, interval=10, progress=False)
    assert result.steps_done == 200 and result.time_ps == pytest.approx(0.2)
    assert len(result.times_ps) == len(result.total_energies) == 21 and result.volumes is None
    assert result.ns_per_day > 0 and result.wall_s > 0
    # float64, 1 fs, 0.2 ps: measured drift 0.014 meV/atom/ps, max deviation 0.007 meV/atom. The bounds keep
    # a ~10x margin and still catch a non-conservative force or a wrong time unit by orders of magnitude.
    assert abs(result.drift_mev_per_atom_ps) < 0.2 and result.max_deviation_mev_per_atom < 0.05
    assert 50 < result.temperatures[-1] < 400  # equipartition: about half the initial 300 K goes potential
    frames = read(traj, ":")
    assert len(frames) == 21
    assert np.allclose(frames[-1].positions, atoms.positions)  # atoms are advanced in place
    lines = log.read_text().splitlines()
    assert lines[0].split()[:2] == ["Time[ps]", "Etot[eV]"] and len(lines) == 1 + 21
    assert float(lines[-1].split()[0]) == pytest.approx(0.2)


def test_nvt_langevin_reaches_the_target_temperature(student, tiny_student_structure):
    # Strong friction (20 fs coupling) and 2 fs steps: 1 ps equilibrates and then averages ~25 independent
    # samples of a 32-atom temperature (14% std each): the mean is within ~3% of the target.
    result = run_md(tiny_student_structure, student, ensemble="nvt", temperature=500, timestep=2.0, steps=500,
                    interval=5, friction=0.05, progress=False, seed=1)
    second_half = result.temperatures[len(result.temperatures) // 2:]
    assert 400 < second_half.mean() < 600
    assert np.isnan(result.drift_mev_per_atom_ps) and result.conserved_energies is None  # Langevin: none
    assert result.integrator == "Langevin"


def test_nvt_nose_hoover_keeps_its_conserved_energy(student):
    result = run_md(cu4(), student, ensemble="nvt", thermostat="nose-hoover", temperature=300, timestep=1.0,
                    steps=100, interval=5, progress=False)
    assert result.integrator == "NoseHooverChainNVT"
    assert result.conserved_energies is not None and result.max_deviation_mev_per_atom < 1.0


@pytest.mark.parametrize("thermostat", ["langevin", "nose-hoover"])
def test_npt_changes_the_volume_with_the_pressure(tmp_path, student, tiny_student_structure, thermostat):
    # A 100 fs barostat reacts within the 0.2 ps. Measured (2 seeds): the second-half mean volume is
    # 0.99-1.00 V0 at 1 bar and 0.96 V0 at 50 kbar (Cu's bulk modulus is ~140 GPa: -3.6% expected).
    mean_volume = {}
    for pressure in (1.0, 5e4):
        result = run_md(tiny_student_structure.copy(), student, ensemble="npt", thermostat=thermostat,
                        temperature=300, timestep=2.0, steps=100, interval=5, pressure=pressure, pdamp=100.0,
                        progress=False, log=tmp_path / "npt.log")
        expected = {"langevin": "LangevinBAOAB", "nose-hoover": "IsotropicMTKNPT"}[thermostat]
        assert result.integrator == expected
        volumes = result.volumes / result.volumes[0]
        assert len(volumes) == 21 and np.ptp(volumes) > 0.005
        mean_volume[pressure] = volumes[len(volumes) // 2:].mean()
    assert mean_volume[5e4] < 0.98 and mean_volume[5e4] < mean_volume[1.0] - 0.015
    assert "stress [GPa]" in (tmp_path / "npt.log").read_text().splitlines()[0]


def test_npt_refuses_a_molecule(student):
    cluster = Atoms("Cu3", positions=[[0, 0, 0], [2.5, 0, 0], [1.25, 2.1, 0]])
    with pytest.raises(ValueError, match="NPT needs a fully periodic cell"):
        run_md(cluster, student, ensemble="npt", steps=5, progress=False)
    with pytest.raises(ValueError, match="ensemble must be one of"):
        run_md(cu4(), student, ensemble="nph", steps=5, progress=False)


def emt(atoms: Atoms) -> tuple[float, np.ndarray]:
    """EMT energy (eV) and forces (eV/Å) of a copy of ``atoms``."""
    atoms = atoms.copy()
    atoms.calc = EMT()
    return atoms.get_potential_energy(), atoms.get_forces()


class Broken(Calculator):
    """EMT until the ``bad_call``-th force evaluation, then ``mode``: NaN forces, huge forces or an error."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, mode: str, bad_call: int):
        super().__init__()
        self.mode, self.bad_call, self.calls = mode, bad_call, 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.calls += 1
        energy, forces = emt(self.atoms)
        if self.calls >= self.bad_call:
            if self.mode == "error":
                raise ValueError("atoms 0 and 1 overlap")
            forces = forces + (np.nan if self.mode == "nan" else 1e5)
        self.results = {"energy": energy, "forces": forces}


@pytest.mark.parametrize("mode, message", [("nan", "non-finite force on atom 0"),
                                           ("huge", r"force of 1\.73e\+05 eV/Å on atom \d > 1000 eV/Å"),
                                           ("error", "calculator raised ValueError: atoms 0 and 1 overlap")],
                         ids=["nan", "huge", "error"])
def test_blow_up_stops_with_a_clear_error_and_keeps_the_good_frames(tmp_path, mode, message):
    traj = tmp_path / "md.traj"
    atoms = cu4()
    with pytest.raises(MDBlowUp, match=message) as info:
        # Call 1 is the starting structure (later reads of it are cached), call k computes step k - 1:
        # with bad_call=8, step 7 is the first bad one.
        run_md(atoms, Broken(mode, bad_call=8), ensemble="nve", steps=50, interval=2, traj=traj,
               progress=False)
    exc = info.value
    assert exc.step == 7 and "MD blew up at step 7" in str(exc) and "kept 4 frames" in str(exc)
    with Trajectory(traj) as frames:  # steps 0, 2, 4, 6: whole, readable, finite
        assert len(frames) == 4 and all(np.isfinite(f.get_forces()).all() for f in frames)
    assert exc.result.steps_done in (6, 7) and len(exc.result.times_ps) == 4


def test_blow_up_on_overheating_and_on_a_molecule_flying_apart():
    # Forces pushing atoms away from equilibrium, 10x: the crystal heats up far past 10x the target.
    class Heating(Calculator):
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            energy, forces = emt(self.atoms)
            self.results = {"energy": -10 * energy, "forces": -10 * forces}

    atoms = cu4()
    atoms.rattle(0.1, seed=0)
    with pytest.raises(MDBlowUp, match=r"kinetic temperature \d+ K > 1000 K"):
        run_md(atoms, Heating(), ensemble="nvt", temperature=100, timestep=2.0, steps=500, progress=False)

    class Free(Calculator):  # no interactions: atoms keep their velocities
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            self.results = {"energy": 0.0, "forces": np.zeros((len(self.atoms), 3))}

    dimer = Atoms("Cu2", positions=[[0, 0, 0], [2.3, 0, 0]], momenta=[[-12.9, 0, 0], [12.9, 0, 0]])
    with pytest.raises(MDBlowUp, match="flying apart"):  # ~0.02 Å/fs apart, ~10^4 K: below the 2·10^4 K cap
        run_md(dimer, Free(), ensemble="nve", temperature=2000, timestep=5.0, steps=500,
               init_velocities=False, progress=False)


def write_structure(tmp_path, atoms, name="cu.extxyz"):
    path = tmp_path / name
    write(path, atoms)
    return path


def test_cli_runs_md_and_prints_a_summary(tmp_path, tiny_student, tiny_student_structure, capsys):
    structure = write_structure(tmp_path, tiny_student_structure)
    traj, log = tmp_path / "out.traj", tmp_path / "md.log"
    code = main(["md", "--model", str(tiny_student), "--structure", str(structure), "--ensemble", "nve",
                 "--temperature", "300", "--timestep", "1", "--steps", "20", "--interval", "5",
                 "--traj", str(traj), "--log", str(log), "--device", "cpu", "--dtype", "float64"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "20/20" in err and "ns/day" in err  # the progress bar
    assert "NVE (VelocityVerlet): 20 steps of 1 fs = 0.02 ps of 32 atoms" in out and "ns/day" in out
    assert "temperature: final" in out and "total energy drift:" in out and "meV/atom/ps" in out
    assert len(read(traj, ":")) == 5 and len(log.read_text().splitlines()) == 6


def test_cli_errors_are_one_clear_line(tmp_path, tiny_student, capsys):
    structure = write_structure(tmp_path, cu4())
    base = ["md", "--steps", "5", "--quiet", "--device", "cpu"]

    assert main(base + ["--model", str(tmp_path / "missing.pt"), "--structure", str(structure)]) == 1
    assert "mlff-calc md: error: model file not found" in capsys.readouterr().err

    garbage = tmp_path / "garbage.xyz"
    garbage.write_text("this is not\na structure\n")
    assert main(base + ["--model", str(tiny_student), "--structure", str(garbage)]) == 1
    assert "error: cannot read structure" in capsys.readouterr().err

    molecule = write_structure(tmp_path, Atoms("Cu3", positions=[[0, 0, 0], [2.5, 0, 0], [1.25, 2.1, 0]]),
                               "cu3.xyz")
    assert main(base + ["--model", str(tiny_student), "--structure", str(molecule), "--ensemble", "npt"]) == 1
    assert "needs a fully periodic cell" in capsys.readouterr().err

    # A 100 fs time step (Verlet is unstable above ~45 fs for Cu) heats the crystal without bound: a blow-up
    # is one error line and exit code 1.
    assert main(base + ["--model", str(tiny_student), "--structure", str(structure), "--timestep", "100",
                        "--temperature", "1000", "--steps", "200", "--traj", str(tmp_path / "b.traj")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mlff-calc md: error: MD blew up at step")
