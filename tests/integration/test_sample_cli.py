"""``mlff-calc sample`` end to end with EMT on a tiny Cu cell, and its error messages."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
from ase.build import bulk, fcc111
from ase.io import read, write

from mlff_calc.cli import main


@pytest.fixture
def inputs(tmp_path):
    write(tmp_path / "cu.extxyz", bulk("Cu", cubic=True))
    slab = fcc111("Cu", (2, 2, 2), vacuum=4.0)
    slab.info.clear()  # ase.build's adsorbate_info cannot go into extxyz
    write(tmp_path / "slab.xyz", slab, format="extxyz")
    return tmp_path


def sample(tmp_path, *extra, out="frames.extxyz"):
    args = ["sample", "--teacher", "emt",
            "--structures", str(tmp_path / "cu.extxyz"), str(tmp_path / "slab.xyz"),
            "--out", str(tmp_path / out), "--frames", "9", "--interval", "2", "--temperatures", "300", "700",
            *extra]
    return main(args)


def test_sample_end_to_end_and_deterministic(inputs, capsys):
    assert sample(inputs, "--seed", "3") == 0
    err = capsys.readouterr().err
    assert "wrote 18 frames" in err and "frame/s" in err  # summary and progress bar with a rate
    frames = read(inputs / "frames.extxyz", ":")
    assert len(frames) == 18  # 9 per seed structure
    cell_modes = [f.info["mode"] for f in frames if f.info["seed_index"] == 0]
    slab_modes = [f.info["mode"] for f in frames if f.info["seed_index"] == 1]
    assert cell_modes == ["md"] * 5 + ["rattle"] * 2 + ["strain"] * 2  # 9 over md300, md700, rattle, strain
    assert slab_modes == ["md"] * 6 + ["rattle"] * 3  # no strain for a slab
    md = [f for f in frames if f.info["mode"] == "md"]
    assert sorted({f.info["temperature"] for f in md}) == [300.0, 700.0]
    assert all(f.calc is None and "forces" not in f.arrays for f in frames)  # no labels
    assert not list(inputs.glob("*.partial*"))

    text = (inputs / "frames.extxyz").read_text()
    assert sample(inputs, "--seed", "3", "--quiet", out="again.extxyz") == 0
    assert capsys.readouterr().err == ""  # --quiet: no bar, no summary
    assert (inputs / "again.extxyz").read_text() == text  # same seed, same bytes
    assert sample(inputs, "--seed", "4", "--quiet", out="other.extxyz") == 0
    assert (inputs / "other.extxyz").read_text() != text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--structures", "missing.xyz"], "structure file not found: .*missing.xyz"),
        (["--structures", "garbage.extxyz"], "cannot read structures from .*garbage.extxyz"),
        (["--structures", "empty.extxyz"], "empty.extxyz"),
        (["--teacher", "no-such-teacher"], "unknown teacher 'no-such-teacher'.*orb-v2"),
        (["--teacher-option", "cutoff=3"], "teacher 'emt' does not take option 'cutoff'"),
        (["--teacher-weights", "orb.ckpt"], "does not take option 'weights'"),
        (["--frames", "0"], "frames must be >= 1"),
        (["--temperatures", "-10"], "temperatures must be > 0"),
    ],
)
def test_sample_errors_are_one_clear_line(inputs, capsys, monkeypatch, args, message):
    monkeypatch.chdir(inputs)
    (inputs / "garbage.extxyz").write_text("not\na structure\n")
    (inputs / "empty.extxyz").write_text("")
    base = {"--teacher": "emt", "--structures": "cu.extxyz", "--out": "out.extxyz"}
    for key, value in zip(args[::2], args[1::2]):
        base[key] = value
    argv = ["sample"] + [x for kv in base.items() for x in kv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("mlff-calc sample: error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert not (inputs / "out.extxyz").exists() and not list(inputs.glob("out.partial*"))


@pytest.mark.skipif(shutil.which("mlff-calc", path=os.path.dirname(sys.executable)) is None,
                    reason="console script not installed")
def test_console_script_runs(inputs):
    exe = shutil.which("mlff-calc", path=os.path.dirname(sys.executable))
    result = subprocess.run([exe, "sample", "--teacher", "emt", "--structures", str(inputs / "cu.extxyz"),
                             "--out", str(inputs / "cli.extxyz"), "--frames", "3", "--quiet"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(read(inputs / "cli.extxyz", ":")) == 3
