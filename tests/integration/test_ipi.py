"""i-PI with the student as force driver: a short NVT run, two processes over a unix socket, clean exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.io import read, write

pytest.importorskip("ipi")

from mlff_calc.integrations.ipi import SOCKET_PREFIX, ipi_command, nvt_input, run_simulation  # noqa: E402

# TorchScript (the metatomic file format) is deprecated upstream in favour of torch.export: not our warning.
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning")

ROOT = Path(__file__).resolve().parents[2]
STEPS = 20


def _check_run(run, n_atoms: int) -> None:
    assert run.ipi_returncode == 0 and run.driver_returncode == 0
    steps = run.properties[:, 0]
    np.testing.assert_array_equal(steps, np.arange(STEPS + 1))  # every step, 0..20
    assert np.isfinite(run.properties).all()
    temperature, potential = run.properties[:, 3], run.properties[:, 4]
    assert (temperature > 0).all() and np.ptp(potential) > 0  # the atoms moved under the student's forces
    frames = read(run.trajectory, ":")
    assert len(frames) == STEPS + 1 and len(frames[-1]) == n_atoms


def test_ipi_nvt_with_ase_driver(tiny_student, tiny_student_structure, tmp_path):
    run = run_simulation(tiny_student, tiny_student_structure, tmp_path / "ase", steps=STEPS, timeout=120)
    _check_run(run, len(tiny_student_structure))
    assert f"i-PI driver: {STEPS + 1} force evaluations, clean exit" in run.driver_stdout
    assert "Exiting cleanly" in (tmp_path / "ase" / "ipi.log").read_text()
    assert not list(Path("/tmp").glob(f"ipi_mlffcalc_{os.getpid()}_*"))  # no socket left behind


@pytest.mark.slow  # ~15 s: two i-PI runs; the default suite runs the ASE driver and the export parity
def test_ipi_metatomic_driver_matches_ase_driver(tiny_student, tiny_student_structure, tmp_path):
    """The exported file in i-PI's own metatomic driver gives the ASE driver's trajectory (same seed)."""
    pytest.importorskip("metatomic.torch")
    from mlff_calc.integrations.metatomic import export_metatomic

    exported = export_metatomic(tiny_student, tmp_path / "student-mta.pt", dtype="float64")
    runs = {
        driver: run_simulation(
            model, tiny_student_structure, tmp_path / driver, steps=STEPS, timeout=120, driver=driver
        )
        for driver, model in (("ase", tiny_student), ("metatomic", exported))
    }
    _check_run(runs["metatomic"], len(tiny_student_structure))
    assert "Received exit message from i-PI" in runs["metatomic"].driver_stdout
    # Same potential energies to ~1e-6 relative: the drivers convert Bohr <-> Å with slightly different
    # constants.
    np.testing.assert_allclose(runs["metatomic"].properties[:, 4], runs["ase"].properties[:, 4], rtol=1e-5)


def test_failing_driver_stops_ipi(tiny_student_structure, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="the i-PI driver failed"):
        run_simulation(garbage, tiny_student_structure, tmp_path / "bad", steps=STEPS, timeout=60)
    assert not list(Path("/tmp").glob(f"ipi_mlffcalc_{os.getpid()}_*"))


def test_input_is_valid_for_ipi(tmp_path, tiny_student_structure):
    """i-PI parses the generated input (it opens the socket), then is stopped: no driver needed."""
    write(tmp_path / "init.extxyz", tiny_student_structure)
    xml = nvt_input("init.extxyz", f"mlffcalc_{os.getpid()}_parse", steps=5, nbeads=4)
    assert '<ffsocket name="student" mode="unix"' in xml and 'nbeads="4"' in xml
    (tmp_path / "input.xml").write_text(xml)
    proc = subprocess.Popen(
        [*ipi_command(), "input.xml"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    socket = Path(SOCKET_PREFIX + f"mlffcalc_{os.getpid()}_parse")
    try:
        from mlff_calc.integrations.ipi import wait_for_socket

        wait_for_socket(socket.name[len("ipi_") :], timeout=60, process=proc)
        assert socket.exists()
    finally:
        proc.kill()
        proc.wait(timeout=10)
        socket.unlink(missing_ok=True)


def test_example_04_ipi_nvt(tiny_student, tmp_path):
    structure = tmp_path / "cu.extxyz"
    from ase.build import bulk

    write(structure, bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2))
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "md_examples" / "04_ipi_nvt.py"),
            "--model",
            str(tiny_student),
            "--structure",
            str(structure),
            "--workdir",
            str(tmp_path / "run"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "CI": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{STEPS} steps of 0.5 fs of 32 atoms" in proc.stdout and "exited cleanly" in proc.stdout
