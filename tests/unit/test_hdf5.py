"""The HDF5 dataset: layout, validation, and crash safety of the writer under kill -9 at any moment."""

import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from mlff_calc.data.hdf5 import (
    FORMAT,
    SCHEMA,
    UNITS,
    DatasetReader,
    DatasetWriter,
    frames_to_arrays,
    journal_dir,
    pending_frames,
    read_header,
    write_frames,
)

TEACHER = {"name": "emt", "options": {}}
PKG = Path(__file__).resolve().parents[2] / "mlff_calc"


def make_frame(i: int) -> dict:
    """Deterministic frame ``i``: 1..7 atoms, mixed pbc, stress on every other frame."""
    rng = np.random.default_rng(i)
    n = 1 + i % 7
    return {
        "atomic_numbers": rng.integers(1, 90, n),
        "positions": rng.normal(size=(n, 3)) * 3,
        "cell": np.diag(rng.uniform(5, 9, 3)) + rng.normal(size=(3, 3)) * 0.1,
        "pbc": np.array([True, i % 3 > 0, i % 2 == 0]),
        "energy": float(rng.normal() * 10),
        "forces": rng.normal(size=(n, 3)),
        "stress": rng.normal(size=(3, 3)) * 0.01 if i % 2 == 0 else None,
        "input_index": i,
    }


_EXPECTED = {}  # frames_to_arrays(make_frame(0..n-1)), cached: the kill test checks many frames often


def assert_prefix(path, m=None):
    """``path`` holds exactly frames 0..m-1 of make_frame, bit for bit, in order; returns m."""
    with DatasetReader(path) as r:
        m = len(r) if m is None else m
        assert len(r) == m
        np.testing.assert_array_equal(r.input_index, np.arange(m))
        if m:
            if _EXPECTED.get("n", 0) < m:
                _EXPECTED.update(
                    frames_to_arrays([make_frame(i) for i in range(max(m, 4000))]), n=max(m, 4000)
                )
            got, atoms = r.arrays(), r.offsets[-1]
            for name, (per, _, _) in SCHEMA.items():
                want = _EXPECTED[name][: atoms if per == "atom" else m]
                np.testing.assert_array_equal(got[name], want, err_msg=name)
    return m


def test_round_trip_layout_and_attributes(tmp_path):
    path = tmp_path / "d.h5"
    frames = [make_frame(i) for i in range(9)]
    assert write_frames(path, frames, TEACHER, {"input": {"sha256": "x"}}, failures=[(20, "SCF failed")]) == 9
    with h5py.File(path) as f:  # DESIGN.md's layout, read with plain h5py
        assert f.attrs["format"] == FORMAT and int(f.attrs["format_version"]) == 1
        assert json.loads(f.attrs["units"]) == UNITS and json.loads(f.attrs["teacher"]) == TEACHER
        assert f["structures/positions"].shape == (sum(len(fr["atomic_numbers"]) for fr in frames), 3)
        assert f["structures/cells"].shape == (9, 3, 3) and f["structures/pbc"].dtype == bool
        assert f["labels/stress"].maxshape == (None, 3, 3) and f["labels/forces"].chunks is not None
        assert np.isnan(f["labels/stress"][1]).all() and np.isfinite(f["labels/stress"][0]).all()
    r = DatasetReader(path)
    assert len(r) == 9 and r.teacher == TEACHER and r.provenance["input"]["sha256"] == "x"
    assert r.failed_index.tolist() == [20] and r.failed_reason == ["SCF failed"]
    fr = r.frame(4)
    for key in ("atomic_numbers", "positions", "cell", "pbc", "forces", "stress"):
        np.testing.assert_array_equal(fr[key], frames[4][key])
    assert fr["energy"] == frames[4]["energy"] and r.frame(-1)["input_index"] == 8
    with pytest.raises(IndexError):
        r.frame(9)
    atoms = r.atoms(0)
    np.testing.assert_array_equal(atoms.get_forces(), frames[0]["forces"])
    # pickling (DataLoader workers) drops the open handle and reopens lazily
    assert r._h5 is not None
    clone = pickle.loads(pickle.dumps(r))
    assert clone._h5 is None and clone.frame(3)["energy"] == frames[3]["energy"]
    assert assert_prefix(path) == 9
    assert not journal_dir(path).exists() and sorted(os.listdir(tmp_path)) == ["d.h5"]


def test_writer_rejects_non_finite_and_misshapen_frames(tmp_path):
    with DatasetWriter(tmp_path / "d.h5", TEACHER, {}) as w:
        bad = make_frame(1)
        bad["forces"] = bad["forces"].copy()
        bad["forces"][0, 0] = np.nan
        with pytest.raises(ValueError, match="non-finite"):
            w.add(bad)
        with pytest.raises(ValueError, match="forces has shape"):
            w.add(dict(make_frame(2), forces=np.zeros((1, 3))))
        w.add(make_frame(0))
    assert_prefix(tmp_path / "d.h5", 1)


