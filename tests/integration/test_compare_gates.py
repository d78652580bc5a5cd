"""``mlff-calc compare --gate`` (issue 10 item 4) and the uncertainty section of compare's report (item 1),
with the tiny EMT-distilled Cu student (calibrated at the end of its training)."""

from __future__ import annotations

import json

from mlff_calc.cli import main
from mlff_calc.data.hdf5 import write_frames

from test_compare import cu_structures, labelled  # noqa: E402 (tests/integration is on the path)

FAST = ["--nve-steps", "20", "--quiet", "--max-frames", "6"]


def _data(tmp_path):
    path = tmp_path / "test.h5"
    write_frames(path, labelled(cu_structures(6, seed=21)), {"name": "emt", "options": {}}, {"command": "test"})
    return path


def test_gates_pass_and_miss(tmp_path, tiny_student, capsys):
    data = _data(tmp_path)
    easy, hard = tmp_path / "easy.yaml", tmp_path / "hard.yaml"
    easy.write_text("force_mae_ev_per_ang: 10.0\nmd_stable: true\ndrift_mev_per_atom_ps: 1.0e+6\n")
    hard.write_text("force_mae_ev_per_ang: 1.0e-6\nforce_cosine_mean: 1.0\nspeed_ratio: 1.0e+6\n")
    args = ["compare", "--student", str(tiny_student), "--teacher", "emt", "--data", str(data), *FAST]
    assert main([*args, "--out", str(tmp_path / "ok"), "--gate", str(easy)]) == 0
    outcome = json.loads((tmp_path / "ok" / "gates.json").read_text())
    assert outcome["passed"] and len(outcome["results"]) == 3
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "bad"), "--gate", str(hard)]) == 1
    err = capsys.readouterr().err
    assert "3 acceptance gates missed" in err
    for key in ("force_mae_ev_per_ang", "force_cosine_mean", "speed_ratio"):
        assert key in err
    assert "> 1e-06 eV/Å (at most)" in err
    m = json.loads((tmp_path / "bad" / "metrics.json").read_text())  # the report is written all the same
    assert m["errors"]["n_frames"] == 6
    # a bad gates file fails before any work
    (tmp_path / "typo.yaml").write_text("force_mae: 0.1\n")
    assert main([*args, "--out", str(tmp_path / "typo"), "--gate", str(tmp_path / "typo.yaml")]) == 1
    assert "unknown key force_mae" in capsys.readouterr().err and not (tmp_path / "typo").exists()


def test_no_gate_is_todays_behaviour(tmp_path, tiny_student):
    data = _data(tmp_path)
    out = tmp_path / "plain"
    assert main(["compare", "--student", str(tiny_student), "--teacher", "emt", "--data", str(data),
                 "--out", str(out), *FAST]) == 0
    assert not (out / "gates.json").exists()
    m = json.loads((out / "metrics.json").read_text())
    u = m["uncertainty"]  # the calibrated student's uncertainty, measured on these frames
    assert -1 <= u["rank_correlation_structure"] <= 1 and u["predicted_over_observed_rms"] > 0
    assert (out / m["figures"]["reliability"]).read_bytes()[:4] == b"\x89PNG"
    assert "uncertainty_reliability.png" in (out / "report.md").read_text()
