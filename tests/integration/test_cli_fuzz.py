"""Every command on a table of bad inputs: a non-zero exit, exactly one line on stderr, no traceback, and
not one byte of any file changed (nor a stray file left behind).

Files: ``{d}`` is a directory of inputs shared by every row (hashed before and after each row): a good
structure file, NaN positions, a zero-atom frame, garbage, a labelled dataset, a corrupt one, a student
checkpoint, a garbage one, garbage YAML, a plain file (``afile.txt``: an output path under it cannot be
written, even as root) and a directory. Most rows run in-process through ``mlff_calc.cli.main``; a few run
as real subprocesses of ``python -m mlff_calc``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

from mlff_calc.cli import main
from mlff_calc.data.hdf5 import write_frames

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_student) -> Path:
    d = tmp_path_factory.mktemp("fuzz")
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    ase.io.write(d / "good.extxyz", [cu, cu.copy()], format="extxyz")
    nan = cu.copy()
    nan.positions[1, 2] = np.nan
    ase.io.write(d / "nan.extxyz", [cu, nan], format="extxyz")
    ase.io.write(d / "zero_atoms.extxyz", [cu, Atoms()], format="extxyz")
    (d / "garbage.extxyz").write_text("this is\nnot a structure file\n")
    labelled = cu.copy()
    labelled.calc = EMT()
    frame = {"atomic_numbers": cu.numbers, "positions": cu.positions, "cell": cu.cell.array, "pbc": cu.pbc,
             "energy": labelled.get_potential_energy(), "forces": labelled.get_forces(), "stress": None,
             "input_index": 0}
    write_frames(d / "d.h5", [frame], {"name": "emt", "options": {}}, {"command": "fuzz"})
    data = bytearray((d / "d.h5").read_bytes())
    data[8:64] = b"\xff" * 56
    (d / "corrupt.h5").write_bytes(bytes(data))
    shutil.copyfile(tiny_student, d / "student.pt")
    (d / "garbage.pt").write_bytes(os.urandom(512))
    (d / "garbage.yaml").write_text("run: [epochs: 2\n  {unclosed\n")
    (d / "afile.txt").write_text("a plain file\n")
    (d / "adir").mkdir()
    return d


def snapshot(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(d.rglob("*"))}


MD = "md --model {d}/student.pt --structure {d}/good.extxyz --steps 2 --quiet --device cpu"
LABEL = "label --teacher emt --quiet"
SAMPLE = "sample --teacher emt --frames 2 --quiet"
TRAIN = "train --data {d}/d.h5 --epochs 1 --quiet --device cpu"
COMPARE = "compare --teacher emt --quiet --nve-steps 0 --device cpu"
DISTILL = "distill --teacher emt --quiet --preset quick --device cpu"

# (command line, regex the error line must match)
ROWS = [
    # sample
    (f"{SAMPLE} --structures {{d}}/missing.xyz --out {{d}}/o.extxyz", "structure file not found"),
    (f"{SAMPLE} --structures {{d}}/adir --out {{d}}/o.extxyz", "is a directory"),
    (f"{SAMPLE} --structures {{d}}/good.extxyz --out {{d}}/good.extxyz --overwrite", "is also an input"),
    (f"{SAMPLE} --structures {{d}}/good.extxyz --out {{d}}/afile.txt", "already exists; pass --overwrite"),
    (f"{SAMPLE} --structures {{d}}/good.extxyz --out {{d}}/afile.txt/o.extxyz",
     "is a file, not a directory"),
    (f"{SAMPLE} --structures {{d}}/good.extxyz --out {{d}}/adir", "is a directory"),
    (f"{SAMPLE} --structures {{d}}/nan.extxyz --out {{d}}/o.extxyz", r"nan.extxyz@1: non-finite positions"),
    (f"{SAMPLE} --structures {{d}}/zero_atoms.extxyz --out {{d}}/o.extxyz", "@1: structure has no atoms"),
    (f"{SAMPLE} --structures {{d}}/garbage.extxyz --out {{d}}/o.extxyz", "cannot read structures"),
    (f"{SAMPLE} --structures {{d}}/good.extxyz --out {{d}}/o.extxyz --timestep nan",
     "expected a finite number"),
    # label
    (f"{LABEL} --structures {{d}}/missing.xyz --out {{d}}/o.h5", "structure file not found"),
    (f"{LABEL} --structures {{d}}/adir --out {{d}}/o.h5", "is a directory"),
    (f"{LABEL} --structures {{d}}/good.extxyz --out {{d}}/good.extxyz", "also the --structures input"),
    (f"{LABEL} --structures {{d}}/good.extxyz --out {{d}}/corrupt.h5", "not a readable HDF5 file"),
    (f"{LABEL} --structures {{d}}/good.extxyz --out {{d}}/afile.txt", "not a readable HDF5 file"),
    (f"{LABEL} --structures {{d}}/good.extxyz --out {{d}}/d.h5", "was labelled from a different input"),
    (f"{LABEL} --structures {{d}}/good.extxyz --out {{d}}/adir", "is a directory"),
    (f"{LABEL} --structures {{d}}/good.extxyz --out {{d}}/afile.txt/o.h5", "not a directory"),
    (f"{LABEL} --structures {{d}}/nan.extxyz --out {{d}}/o.h5", "non-finite positions"),
    (f"{LABEL} --structures {{d}}/zero_atoms.extxyz --out {{d}}/o.h5", "structure has no atoms"),
    (f"{LABEL} --structures {{d}}/good.extxyz --out {{d}}/o.h5 --shard 3/2", r"need 0 <= I < N"),
    # dataset
    ("dataset info {d}/missing.h5", "no such dataset file"),
    ("dataset info {d}/adir", "is a directory"),
    ("dataset info {d}/corrupt.h5", "not a readable HDF5 file"),
    ("dataset info {d}/good.extxyz", "not a readable HDF5 file"),
    ("dataset to-xyz {d}/d.h5 {d}/d.h5 --overwrite", "is also an input"),
    ("dataset to-xyz {d}/d.h5 {d}/afile.txt", "already exists"),
    ("dataset to-xyz {d}/d.h5 {d}/afile.txt/o.extxyz", "not a directory"),
    ("dataset to-xyz {d}/corrupt.h5 {d}/o.extxyz", "not a readable HDF5 file"),
    ("dataset from-xyz {d}/good.extxyz {d}/o.h5", "has no energy or forces"),
    ("dataset from-xyz {d}/nan.extxyz {d}/o.h5", "non-finite positions"),
    ("dataset from-xyz {d}/zero_atoms.extxyz {d}/o.h5", "structure has no atoms"),
    ("dataset from-xyz {d}/good.extxyz {d}/good.extxyz --overwrite", "is also an input"),
    ("dataset from-xyz {d}/good.extxyz {d}/d.h5", "already exists"),
    ("dataset merge {d}/d.h5 {d}/d.h5 --overwrite", "is also an input"),
    ("dataset merge {d}/o.h5 {d}/corrupt.h5", "not a readable HDF5 file"),
    ("dataset merge {d}/o.h5 {d}/missing.h5", "no such dataset file"),
    ("dataset merge {d}/afile.txt/o.h5 {d}/d.h5", "not a directory"),
    ("dataset merge {d}/afile.txt {d}/d.h5", "already exists"),
    ("dataset merge {d}/o.h5 {d}/d.h5 {d}/d.h5", "given twice"),
    # train
    ("train --data {d}/missing.h5 --out {d}/run --quiet", "missing.h5"),
    ("train --data {d}/corrupt.h5 --out {d}/run --quiet", "not a readable HDF5 file"),
    ("train --data {d}/good.extxyz --out {d}/run --quiet", "not a readable HDF5 file"),
    (f"{TRAIN} --out {{d}}/afile.txt", "is an existing file, not a directory"),
    (f"{TRAIN} --out {{d}}/run --config {{d}}/garbage.yaml", "garbage.yaml"),
    (f"{TRAIN} --out {{d}}/run --config {{d}}/missing.yaml", "missing.yaml"),
    (f"{TRAIN} --out {{d}}/run --max-time nan", "expected a finite number"),
    # md
    ("md --model {d}/missing.pt --structure {d}/good.extxyz --quiet", "model file not found"),
    ("md --model {d}/garbage.pt --structure {d}/good.extxyz --quiet --device cpu", "garbage.pt"),
    ("md --model {d}/adir --structure {d}/good.extxyz --quiet", "is a directory"),
    ("md --model {d}/student.pt --structure {d}/nan.extxyz --quiet", "non-finite positions"),
    ("md --model {d}/student.pt --structure {d}/zero_atoms.extxyz --quiet", "structure has no atoms"),
    ("md --model {d}/student.pt --structure {d}/garbage.extxyz --quiet", "cannot read structure"),
    (f"{MD} --traj {{d}}/adir", "is a directory"),
    (f"{MD} --traj {{d}}/afile.txt", "already exists; pass --overwrite"),
    (f"{MD} --traj {{d}}/afile.txt/md.traj", "is a file, not a directory"),
    (f"{MD} --traj {{d}}/good.extxyz --overwrite", "is also an input"),
    (f"{MD} --log {{d}}/student.pt --overwrite", "is also an input"),
    (f"{MD} --traj {{d}}/md.dat", r"must end in \.traj"),
    (f"{MD} --keep-velocities", "stores no velocities"),
    (f"{MD} --pressure nan", "expected a finite number"),
    (f"{MD} --temperature inf", "expected a finite number"),
    (f"{MD} --steps -1", "steps must be"),
    (f"{MD} --interval 0", "interval must be"),
    # compare
    (f"{COMPARE} --student {{d}}/missing.pt --data {{d}}/d.h5 --out {{d}}/r", "missing.pt"),
    (f"{COMPARE} --student {{d}}/garbage.pt --data {{d}}/d.h5 --out {{d}}/r", "garbage.pt"),
    (f"{COMPARE} --student {{d}}/student.pt --data {{d}}/corrupt.h5 --out {{d}}/r", "not a readable HDF5"),
    (f"{COMPARE} --student {{d}}/student.pt --structures {{d}}/nan.extxyz --out {{d}}/r",
     "non-finite positions"),
    (f"{COMPARE} --student {{d}}/student.pt --data {{d}}/d.h5 --out {{d}}/afile.txt", "not a directory"),
    # distill
    (f"{DISTILL} --structures {{d}}/missing.xyz --out {{d}}/run", "missing.xyz"),
    (f"{DISTILL} --structures {{d}}/nan.extxyz --out {{d}}/run", "non-finite positions"),
    (f"{DISTILL} --structures {{d}}/good.extxyz --out {{d}}/afile.txt", "not a directory"),
    (f"{DISTILL} --structures {{d}}/good.extxyz --out {{d}}/run --recipe {{d}}/garbage.yaml", "garbage.yaml"),
    # export
    ("export {d}/missing.pt --out {d}/m.pt", "missing.pt"),
    ("export {d}/garbage.pt --out {d}/m.pt", "garbage.pt"),
    ("export {d}/adir --out {d}/m.pt", "adir"),
    ("export {d}/student.pt --out {d}/student.pt --overwrite", "is also an input"),
    ("export {d}/student.pt --out {d}/afile.txt", "already exists"),
    ("export {d}/student.pt --out {d}/afile.txt/m.pt", "not a directory"),
    ("export {d}/student.pt --out {d}/m.pt --format onnx", "invalid choice"),
    # calibrate, md --max-uncertainty, compare --gate (issue 10)
    ("calibrate --model {d}/student.pt --data {d}/d.h5 --out {d}/student.pt --overwrite", "is also an input"),
    ("calibrate --model {d}/student.pt --data {d}/d.h5", "no output checkpoint"),
    ("calibrate --model {d}/garbage.pt --data {d}/d.h5 --out {d}/c.pt", "garbage.pt"),
    ("calibrate --model {d}/student.pt --data {d}/corrupt.h5 --out {d}/c.pt", "corrupt.h5"),
    ("calibrate --model {d}/student.pt --data {d}/d.h5 --out {d}/afile.txt", "already exists"),
    (f"{MD} --max-uncertainty -1", "max_uncertainty must be a finite number > 0"),
    (f"{MD} --structure {{d}}/good.extxyz --max-uncertainty 0.1", "not with batched runs"),
    (f"{COMPARE} --student {{d}}/student.pt --data {{d}}/d.h5 --out {{d}}/r --gate {{d}}/garbage.yaml",
     "garbage.yaml"),
    (f"{COMPARE} --student {{d}}/student.pt --data {{d}}/d.h5 --out {{d}}/r --gate {{d}}/missing.yaml",
     "missing.yaml"),
]
# Also run as real processes: the console entry point, exit codes and stderr as a user sees them.
SUBPROCESS = {
    "dataset info {d}/corrupt.h5",
    f"{MD} --traj {{d}}/afile.txt",
    f"{LABEL} --structures {{d}}/nan.extxyz --out {{d}}/o.h5",
}


def check(code: int, err: str, pattern: str, before: dict, after: dict, line: str) -> None:
    assert code != 0, f"{line}: exit code 0"
    assert "Traceback" not in err, f"{line}: {err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"{line}: {len(lines)} lines on stderr:\n{err}"
    assert re.search(pattern, lines[0]), f"{line}: {lines[0]!r} does not match {pattern!r}"
    assert after == before, f"{line}: files changed: " + str(
        {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)})


def test_every_command_on_bad_input_fails_in_one_line_and_changes_nothing(files, capsys):
    assert len(ROWS) >= 60
    failures = []
    for line, pattern in ROWS:
        before = snapshot(files)
        argv = line.format(d=files).split()
        try:
            code = main(argv)
        except SystemExit as exc:  # usage errors (argparse): exit code 2
            code = exc.code
        err = capsys.readouterr().err
        try:
            check(code, err, pattern, before, snapshot(files), line)
        except AssertionError as exc:
            failures.append(str(exc))
        for leftover in set(snapshot(files)) - set(before):  # keep the rows independent
            path = files / leftover
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("line, pattern", [row for row in ROWS if row[0] in SUBPROCESS])
def test_as_a_real_process(files, line, pattern):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    before = snapshot(files)
    proc = subprocess.run([sys.executable, "-m", "mlff_calc", *line.format(d=files).split()], env=env,
                          capture_output=True, text=True, timeout=120)
    check(proc.returncode, proc.stderr, pattern, before, snapshot(files), line)
    assert proc.returncode == 1
