"""``mlff-calc label`` and ``mlff-calc dataset``: kill -9 and resume, bad input, shards, conversions."""

import hashlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import bulk, fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from mlff_calc.cli import main
from mlff_calc.data.hdf5 import DatasetReader, journal_dir, pending_frames
from mlff_calc.data.structures import fingerprint

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


@pytest.fixture(autouse=True)
def _test_teachers_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))  # slow_teacher:slow_emt, slow_teacher:flaky_emt


def structures(n: int = 64, seed: int = 0) -> list:
    """Rattled small EMT systems of 1..8 atoms: bulk (stress), clusters (no pbc) and slabs (mixed pbc)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        el = ["Cu", "Pt", "Au", "Ni", "Ag", "Al", "Pd"][i % 7]
        kind = i % 4
        if kind == 0:
            atoms = bulk(el, "fcc", a=4.0, cubic=True)  # 4 atoms
        elif kind == 1:
            atoms = bulk(el, "fcc", a=4.0) * (1, 1, 1 + i % 8)  # 1..8 atoms
        elif kind == 2:
            atoms = fcc111(el, size=(1, 2, 3), vacuum=4.0)  # 6 atoms, pbc (T, T, F)
            atoms.info.clear()
        else:
            atoms = bulk(el, "fcc", a=4.0) * (1, 1, 2 + i % 3)
            atoms.pbc = False
            atoms.center(vacuum=3.0)
        atoms.rattle(0.05, seed=int(rng.integers(1 << 30)))
        out.append(atoms)
    return out


def write_input(path: Path, frames: list) -> list:
    ase.io.write(path, frames, format="extxyz")
    return ase.io.read(path, index=":")  # exactly what the CLI will read


def emt_reference(frames: list) -> list[tuple]:
    ref = []
    for atoms in frames:
        a = atoms.copy()
        a.calc = EMT()
        stress = a.get_stress(voigt=False) if a.pbc.all() else np.full((3, 3), np.nan)
        ref.append((a.get_potential_energy(), a.get_forces(), stress))
    return ref


def assert_labels(path: Path, frames: list, ref: list, expected=None) -> int:
    """The file holds input frames ``expected`` (default: a prefix), each once, with EMT's own labels."""
    with DatasetReader(path) as r:
        idx = r.input_index.tolist()
        assert idx == (list(range(len(r))) if expected is None else list(expected)), idx
        for k, i in enumerate(idx):
            fr = r.frame(k)
            np.testing.assert_array_equal(fr["atomic_numbers"], frames[i].numbers)
            np.testing.assert_array_equal(fr["positions"], frames[i].positions)
            np.testing.assert_array_equal(fr["cell"], np.asarray(frames[i].cell))
            np.testing.assert_array_equal(fr["pbc"], frames[i].pbc)
            energy, forces, stress = ref[i]
            assert abs(fr["energy"] - energy) <= 1e-8
            np.testing.assert_allclose(fr["forces"], forces, rtol=0, atol=1e-8)
            np.testing.assert_allclose(fr["stress"], stress, rtol=0, atol=1e-8)  # NaN where no stress
        return len(r)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------


def wait_for_progress_bar(proc, total: int, timeout: float = 60.0) -> None:
    """Block until the labelling run prints its progress bar (teacher loaded, frames being labelled)."""
    fd, seen, deadline = proc.stderr.fileno(), b"", time.monotonic() + timeout
    while f"/{total}".encode() not in seen and proc.poll() is None and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.05)[0]:
            seen += os.read(fd, 65536)


