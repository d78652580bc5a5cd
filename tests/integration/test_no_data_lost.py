"""Issue 14, "nothing a user made is ever lost": each numbered case written as its reproduction.

Every test runs the command a user ran, then asserts that the user's files are bit-for-bit intact and
that the one error line names the actual problem. (Cases 2, 6, 8 and 9 -- run-directory locks, the
finished student, float32 far from the origin, YAML sections -- are tested with training and the model.)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.io import Trajectory

from mlff_calc.cli import main
from mlff_calc.data.hdf5 import DatasetReader, DatasetWriter, write_frames
from mlff_calc.errors import DataError, MDBlowUp
from mlff_calc.md import run_md

EMT_SPEC = {"name": "emt", "options": {}}


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cu_frames(n: int, seed: int = 0) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        frames.append(atoms)
    return frames


def labelled(frames: list[Atoms]) -> list[dict]:
    out = []
    for i, atoms in enumerate(frames):
        atoms = atoms.copy()
        atoms.calc = EMT()
        out.append({"atomic_numbers": atoms.numbers, "positions": atoms.positions, "cell": atoms.cell.array,
                    "pbc": atoms.pbc, "energy": atoms.get_potential_energy(), "forces": atoms.get_forces(),
                    "stress": None, "input_index": i})
    return out


def error_line(capsys) -> str:
    """The one stderr line of a failed command (asserts there is exactly one and no traceback)."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def dataset(tmp_path) -> Path:
    path = tmp_path / "a.h5"
    write_frames(path, labelled(cu_frames(5)), EMT_SPEC, {"command": "test"})
    return path


# ---- 1: merge a.h5 a.h5 b.h5 --overwrite ------------------------------------------------------------


def test_1_merge_into_one_of_its_inputs_is_refused_before_anything_is_touched(tmp_path, dataset, capsys):
    other = tmp_path / "b.h5"
    write_frames(other, labelled(cu_frames(3, seed=1)), EMT_SPEC, {"command": "test"})
    before = digest(dataset), digest(other)
    assert main(["dataset", "merge", str(dataset), str(dataset), str(other), "--overwrite"]) == 1
    assert "is also an input" in error_line(capsys)
    assert (digest(dataset), digest(other)) == before
    with DatasetReader(dataset) as r:
        assert len(r) == 5


# ---- 3: md --traj long.traj over an existing trajectory; --log the same ---------------------------------


@pytest.fixture
def md_inputs(tmp_path, tiny_student, tiny_student_structure):
    structure = tmp_path / "cu.xyz"
    ase.io.write(structure, tiny_student_structure, format="extxyz")
    return ["md", "--model", str(tiny_student), "--structure", str(structure), "--steps", "4",
            "--interval", "2", "--quiet", "--device", "cpu"]


def test_3_md_never_overwrites_an_existing_trajectory_or_log(tmp_path, md_inputs, capsys):
    traj, log = tmp_path / "long.traj", tmp_path / "md.log"
    assert main(md_inputs + ["--traj", str(traj), "--log", str(log)]) == 0
    capsys.readouterr()
    kept = digest(traj), digest(log)
    assert main(md_inputs + ["--traj", str(traj)]) == 1
    assert f"trajectory {traj} already exists; pass --overwrite" in error_line(capsys)
    assert main(md_inputs + ["--log", str(log)]) == 1
    assert f"log {log} already exists; pass --overwrite" in error_line(capsys)
    assert (digest(traj), digest(log)) == kept
    # --overwrite replaces them, whole
    assert main(md_inputs + ["--traj", str(traj), "--log", str(log), "--overwrite", "--steps", "6"]) == 0
    assert len(ase.io.read(traj, ":")) == 4 and not list(tmp_path.glob(".*.tmp"))


