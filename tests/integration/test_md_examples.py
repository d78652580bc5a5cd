"""The numbered scripts in md_examples/ run in smoke mode (CI=1), as a user would run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from ase.io import write

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "md_examples"


@pytest.fixture
def structure(tmp_path, tiny_student_structure):
    path = tmp_path / "cu.extxyz"
    write(path, tiny_student_structure)
    return path


def run_example(name: str, *args: str, cwd: Path) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "CI": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_01_student_nvt(tmp_path, tiny_student, structure):
    out = run_example("01_student_nvt.py", "--model", str(tiny_student), "--structure", str(structure),
                      "--device", "cpu", "--traj", str(tmp_path / "nvt.traj"), cwd=tmp_path)
    assert "Time[ps]" in out  # ASE's MDLogger on stdout
    assert "20 steps of 0.5 fs" in out and "ns/day" in out and "mean temperature (second half):" in out
    assert (tmp_path / "nvt.traj").stat().st_size > 0 and "mlff-calc md --model" in out


def test_02_teacher_vs_student(tmp_path, tiny_student, structure):
    out = run_example("02_teacher_vs_student.py", "--model", str(tiny_student), "--structure", str(structure),
                      "--teacher", "emt", "--device", "cpu", cwd=tmp_path)
    assert "comparing 5 frames of 32 atoms" in out
    assert "energy MAE:" in out and "force MAE:" in out and "median time per call: teacher (emt)" in out
    assert "speed ratio (teacher time / student time):" in out  # EMT is faster than any neural network


def test_03_nve_stability(tmp_path, tiny_student, structure):
    plot = tmp_path / "nve.png"
    out = run_example("03_nve_stability.py", "--model", str(tiny_student), "--structure", str(structure),
                      "--device", "cpu", "--plot", str(plot), cwd=tmp_path)
    assert "NVE (VelocityVerlet): 40 steps of 0.5 fs" in out and "drift:" in out and "meV/atom/ps" in out
    assert plot.read_bytes()[:4] == b"\x89PNG"
