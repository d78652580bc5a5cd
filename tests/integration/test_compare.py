"""``mlff-calc compare`` end to end with the tiny EMT-distilled Cu student and ``--teacher emt``:
both inputs (stored labels and labelling now), the outputs, the numbers against a direct calculation,
an unstable MD reported rather than raised, and every clear error."""

import json
import re

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read, write

from mlff_calc import StudentCalculator
from mlff_calc.cli import main
from mlff_calc.data.hdf5 import write_frames
from mlff_calc.evaluation import compare

FIGURES = {"force_parity.png", "force_error_histogram.png", "nve_energy_drift.png", "rdf.png"}
ERROR_KEYS = {"energy_mae_ev_per_atom", "energy_rmse_ev_per_atom", "force_mae_ev_per_ang",
              "force_rmse_ev_per_ang", "force_max_error_ev_per_ang", "force_cosine_mean",
              "force_cosine_global", "stress_mae_ev_per_ang3", "n_frames", "n_atoms"}
FAST = ["--nve-steps", "40", "--quiet"]  # 40 x 0.5 fs: enough for a drift estimate, ~0.3 s


def cu_structures(n, seed, repeat=1, element="Cu"):
    """Rattled fcc cells near the tiny student's training distribution (a = 3.6 Å, 0.05 Å noise)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = bulk(element, "fcc", a=3.6 + 0.03 * rng.normal(), cubic=True).repeat(repeat)
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        out.append(atoms)
    return out


def labelled(atoms_list, energy_shift_per_atom=0.0):
    frames = []
    for i, atoms in enumerate(atoms_list):
        atoms = atoms.copy()
        atoms.calc = EMT()
        energy = atoms.get_potential_energy() + energy_shift_per_atom * len(atoms)
        frames.append({"atomic_numbers": atoms.numbers, "positions": atoms.positions,
                       "cell": atoms.cell.array, "pbc": atoms.pbc, "energy": energy,
                       "forces": atoms.get_forces(), "stress": atoms.get_stress(voigt=False),
                       "input_index": i})
    return frames


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare_inputs")
    paths = {"data": root / "test.h5", "shifted": root / "shifted.h5", "empty": root / "empty.h5",
             "structures": root / "test.extxyz", "al": root / "al.extxyz", "md": root / "md.extxyz"}
    frames = cu_structures(8, seed=11)
    write_frames(paths["data"], labelled(frames), {"name": "emt", "options": {}}, {"command": "test"})
    # Stored labels 1 eV/atom off: only a comparison that really uses the stored labels sees it.
    write_frames(paths["shifted"], labelled(frames, 1.0), {"name": "emt", "options": {}}, {"command": "test"})
    write_frames(paths["empty"], [], {"name": "emt", "options": {}}, {"command": "test"})
    write(paths["structures"], cu_structures(5, seed=12))
    write(paths["al"], cu_structures(2, seed=13, element="Al"))
    write(paths["md"], cu_structures(1, seed=14, repeat=2))  # 32 atoms
    return paths


def test_compare_stored_labels_end_to_end(tmp_path, tiny_student, inputs):
    out = tmp_path / "report"
    code = main(["compare", "--student", str(tiny_student), "--teacher", "emt", "--data", str(inputs["data"]),
                 "--out", str(out), "--teacher-md", "--md-structure", str(inputs["md"]), *FAST])
    assert code == 0
    files = {p.name for p in out.iterdir()}
    assert FIGURES | {"report.md", "metrics.json", "student_nve.traj", "teacher_nve.traj"} <= files
    for name in FIGURES:
        assert (out / name).read_bytes()[:4] == b"\x89PNG"

    m = json.loads((out / "metrics.json").read_text())
    assert m == json.loads(json.dumps(m))  # plain JSON: no NaN
    e, s = m["errors"], m["speed"]
    assert ERROR_KEYS <= set(e) and e["n_frames"] == 8 and e["n_atoms"] == 32
    assert e["n_stress_structures"] == 8
    assert all(e[k] >= 0 for k in ERROR_KEYS) and 0 < e["force_mae_ev_per_ang"] < 0.5
    assert 0.5 < e["force_cosine_mean"] <= 1.0
    assert s["student_ms_per_call"] > 0 and s["teacher_ms_per_call"] > 0 and s["speed_ratio"] > 0
    assert s["calls_per_model"] >= 9 and len(s["per_structure"]) == 3
    for name in ("student", "teacher"):
        run = m["nve"][name]
        assert run["ok"] and run["n_atoms"] == 32
        assert np.isfinite(run["drift_mev_per_atom_ps"]) and 0 <= run["max_deviation_mev_per_atom"] < 10
    assert m["nve"]["settings"]["student_dtype"] == "float32"
    assert m["rdf"]["kind"] == "g(r)" and 0 <= m["rdf"]["difference_l1_relative"] < 1
    p = m["provenance"]
    assert p["teacher"] == {"name": "emt", "options": {}} and p["student"] == str(tiny_student.resolve())
    assert p["frames_used"] == list(range(8)) and p["date_utc"] and p["machine"]["node"] is not None

    report = (out / "report.md").read_text()
    for figure in FIGURES:
        assert f"({figure})" in report  # embedded by relative path
    assert "force MAE" in report and "Speed" in report and "NVE stability" in report


def test_compare_uses_stored_labels_and_max_frames(tmp_path, tiny_student, inputs):
    m = compare(tiny_student, "emt", data=inputs["shifted"], out=tmp_path / "r", max_frames=3, nve_steps=0,
                device="cpu", progress=False)
    assert 0.9 < m["errors"]["energy_mae_ev_per_atom"] < 1.1  # the +1 eV/atom of the stored labels
    assert m["provenance"]["frames_used"] == [0, 4, 7] and m["provenance"]["frames_available"] == 8
    assert m["nve"] == {"settings": m["nve"]["settings"]} and m["rdf"] is None
    assert not (tmp_path / "r" / "nve_energy_drift.png").exists()
    # Another teacher than the one that labelled the data: compared anyway, with a warning.
    with pytest.warns(UserWarning, match="labelled by 'emt', not by 'ase.calculators.emt:EMT'"):
        compare(tiny_student, "ase.calculators.emt:EMT", data=inputs["data"], out=tmp_path / "r2",
                max_frames=2, nve_steps=0, progress=False)
    assert "Warning" in (tmp_path / "r2" / "report.md").read_text()


def test_compare_structures_labels_with_the_teacher(tmp_path, tiny_student, inputs):
    out = tmp_path / "report"
    assert main(["compare", "--student", str(tiny_student), "--teacher", "emt", "--structures",
                 str(inputs["structures"]), "--out", str(out), *FAST]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["errors"]["labels"].startswith("computed by the teacher") and m["rdf"] is None
    assert "teacher" not in m["nve"] and not (out / "rdf.png").exists()

    # The same numbers by hand: student (float32) vs EMT on the five structures.
    calc = StudentCalculator.from_checkpoint(tiny_student, device="cpu", dtype="float32")
    images = read(inputs["structures"], ":")
    f_s, f_t, e_err = [], [], []
    for atoms in images:
        atoms.calc = calc
        f_s.append(atoms.get_forces())
        e_s = atoms.get_potential_energy()
        atoms.calc = EMT()
        f_t.append(atoms.get_forces())
        e_err.append(abs(e_s - atoms.get_potential_energy()) / len(atoms))
    diff = np.concatenate(f_s) - np.concatenate(f_t)
    assert m["errors"]["force_mae_ev_per_ang"] == pytest.approx(np.abs(diff).mean(), rel=1e-5)
    assert m["errors"]["force_rmse_ev_per_ang"] == pytest.approx(np.sqrt((diff**2).mean()), rel=1e-5)
    assert m["errors"]["energy_mae_ev_per_atom"] == pytest.approx(np.mean(e_err), rel=1e-4, abs=1e-6)


def test_unstable_md_is_reported_not_raised(tmp_path, tiny_student, inputs):
    hot = bulk("Cu", "fcc", a=3.0, cubic=True)  # compressed and rattled: heats far past 10 x 300 K at once
    hot.rattle(0.3, seed=1)
    write(tmp_path / "hot.extxyz", hot)
    m = compare(tiny_student, "emt", data=inputs["data"], out=tmp_path / "r", max_frames=2, nve_steps=60,
                timestep=5.0, md_structure=tmp_path / "hot.extxyz", teacher_md=True, progress=False)
    assert not m["nve"]["student"]["ok"] and "blew up" in m["nve"]["student"]["error"]
    assert m["nve"]["student"]["drift_mev_per_atom_ps"] is None and m["rdf"] is None
    assert "**unstable**" in (tmp_path / "r" / "report.md").read_text()


@pytest.mark.parametrize("case, message", [
    ("missing student", "student checkpoint not found"),
    ("unknown teacher", "unknown teacher 'no-such-teacher'"),
    ("empty data", "holds no structures"),
    ("missing data", "no such dataset file"),
    ("unknown element", r"cannot evaluate frame 0 of .*al\.extxyz: atom 0 is Al .*never saw in training"),
    ("unknown element in md structure", r"cannot evaluate MD structure .*al\.extxyz: atom 0 is Al"),
])
def test_clear_errors(tmp_path, tiny_student, inputs, capsys, case, message):
    args = {"--student": str(tiny_student), "--teacher": "emt", "--data": str(inputs["data"]),
            "--out": str(tmp_path / "r")}
    if case == "missing student":
        args["--student"] = str(tmp_path / "nope.pt")
    elif case == "unknown teacher":
        args["--teacher"] = "no-such-teacher"
    elif case == "empty data":
        args["--data"] = str(inputs["empty"])
    elif case == "missing data":
        args["--data"] = str(tmp_path / "nope.h5")
    elif case == "unknown element":
        del args["--data"]
        args["--structures"] = str(inputs["al"])
    else:
        args["--md-structure"] = str(inputs["al"])
    assert main(["compare", *[x for kv in args.items() for x in kv], *FAST]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mlff-calc compare: error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_data_and_structures_are_exclusive(tmp_path, tiny_student, inputs, capsys):
    base = ["compare", "--student", str(tiny_student), "--teacher", "emt", "--out", str(tmp_path / "r")]
    for extra, message in (([], "one of the arguments --data --structures is required"),
                           (["--data", str(inputs["data"]), "--structures", str(inputs["structures"])],
                            "not allowed with argument")):
        with pytest.raises(SystemExit) as exc:
            main(base + extra)
        assert exc.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(ValueError, match="exactly one of data"):
        compare(tiny_student, "emt", out=tmp_path / "r")
    with pytest.raises(ValueError, match="exactly one of data"):
        compare(tiny_student, "emt", data=inputs["data"], structures=inputs["structures"], out=tmp_path / "r")