def test_second_writer_is_refused(tmp_path):
    with DatasetWriter(tmp_path / "d.h5", TEACHER, {}):
        with pytest.raises(RuntimeError, match="another process"):
            DatasetWriter(tmp_path / "d.h5", TEACHER, {})


def _broken(tmp_path, edit):
    path = tmp_path / "d.h5"
    write_frames(path, [make_frame(i) for i in range(3)], TEACHER, {})
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda f: f.attrs.__delitem__("units"), "missing attribute 'units'"),
        (
            lambda f: f.attrs.__setitem__("units", json.dumps(dict(UNITS, forces="kcal/mol/A"))),
            "forces is in 'kcal",
        ),
        (lambda f: f.attrs.__delitem__("format_version"), "format_version"),
        (lambda f: f.attrs.__setitem__("format", "schnetpack"), "format is 'schnetpack'"),
        (lambda f: f.attrs.__delitem__("teacher"), "missing attribute 'teacher'"),
        (lambda f: f.__delitem__("labels/forces"), "missing dataset /labels/forces"),
        (lambda f: f.__delitem__("labels"), "missing group /labels"),
        (lambda f: f["labels/energy"].resize(2, axis=0), "inconsistent"),
    ],
)
def test_reader_names_what_is_wrong(tmp_path, edit, message):
    path = _broken(tmp_path, edit)
    with pytest.raises(ValueError, match=message):
        DatasetReader(path)


def test_foreign_garbage_and_truncated_files(tmp_path):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["coordinates"] = np.zeros((3, 3))
    with pytest.raises(ValueError, match=r"not an mlff_calc dataset.*coordinates"):
        DatasetReader(foreign)
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(os.urandom(5000))
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        read_header(garbage)
    path = tmp_path / "trunc.h5"
    write_frames(path, [make_frame(i) for i in range(50)], TEACHER, {})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        DatasetReader(path)
    with pytest.raises(FileNotFoundError):
        DatasetReader(tmp_path / "missing.h5")


def test_crash_states_between_steps_are_recovered_exactly_once(tmp_path):
    """Every state a kill can leave between the steps of commit/compact resumes without loss or duplicates."""
    path = tmp_path / "d.h5"
    w = DatasetWriter(path, TEACHER, {}, compact_interval=1e9)
    for i in range(5):
        w.add(make_frame(i))
    w.commit()  # batch 1 durable in the journal, not yet compacted
    w.add(make_frame(5))  # queued only: lost by a kill, by design
    batch = journal_dir(path) / "000000001.npz"
    kept = batch.read_bytes()
    w._unlock()  # "kill": no close, no compaction
    del w
    assert assert_prefix(path) == 0 and pending_frames(path) == (5, 0)

    # a half-written batch and a half-copied file of the killed writer: ignored and removed
    (journal_dir(path) / "000000002.npz.tmp").write_bytes(b"PK\x03\x04 half a zip")
    (tmp_path / f".d.h5.tmp-{os.getpid() + 1}").write_bytes(b"\x89HDF half a file")
    w = DatasetWriter(path, compact_interval=1e9)  # resume: folds batch 1 in
    assert w.done()[0] == set(range(5))
    assert_prefix(path, 5)
    assert sorted(os.listdir(journal_dir(path))) == ["lock"] and sorted(os.listdir(tmp_path)) == [
        "d.h5",
        "d.h5.journal",
    ]

    # killed after the rename but before deleting the folded batch: it must not be applied twice
    batch.write_bytes(kept)
    w._unlock()
    del w
    with DatasetWriter(path) as w:
        assert w.done()[0] == set(range(5))
        for i in range(5, 8):
            w.add(make_frame(i))
    assert_prefix(path, 8)
    assert not journal_dir(path).exists()


def test_batches_of_another_file_are_never_mixed_in(tmp_path):
    path = tmp_path / "d.h5"
    w = DatasetWriter(path, TEACHER, {}, compact_interval=1e9)
    w.add(make_frame(0))
    w.commit()
    w._unlock()
    del w
    path.unlink()  # the user replaces d.h5 by another file; the old journal is still there
    write_frames(tmp_path / "other.h5", [make_frame(i) for i in range(2)], TEACHER, {})
    shutil.move(tmp_path / "other.h5", path)
    with pytest.warns(UserWarning, match="belongs to another file"):
        DatasetWriter(path).close()
    assert_prefix(path, 2)
    assert os.listdir(journal_dir(path)) == ["000000001.orphaned"]  # kept aside, not deleted