def test_3_md_output_equal_to_an_input_is_refused_even_with_overwrite(tmp_path, md_inputs, capsys):
    structure = Path(md_inputs[4])
    before = digest(structure)
    assert main(md_inputs + ["--traj", str(structure), "--overwrite"]) == 1
    assert "is also an input" in error_line(capsys)
    assert digest(structure) == before


# ---- 4: sample --out seeds.extxyz --structures seeds.extxyz ---------------------------------------------


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_4_sample_into_its_own_seed_file_is_refused(tmp_path, capsys, overwrite):
    seeds = tmp_path / "seeds.extxyz"
    ase.io.write(seeds, cu_frames(2), format="extxyz")
    before = digest(seeds)
    assert main(["sample", "--teacher", "emt", "--structures", str(seeds), "--out", str(seeds),
                 "--frames", "2", "--quiet", *overwrite]) == 1
    assert "is also an input" in error_line(capsys)
    assert digest(seeds) == before


def test_4_sample_refuses_to_replace_an_existing_output_unless_asked(tmp_path, capsys):
    seeds, out = tmp_path / "seeds.extxyz", tmp_path / "frames.extxyz"
    ase.io.write(seeds, cu_frames(1), format="extxyz")
    out.write_text("my earlier frames\n")
    argv = ["sample", "--teacher", "emt", "--structures", str(seeds), "--out", str(out), "--frames", "2",
            "--temperatures", "300", "--interval", "2", "--quiet"]
    assert main(argv) == 1
    assert "already exists; pass --overwrite" in error_line(capsys)
    assert out.read_text() == "my earlier frames\n"
    assert main(argv + ["--overwrite"]) == 0 and len(ase.io.read(out, ":")) == 2


# ---- 5: dataset to-xyz d.h5 d.h5 -----------------------------------------------------------------------


def test_5_to_xyz_onto_its_own_input_is_refused(tmp_path, dataset, capsys):
    before = digest(dataset)
    assert main(["dataset", "to-xyz", str(dataset), str(dataset)]) == 1
    assert "is also an input" in error_line(capsys)
    assert digest(dataset) == before
    with DatasetReader(dataset) as r:  # still the HDF5 file, with its teacher record
        assert len(r) == 5 and r.teacher == EMT_SPEC
    out = tmp_path / "d.extxyz"
    out.write_text("keep me\n")
    assert main(["dataset", "to-xyz", str(dataset), str(out)]) == 1
    assert "already exists" in error_line(capsys) and out.read_text() == "keep me\n"
    assert main(["dataset", "to-xyz", str(dataset), str(out), "--overwrite"]) == 0
    assert len(ase.io.read(out, ":")) == 5


# ---- 7: merge of shards labelled with different N -------------------------------------------------------


def test_7_merge_warns_about_frames_no_shard_covers_with_mixed_shard_counts(tmp_path, capsys):
    source = tmp_path / "in.extxyz"
    ase.io.write(source, cu_frames(8), format="extxyz")
    common = ["label", "--teacher", "emt", "--structures", str(source), "--quiet"]
    assert main(common + ["--out", str(tmp_path / "s0.h5"), "--shard", "0/2"]) == 0  # 0, 2, 4, 6
    assert main(common + ["--out", str(tmp_path / "s1.h5"), "--shard", "1/4"]) == 0  # 1, 5
    capsys.readouterr()
    assert main(["dataset", "merge", str(tmp_path / "all.h5"), str(tmp_path / "s0.h5"),
                 str(tmp_path / "s1.h5")]) == 0
    out = capsys.readouterr().out
    assert "warning: shards 0/2, 1/4 do not cover the whole input: 2 of 8 input frames" in out
    assert "frames [3, 7]" in out
    with DatasetReader(tmp_path / "all.h5") as r:
        assert r.input_index.tolist() == [0, 1, 2, 4, 5, 6]


# ---- 10: a zero-atom frame -----------------------------------------------------------------------------


