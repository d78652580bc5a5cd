"""``distill`` with a recipe ``gates:`` section (issue 10 item 4): a missed bar makes ``mlff-calc distill``
exit non-zero naming it; changing only the gates re-runs no stage."""

from __future__ import annotations

import json

import ase.io
import pytest
import yaml
from ase.build import bulk

from mlff_calc.cli import main

from test_distill import TINY, stage_records  # noqa: E402 (tests/integration is on the path)


@pytest.fixture
def seed(tmp_path):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.symbols[0] = "Al"
    path = tmp_path / "cu3al.extxyz"
    ase.io.write(path, atoms)
    return path


def test_distill_gates(tmp_path, seed, capsys):
    run = tmp_path / "run"
    args = ["distill", "--teacher", "emt", "--structures", str(seed), "--out", str(run), "--preset", "quick",
            "--quiet"]
    raw = json.loads(json.dumps(TINY))
    raw["gates"] = {"force_mae_ev_per_ang": 1.0e-9, "md_stable": True}
    (tmp_path / "hard.yaml").write_text(yaml.safe_dump(raw))
    assert main([*args, "--recipe", str(tmp_path / "hard.yaml")]) == 1
    captured = capsys.readouterr()
    assert "1 acceptance gate missed: force_mae_ev_per_ang:" in captured.err and "1e-09 eV/Å (at most)" in captured.err
    assert "gate MISSED: force_mae_ev_per_ang" in captured.out and "gate passed: md_stable" in captured.out
    report = (run / "report" / "report.md").read_text()  # the trained student is calibrated: its uncertainty
    assert "The student's uncertainty" in report and (run / "report" / "uncertainty_reliability.png").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["gates"]["passed"] is False and len(summary["gates"]["results"]) == 2
    before = stage_records(run)

    raw["gates"] = {"force_mae_ev_per_ang": 10.0}
    (tmp_path / "easy.yaml").write_text(yaml.safe_dump(raw))
    assert main([*args, "--recipe", str(tmp_path / "easy.yaml")]) == 0
    assert stage_records(run) == before  # gates are not hashed: nothing re-ran
    assert json.loads((run / "summary.json").read_text())["gates"]["passed"] is True
    # the run's recipe.yaml now holds the gates; a recipe without the section gates nothing
    assert yaml.safe_load((run / "recipe.yaml").read_text())["gates"]["force_mae_ev_per_ang"] == 10.0