def test_failures_are_recorded_and_cleared_by_a_later_success(tmp_path):
    path = tmp_path / "d.h5"
    with DatasetWriter(path, TEACHER, {}) as w:
        w.add(make_frame(0))
        w.add_failure(1, "SCF not converged")
        w.add_failure(2, "NaN forces")
    r = DatasetReader(path)
    assert dict(zip(r.failed_index.tolist(), r.failed_reason)) == {1: "SCF not converged", 2: "NaN forces"}
    with DatasetWriter(path) as w:  # a retry: 1 succeeds, 2 fails again with a new reason
        w.add(make_frame(1))
        w.add_failure(2, "NaN forces again")
    r = DatasetReader(path)
    assert r.input_index.tolist() == [0, 1]
    assert dict(zip(r.failed_index.tolist(), r.failed_reason)) == {2: "NaN forces again"}


# A writer in a child process, killed with SIGKILL. It imports only the HDF5 module (a stub parent
# package skips importing torch), so a restart costs ~0.4 s and the test can afford many kills. Two ways:
# - at a random time: nearly all of the child's time is spent inside commit() and compact();
# - by fault injection: the child kills itself just before or just after its K-th file-system step
#   (np.savez, fsync, os.replace, copyfile, h5py close, unlink), so every boundary between the
#   steps of a commit or a compaction is hit, whatever the timing of the machine.
CHILD = r"""
import sys, types, os, signal, shutil
import numpy as np, h5py
for name, sub in (("mlff_calc", ""), ("mlff_calc.data", "/data")):
    mod = types.ModuleType(name); mod.__path__ = [sys.argv[1] + sub]; sys.modules[name] = mod
sys.path.insert(0, sys.argv[2])
from test_hdf5 import make_frame
from mlff_calc.data.hdf5 import DatasetWriter
path, (total, kill_at, every), interval = sys.argv[3], map(int, sys.argv[4:7]), float(sys.argv[7])
steps = [0]
def step():
    steps[0] += 1
    if steps[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
def hooked(fn):
    def call(*args, **kwargs):
        step()
        out = fn(*args, **kwargs)
        step()
        return out
    return call
for owner, name in ((np, "savez"), (os, "fsync"), (os, "replace"), (os, "unlink"), (shutil, "copyfile"),
                    (h5py.File, "close")):
    setattr(owner, name, hooked(getattr(owner, name)))
def say(line):  # one write(2) per line: a kill never leaves half a line (print may write in pieces
    os.write(1, (line + "\n").encode())  # when stdout is unbuffered, e.g. PYTHONUNBUFFERED=1)
w = DatasetWriter(path, {"name": "emt", "options": {}}, {}, compact_interval=interval)
start = len(w.done()[0])
say(f"ready {start}")
for i in range(start, total):
    w.add(make_frame(i))
    if i % every == every - 1:
        w.commit()
        say(f"committed {i + 1}")
w.close()
say("done")
"""


def test_sigkill_at_random_moments_never_loses_or_corrupts(tmp_path):
    path, total = tmp_path / "d.h5", 3000
    seed = int(os.environ.get("MLFF_CALC_TEST_SEED") or random.randrange(2**32))  # set it to replay a failure
    rng = random.Random(seed)
    plan = [("time", rng.uniform(0.0, 0.3)) for _ in range(5)] + [
        ("step", rng.randint(1, 80)) for _ in range(9)
    ]
    rng.shuffle(plan)
    committed, kills = 0, 0
    for how, when in plan + [("never", None)]:
        interval = "1e9" if how == "never" else rng.choice(["0", "0", "0.05"])
        kill_at = str(when) if how == "step" else "-1"
        every = "500" if how == "never" else "3"  # the last run just finishes the job
        argv = [str(PKG), str(Path(__file__).parent), str(path), str(total), kill_at, every, interval]
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        if how == "time":
            first = proc.stdout.readline()
            assert first.startswith("ready"), (first, proc.stderr.read())
            time.sleep(when)
            proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
        if proc.returncode == -signal.SIGKILL:
            kills += 1
        else:
            # not killed: only because there was too little left to do for the kill to come
            assert proc.returncode == 0 and out.endswith("done\n"), (
                f"seed {seed}, {how} {when}: writer failed: {err}"
            )
        lines = [line.split() for line in out.splitlines()]
        started = [int(x[1]) for x in lines if x[0] == "ready"]
        assert all(s >= committed for s in started), f"seed {seed}: committed frames lost before {how} {when}"
        committed = max([committed] + [int(x[1]) for x in lines if x[0] == "committed"])
        # what a reader sees right after the kill: a valid file holding a prefix, bit for bit
        if not path.exists():  # killed while creating the empty file: nothing was committed yet
            assert committed == 0, f"seed {seed}: the file vanished"
            continue
        seen = assert_prefix(path)
        pending, _ = pending_frames(path)
        assert seen + pending >= committed, f"seed {seed}: a committed frame is missing after {how} {when}"
    assert kills >= 10, f"seed {seed}: only {kills} kills landed"
    assert assert_prefix(path) == total and not journal_dir(path).exists()