def test_sigkill_mid_labelling_then_resume_labels_every_frame_once_in_order(tmp_path):
    frames = write_input(tmp_path / "in.extxyz", structures(64))
    ref = emt_reference(frames)
    out = tmp_path / "data.h5"
    cmd = [
        sys.executable,
        "-m",
        "mlff_calc",
        "label",
        "--teacher",
        "slow_teacher:slow_emt",
        "--teacher-option",
        "delay=0.03",
        "--structures",
        str(tmp_path / "in.extxyz"),
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--commit-interval",
        "0.2",
        "--compact-interval",
        "0.25",
    ]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    seed = int(os.environ.get("MLFF_CALC_TEST_SEED") or random.randrange(2**32))  # set it to replay a failure
    rng = random.Random(seed)
    durable, kills, progress = 0, 0, []
    for attempt in range(5):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if (
            attempt < 4
        ):  # kill at a random moment of the labelling loop: mid-teacher, mid-commit, mid-compaction
            wait_for_progress_bar(proc, 64)
            time.sleep(rng.uniform(0.05, 0.6))
            proc.send_signal(signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=120)
        if proc.returncode == -signal.SIGKILL:
            kills += 1
        else:
            assert proc.returncode == 0, f"seed {seed}: {stderr.decode()}"
        # a reader right after the kill sees whole frames only: a prefix of the input, EMT's labels
        seen = assert_labels(out, frames, ref)
        now = seen + pending_frames(out)[0]  # + committed batches the next run folds in
        assert now >= durable, f"seed {seed}: committed frames were lost by kill {attempt}"
        durable = now
        progress.append(now)
    assert kills == 4 and 0 < progress[3] < 64, f"seed {seed}: kills did not land mid-run: {progress}"
    assert "64/64 frames labelled" in stdout.decode()
    assert assert_labels(out, frames, ref) == 64
    assert not journal_dir(out).exists() and sorted(os.listdir(tmp_path)) == ["data.h5", "in.extxyz"]


def test_teacher_failures_are_recorded_skipped_and_not_retried(tmp_path, capsys):
    frames = write_input(tmp_path / "in.extxyz", structures(24))
    bad = {i for i, a in enumerate(frames) if len(a) in (3, 6)}  # flaky_emt: exception / NaN forces
    assert bad and len(bad) < len(frames)
    out = tmp_path / "data.h5"
    args = [
        "label",
        "--teacher",
        "slow_teacher:flaky_emt",
        "--structures",
        str(tmp_path / "in.extxyz"),
        "--out",
        str(out),
        "--quiet",
        "--batch-size",
        "4",
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert f"{24 - len(bad)}/24 frames labelled" in text and f"{len(bad)} frames failed" in text
    assert "SCF not converged" in text and "non-finite forces" in text
    good = [i for i in range(24) if i not in bad]
    assert_labels(out, frames, emt_reference(frames), expected=good)
    with DatasetReader(out) as r:
        assert set(r.failed_index.tolist()) == bad
    before = digest(out)
    assert main(args) == 0  # resume: nothing to do, failures are not retried
    assert "(0 now" in capsys.readouterr().out and digest(out) == before
    assert main(args + ["--retry-failures"]) == 0  # retried, fail again: recorded once, no duplicates
    assert "(0 now" in capsys.readouterr().out
    with DatasetReader(out) as r:
        assert sorted(r.failed_index.tolist()) == sorted(bad) and r.input_index.tolist() == good


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (b"this is not a structure file\n", "cannot read structures"),
        (None, "no such structure"),
    ],
)
def test_bad_structure_files_give_clear_errors(tmp_path, capsys, content, message):
    src = tmp_path / "in.xyz"
    if content is not None:
        src.write_bytes(content)
    assert main(["label", "--teacher", "emt", "--structures", str(src), "--out", str(tmp_path / "d.h5")]) == 1
    err = capsys.readouterr().err
    assert "mlff-calc label: error:" in err and message in err and "Traceback" not in err
    assert not (tmp_path / "d.h5").exists()