def test_10_zero_atom_frames_are_refused_at_the_boundary(tmp_path, capsys):
    source = tmp_path / "in.extxyz"
    ase.io.write(source, [*cu_frames(2), Atoms()], format="extxyz")
    assert len(ase.io.read(source, ":")) == 3  # the empty frame is really in the file
    out = tmp_path / "d.h5"
    assert main(["label", "--teacher", "emt", "--structures", str(source), "--out", str(out), "--quiet"]) == 1
    assert f"{source}@2: structure has no atoms" in error_line(capsys)
    assert not out.exists()  # refused before the teacher saw anything
    with pytest.raises(DataError, match="no atoms"):
        with DatasetWriter(tmp_path / "w.h5", EMT_SPEC, {}) as w:
            w.add({**labelled(cu_frames(1))[0], "atomic_numbers": np.zeros(0, int),
                   "positions": np.zeros((0, 3)), "forces": np.zeros((0, 3))})


def test_10_a_dataset_holding_an_empty_structure_is_named_not_averaged(tmp_path, dataset, capsys):
    import h5py

    with h5py.File(dataset, "r+") as f:  # a file another tool wrote: structure 2 has no atoms
        n = f["structures/n_atoms"][()]
        n[1] += n[2]
        n[2] = 0
        f["structures/n_atoms"][...] = n
    assert main(["dataset", "info", str(dataset)]) == 1
    assert "structures [2] have no atoms" in error_line(capsys)


# ---- 11: one line instead of a traceback ---------------------------------------------------------------


