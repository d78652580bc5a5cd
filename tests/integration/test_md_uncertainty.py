"""Run-time safety (issue 10 item 3): MD records the student's largest uncertainty, warns once with counts
above a threshold, and --max-uncertainty stops the run keeping the trajectory so far."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from ase.io import read, write

from mlff_calc import StudentCalculator
from mlff_calc.cli import main
from mlff_calc.errors import InputError, UncertaintyExceeded
from mlff_calc.md import run_md


@pytest.fixture
def calc(tiny_student):
    return StudentCalculator.from_checkpoint(tiny_student, device="cpu", uncertainty=True)


def test_largest_uncertainty_is_recorded(calc, tiny_student, tiny_student_structure):
    result = run_md(tiny_student_structure, calc, steps=20, interval=5, progress=False, warn_uncertainty=None)
    assert math.isfinite(result.max_uncertainty) and result.max_uncertainty > 0
    assert 0 <= result.max_uncertainty_step <= 20 and result.uncertainty_steps_above == 0
    assert "largest force uncertainty" in result.summary()
    plain = run_md(tiny_student_structure.copy(), StudentCalculator.from_checkpoint(tiny_student, device="cpu"),
                   steps=5, progress=False)
    assert math.isnan(plain.max_uncertainty) and "uncertainty" not in plain.summary()


def test_warns_once_with_counts(calc, tiny_student_structure):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_md(tiny_student_structure, calc, steps=12, progress=False, warn_uncertainty=1e-9)
    ours = [w for w in caught if "force uncertainty was above" in str(w.message)]
    assert len(ours) == 1
    assert result.uncertainty_steps_above == 13  # steps 0..12, every one above a tiny threshold
    assert "in 13 of 13 steps" in str(ours[0].message)


def test_max_uncertainty_stops_and_keeps_the_trajectory(calc, tiny_student_structure, tmp_path):
    traj = tmp_path / "md.traj"
    start = tiny_student_structure  # rattled like the training frames: it starts certain and heats away from them
    start.positions += np.random.default_rng(0).normal(0.0, 0.1, start.positions.shape)
    probe = run_md(start.copy(), calc, steps=30, progress=False, warn_uncertainty=None, temperature=2000.0)
    if probe.max_uncertainty_step < 4:
        pytest.skip("the probe run's largest uncertainty came too early to test a stop mid-run")
    limit = probe.max_uncertainty * 0.999  # the same seeded run passes it at the latest where the probe peaked
    with pytest.raises(UncertaintyExceeded) as info:
        run_md(start.copy(), calc, steps=30, interval=2, traj=traj, progress=False, temperature=2000.0,
               max_uncertainty=limit, warn_uncertainty=None)
    exc = info.value
    assert exc.value > limit and 0 < exc.step <= probe.max_uncertainty_step
    assert exc.atoms is not None and len(exc.atoms) == len(start) and exc.atoms.calc is None
    kept = (exc.step + 1) // 2  # frames at steps 0, 2, ... before the stop
    assert len(read(traj, ":")) == len(exc.result.times_ps) == kept
    assert f"kept {kept} frame" in str(exc) and "--max-uncertainty" in str(exc)


def test_max_uncertainty_needs_a_calculator_that_reports_it(tiny_student, tiny_student_structure):
    plain = StudentCalculator.from_checkpoint(tiny_student, device="cpu")
    with pytest.raises(InputError, match="uncertainty=True"):
        run_md(tiny_student_structure, plain, steps=2, progress=False, max_uncertainty=0.1)


def test_cli_max_uncertainty(tiny_student, tiny_student_structure, tmp_path, capsys):
    structure = tmp_path / "cu.xyz"
    write(structure, tiny_student_structure)
    traj = tmp_path / "out.traj"
    code = main(["md", "--model", str(tiny_student), "--structure", str(structure), "--steps", "20",
                 "--interval", "1", "--traj", str(traj), "--quiet", "--device", "cpu",
                 "--max-uncertainty", "1e-9"])
    err = capsys.readouterr().err
    assert code == 1 and "--max-uncertainty" in err and "kept" in err
    assert traj.exists()
    code = main(["md", "--model", str(tiny_student), "--structure", str(structure), "--steps", "5", "--quiet",
                 "--device", "cpu"])
    assert code == 0 and "largest force uncertainty" in capsys.readouterr().out


def test_cli_no_uncertainty(tiny_student, tiny_student_structure, tmp_path, capsys):
    structure = tmp_path / "cu.xyz"
    write(structure, tiny_student_structure)
    base = ["md", "--model", str(tiny_student), "--structure", str(structure), "--steps", "3", "--quiet",
            "--device", "cpu"]
    assert main([*base, "--no-uncertainty"]) == 0
    assert "uncertainty" not in capsys.readouterr().out
    assert main([*base, "--no-uncertainty", "--max-uncertainty", "1"]) == 1
    assert "contradict" in capsys.readouterr().err