def test_bad_output_files_are_refused_and_left_untouched(tmp_path, capsys):
    frames = write_input(tmp_path / "in.extxyz", structures(12))
    out = tmp_path / "data.h5"
    base = ["label", "--structures", str(tmp_path / "in.extxyz"), "--out", str(out), "--quiet"]
    assert main(base + ["--teacher", "emt"]) == 0
    capsys.readouterr()
    good = digest(out)
    other = tmp_path / "other.extxyz"
    moved = [a.copy() for a in frames]
    moved[5].positions[0, 0] += 1e-6
    ase.io.write(other, moved)
    refusals = [
        (base + ["--teacher", "emt", "--teacher-option", "asap_cutoff=true"], "holds labels from teacher"),
        (base + ["--teacher", "slow_teacher:slow_emt"], "holds labels from teacher"),
        (base + ["--teacher", "emt", "--shard", "1/2"], "holds shard 0/1, not 1/2"),
        (["label", "--teacher", "emt", "--structures", str(other), "--out", str(out)], "different input"),
    ]
    for args, message in refusals:
        assert main(args) == 1
        assert message in capsys.readouterr().err
        assert digest(out) == good  # nothing labelled is lost or changed
    assert_labels(out, frames, emt_reference(frames))

    # corrupted files: garbage, truncated, foreign HDF5 -> one clear line, file untouched
    import h5py

    data = out.read_bytes()
    cases = {"garbage.h5": os.urandom(4096), "truncated.h5": data[: len(data) // 3]}
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["energies"] = np.zeros(3)
    for name, message in [
        ("garbage.h5", "not a readable HDF5 file"),
        ("truncated.h5", "not a readable HDF5 file"),
        ("foreign.h5", "not an mlff_calc dataset"),
    ]:
        target = tmp_path / name
        before = digest(target)
        for args in (base[:-2] + [str(target), "--teacher", "emt"], ["dataset", "info", str(target)]):
            assert main(args) == 1
            err = capsys.readouterr().err
            assert message in err and str(target) in err and "Traceback" not in err
        assert digest(target) == before


def test_shards_merge_back_into_input_order(tmp_path, capsys):
    frames = write_input(tmp_path / "in.extxyz", structures(15))
    common = ["--teacher", "emt", "--structures", str(tmp_path / "in.extxyz"), "--quiet"]
    for i in range(3):
        assert main(["label", *common, "--out", str(tmp_path / f"s{i}.h5"), "--shard", f"{i}/3"]) == 0
    with DatasetReader(tmp_path / "s1.h5") as r:
        assert r.input_index.tolist() == [1, 4, 7, 10, 13]
    shards = [str(tmp_path / f"s{i}.h5") for i in (2, 0, 1)]
    assert main(["dataset", "merge", str(tmp_path / "all.h5"), *shards]) == 0
    assert "15 structures" in capsys.readouterr().out
    assert_labels(tmp_path / "all.h5", frames, emt_reference(frames))
    assert main(["label", *common, "--out", str(tmp_path / "full.h5")]) == 0
    with DatasetReader(tmp_path / "all.h5") as a, DatasetReader(tmp_path / "full.h5") as b:
        for key, value in b.arrays().items():
            np.testing.assert_array_equal(a.arrays()[key], value, err_msg=key)
    # refusals: overlapping shards, another teacher
    assert main(["dataset", "merge", str(tmp_path / "dup.h5"), shards[0], shards[0]]) == 1
    assert "more than one file" in capsys.readouterr().err
    assert (
        main(
            [
                "label",
                "--teacher",
                "slow_teacher:slow_emt",
                "--teacher-option",
                "delay=0",
                "--structures",
                str(tmp_path / "in.extxyz"),
                "--out",
                str(tmp_path / "x.h5"),
                "--shard",
                "0/3",
                "--quiet",
            ]
        )
        == 0
    )
    assert main(["dataset", "merge", str(tmp_path / "mixed.h5"), str(tmp_path / "x.h5"), shards[0]]) == 1
    assert "was labelled by" in capsys.readouterr().err
    assert not (tmp_path / "mixed.h5").exists()


def labelled_extxyz(path: Path) -> list:
    """User's own 'DFT' data: EMT labels in SinglePointCalculators, some frames without stress."""
    frames = structures(10, seed=3)
    for a in frames:
        a.calc = EMT()
        results = {"energy": a.get_potential_energy(), "forces": a.get_forces()}
        if a.pbc.all():
            results["stress"] = a.get_stress()
        a.calc = SinglePointCalculator(a, **results)
    ase.io.write(path, frames, format="extxyz")
    return ase.io.read(path, index=":")


def test_extxyz_hdf5_extxyz_round_trip_is_exact(tmp_path, capsys):
    original = labelled_extxyz(tmp_path / "dft.extxyz")
    assert main(["dataset", "from-xyz", str(tmp_path / "dft.extxyz"), str(tmp_path / "dft.h5")]) == 0
    assert main(["dataset", "to-xyz", str(tmp_path / "dft.h5"), str(tmp_path / "back.extxyz")]) == 0
    back = ase.io.read(tmp_path / "back.extxyz", index=":")
    assert len(back) == len(original) == 10
    for a, b in zip(original, back):
        np.testing.assert_array_equal(a.numbers, b.numbers)
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(np.asarray(a.cell), np.asarray(b.cell))
        np.testing.assert_array_equal(a.pbc, b.pbc)
        assert a.get_potential_energy() == b.get_potential_energy()
        np.testing.assert_array_equal(a.get_forces(), b.get_forces())
        assert ("stress" in a.calc.results) == ("stress" in b.calc.results) == bool(a.pbc.all())
        if a.pbc.all():
            np.testing.assert_array_equal(a.get_stress(), b.get_stress())
    with DatasetReader(tmp_path / "dft.h5") as r:
        assert r.teacher["name"] == "external" and r.provenance["input"]["sha256"] == fingerprint(original)
    # refusals: unlabelled frames, an existing output
    capsys.readouterr()
    ase.io.write(tmp_path / "plain.extxyz", structures(3))
    assert main(["dataset", "from-xyz", str(tmp_path / "plain.extxyz"), str(tmp_path / "p.h5")]) == 1
    assert "frame 0 of" in capsys.readouterr().err and not (tmp_path / "p.h5").exists()
    assert main(["dataset", "from-xyz", str(tmp_path / "dft.extxyz"), str(tmp_path / "dft.h5")]) == 1
    assert "exists" in capsys.readouterr().err
    assert (
        main(["dataset", "from-xyz", str(tmp_path / "dft.extxyz"), str(tmp_path / "dft.h5"), "--overwrite"])
        == 0
    )


def test_dataset_info_reports_counts_statistics_and_failures(tmp_path, capsys):
    frames = write_input(tmp_path / "in.extxyz", structures(24))
    out = tmp_path / "data.h5"
    assert (
        main(
            [
                "label",
                "--teacher",
                "slow_teacher:flaky_emt",
                "--structures",
                str(tmp_path / "in.extxyz"),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["dataset", "info", str(out)]) == 0
    text = capsys.readouterr().out
    ok = [a for a in frames if len(a) not in (3, 6)]
    e_atom = np.array([emt_reference([a])[0][0] / len(a) for a in ok])
    forces = np.concatenate([emt_reference([a])[0][1] for a in ok])
    n_fail = len(frames) - len(ok)
    for expected in (
        "teacher      slow_teacher:flaky_emt",
        f"structures   {len(ok)} ({sum(map(len, ok))} atoms, "
        f"{min(map(len, ok))}..{max(map(len, ok))} per structure)",
        f"mean {e_atom.mean():.6g} eV, std {e_atom.std():.4g} eV",
        f"RMS component {np.sqrt(np.mean(forces**2)):.4g} eV/Å, "
        f"max |F| {np.linalg.norm(forces, axis=1).max():.4g}",
        f"stress       {sum(a.pbc.all() for a in ok)} of {len(ok)} structures",
        f"failures     {n_fail}",
        "SCF not converged",
    ):
        assert expected in text, expected
    assert main(["dataset", "info", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["structures"] == len(ok) and summary["failures"] == n_fail
    assert set(summary["elements"]) == {s for a in ok for s in a.get_chemical_symbols()}