def test_11_unwritable_places_are_one_line_naming_the_file(tmp_path, dataset, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a directory\n")
    source = tmp_path / "in.extxyz"
    ase.io.write(source, cu_frames(2), format="extxyz")
    runs = [
        (["label", "--teacher", "emt", "--structures", str(source), "--out", str(blocker / "d.h5"),
          "--quiet"], "not a directory"),
        (["dataset", "merge", str(blocker / "m.h5"), str(dataset)], "not a directory"),
        (["dataset", "to-xyz", str(dataset), str(blocker / "d.extxyz")], "not a directory"),
    ]
    for argv, message in runs:
        assert main(argv) == 1
        line = error_line(capsys)
        assert message in line.lower() and str(blocker) in line, line


def test_11_md_traj_that_is_a_directory(tmp_path, md_inputs, capsys):
    assert main(md_inputs + ["--traj", str(tmp_path)]) == 1
    assert f"trajectory {tmp_path} is a directory" in error_line(capsys)


@pytest.mark.parametrize("command", ["train", "compare", "distill"])
def test_11_run_directory_that_is_a_file(tmp_path, dataset, command, capsys):
    out = tmp_path / "RUN"
    out.write_text("my notes\n")
    argv = {
        "train": ["train", "--data", str(dataset), "--out", str(out), "--quiet"],
        "compare": ["compare", "--student", "s.pt", "--teacher", "emt", "--data", str(dataset),
                    "--out", str(out), "--quiet"],
        "distill": ["distill", "--teacher", "emt", "--structures", "x.xyz", "--out", str(out), "--quiet"],
    }[command]
    assert main(argv) == 1
    assert f"--out {out} is an existing file, not a directory" in error_line(capsys)
    assert out.read_text() == "my notes\n"


def test_11_corrupt_hdf5_header(tmp_path, dataset, capsys):
    data = bytearray(dataset.read_bytes())
    data[8:64] = b"\xff" * 56  # the superblock after the signature
    dataset.write_bytes(bytes(data))
    assert main(["dataset", "info", str(dataset)]) == 1
    assert f"{dataset} is not a readable HDF5 file" in error_line(capsys)


def test_11_a_bug_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    import mlff_calc.cli.dataset as dataset_cli

    def broken(args):
        raise IndexError("index 30 is out of bounds for dimension 0 with size 30")

    monkeypatch.setattr(dataset_cli, "run", broken)
    assert main(["dataset", "info", "x.h5"]) == 1
    line = error_line(capsys)
    assert "IndexError: index 30 is out of bounds" in line and "run with --debug" in line
    for argv in (["--debug", "dataset", "info", "x.h5"], ["dataset", "--debug", "info", "x.h5"],
                 ["dataset", "info", "x.h5", "--debug"]):
        assert main(argv) == 1
        assert "Traceback (most recent call last)" in capsys.readouterr().err, argv


# ---- 12: messages that name the actual problem ---------------------------------------------------------


def nan_structure(path: Path) -> Path:
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.positions[3, 1] = np.nan
    ase.io.write(path, atoms, format="extxyz")
    return path


def test_12_md_with_nan_positions_says_so(tmp_path, md_inputs, capsys):
    md_inputs[4] = str(nan_structure(tmp_path / "nan.xyz"))
    assert main(md_inputs) == 1
    line = error_line(capsys)
    assert "non-finite positions (NaN or inf) of atoms [3]" in line and "Eigenvalues" not in line


def test_12_label_with_nan_positions_is_refused_not_a_teacher_failure(tmp_path, capsys):
    source = tmp_path / "in.extxyz"
    ase.io.write(source, [*cu_frames(1), ase.io.read(nan_structure(tmp_path / "nan.xyz"))], format="extxyz")
    out = tmp_path / "d.h5"
    assert main(["label", "--teacher", "emt", "--structures", str(source), "--out", str(out), "--quiet"]) == 1
    assert f"{source}@1: non-finite positions" in error_line(capsys)
    assert not out.exists()


def test_12_md_pressure_nan_is_refused_at_parse_time(md_inputs, capsys):
    with pytest.raises(SystemExit) as exc:
        main(md_inputs + ["--ensemble", "npt", "--pressure", "nan"])
    assert exc.value.code == 2
    assert "argument --pressure: expected a finite number, got 'nan'" in error_line(capsys)


def test_12_keep_velocities_needs_velocities(md_inputs, capsys):
    assert main(md_inputs + ["--keep-velocities"]) == 1
    assert "--keep-velocities" in error_line(capsys)


def test_12_traj_xyz_is_extended_xyz_and_other_names_are_refused(tmp_path, md_inputs, capsys):
    out = tmp_path / "x.xyz"
    assert main(md_inputs + ["--traj", str(out)]) == 0
    assert out.read_text().splitlines()[0].strip() == "32"  # text, not a binary ASE trajectory
    frames = ase.io.read(out, ":", format="extxyz")
    assert len(frames) == 3 and np.isfinite(frames[-1].get_forces()).all()
    capsys.readouterr()
    assert main(md_inputs + ["--traj", str(tmp_path / "x.dat")]) == 1
    assert "must end in .traj" in error_line(capsys) and not (tmp_path / "x.dat").exists()


class KernelFailure(Calculator):
    """EMT until the 4th call, then an error that is not physics (a kernel failure, out of memory)."""

    implemented_properties = ["energy", "forces"]

    def __init__(self):
        super().__init__()
        self.calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.calls += 1
        if self.calls >= 4:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        emt = EMT()
        emt.calculate(self.atoms, ["energy", "forces"], all_changes)
        self.results = {k: emt.results[k] for k in ("energy", "forces")}


def test_md_a_kernel_failure_is_not_a_blow_up_and_the_frames_are_kept(tmp_path):
    traj = tmp_path / "md.traj"
    with pytest.raises(RuntimeError, match="illegal memory access") as info:
        run_md(bulk("Cu", "fcc", a=3.6, cubic=True), KernelFailure(), ensemble="nve", steps=10, interval=1,
               traj=traj, progress=False)
    assert not isinstance(info.value, MDBlowUp)
    with Trajectory(traj) as frames:  # the good frames, whole and renamed into place
        assert len(frames) == 3
    assert not list(tmp_path.glob(".*.tmp"))
