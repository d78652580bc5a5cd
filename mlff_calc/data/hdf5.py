"""The HDF5 dataset (``*.h5``): a crash-safe, append-only writer and a validating, lazy reader.

Layout (DESIGN.md), ``S`` structures with ``A`` atoms in total, ``F`` failed frames::

    /structures/atomic_numbers (A,)       int64
    /structures/positions      (A, 3)     float64  Å
    /structures/cells          (S, 3, 3)  float64  Å, rows are lattice vectors
    /structures/pbc            (S, 3)     bool
    /structures/n_atoms        (S,)       int64    (offsets = cumsum)
    /structures/input_index    (S,)       int64    frame index in the labelled input file
    /labels/energy             (S,)       float64  eV
    /labels/forces             (A, 3)     float64  eV/Å
    /labels/stress             (S, 3, 3)  float64  eV/Å³, NaN where the teacher gives none
    /failures/input_index      (F,)       int64    input frames the teacher failed on ...
    /failures/reason           (F,)       str      ... and why
    attrs: format, format_version, units (JSON), teacher (JSON), provenance (JSON), uid, journal_seq

Crash safety -- why a kill -9 at any instant never loses or corrupts a committed frame:

HDF5 updates its metadata (B-trees, heaps, superblock) in place, from an in-memory cache, in an order
the library chooses; a process killed half-way through a flush leaves a file that may not open at all,
taking every frame labelled so far with it. SWMR does not fix that for a *killed* writer (the file is
left marked "open for writing" and needs ``h5clear``). So the committed ``data.h5`` is **never modified
in place**:

1. ``commit()`` writes the pending frames to a small journal file ``data.h5.journal/<seq>.npz`` under a
   temporary name, fsyncs it and ``os.replace``-s it into place. A rename is atomic: the batch file
   either exists whole or not at all. This is the cheap, frequent durability point.
2. ``compact()`` (every ``compact_interval`` seconds, and on open/close) copies ``data.h5`` to a temporary
   file, appends the journal batches to the copy, records the last batch folded in as the ``journal_seq``
   attribute, closes and fsyncs the copy, then ``os.replace``-s it over ``data.h5``; only afterwards are
   the folded batches deleted. A kill before the rename leaves the old ``data.h5`` and every batch; a
   kill after it leaves batches with ``seq <= journal_seq``, which are recognised as already folded in.
3. Opening a writer (e.g. a resumed labelling run) removes stale temporaries and folds pending batches in.

A reader opens only ``data.h5``, which is always a whole file written and closed by h5py: it sees the
frames of the last compaction, each one complete. Batches carry the file's random ``uid`` so a journal
left next to a *different* file of the same name is never mixed in. An exclusive ``flock`` on the journal
stops two writers working on one file at once (the kernel drops it when a process dies).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterable

import h5py
import numpy as np

from .. import _keys as K

try:  # POSIX advisory locks; elsewhere the writer runs without the two-writer guard.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

FORMAT = "mlff_calc.dataset"
FORMAT_VERSION = 1
UNITS = {key: K.UNITS[key] for key in (K.ENERGY, K.FORCES, K.STRESS, K.POSITIONS, K.CELL)}

# dataset path -> (length runs over "atom" or "structure", trailing shape, dtype)
SCHEMA: dict[str, tuple[str, tuple[int, ...], str]] = {
    "structures/atomic_numbers": ("atom", (), "int64"),
    "structures/positions": ("atom", (3,), "float64"),
    "structures/cells": ("structure", (3, 3), "float64"),
    "structures/pbc": ("structure", (3,), "bool"),
    "structures/n_atoms": ("structure", (), "int64"),
    "structures/input_index": ("structure", (), "int64"),
    "labels/energy": ("structure", (), "float64"),
    "labels/forces": ("atom", (3,), "float64"),
    "labels/stress": ("structure", (3, 3), "float64"),
}
OPTIONAL = {"structures/input_index"}  # files from other producers may lack it: 0..S-1 then
_CHUNK = {"atom": 1024, "structure": 256}  # ~24 kB per chunk: cheap random access
_BATCH_RE = re.compile(r"^(\d{9})\.npz$")


def journal_dir(path: str | os.PathLike) -> Path:
    """Directory holding the committed-but-not-yet-compacted batches of ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".journal")


# ---------------------------------------------------------------------------------------------------
# small file-system helpers


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    # Makes a rename durable across power loss; a kill alone never needs it. Not every OS allows it.
    try:
        _fsync_file(path)
    except OSError:  # pragma: no cover
        pass


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _open_h5(path: Path, mode: str = "r") -> h5py.File:
    """``h5py.File`` whose failures (garbage, truncation, not HDF5) read as one clear ``ValueError``."""
    if not path.exists():
        raise FileNotFoundError(f"no such dataset file: {path}")
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        raise ValueError(
            f"{path} is not a readable HDF5 file (corrupted, truncated or not HDF5 at all): {exc}"
        ) from None


def _json_attr(f: h5py.File, name: str, path: Path) -> Any:
    try:
        return json.loads(f.attrs[name])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: attribute {name!r} is not valid JSON: {exc}") from None


# ---------------------------------------------------------------------------------------------------
# frames <-> column arrays


def frames_to_arrays(frames: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Concatenate frame dicts into the column arrays of ``SCHEMA``.

    A frame: ``atomic_numbers (n,)``, ``positions (n, 3)`` Å, ``cell (3, 3)`` Å, ``pbc (3,)``,
    ``energy`` eV, ``forces (n, 3)`` eV/Å, ``stress (3, 3)`` eV/Å³ or None, ``input_index`` int.
    """

    def column(values, shape, dtype):  # list of per-frame values -> one (rows, *shape) array
        return np.asarray(values, dtype=dtype).reshape((-1, *shape))

    def per_atom(key):
        return column(
            np.concatenate([np.reshape(f[key], (-1, 3)) for f in frames]) if frames else [], (3,), "float64"
        )

    nan33 = np.full((3, 3), np.nan)
    return {
        "structures/atomic_numbers": column(
            np.concatenate([np.ravel(f["atomic_numbers"]) for f in frames]) if frames else [], (), "int64"
        ),
        "structures/positions": per_atom("positions"),
        "structures/cells": column([f["cell"] for f in frames], (3, 3), "float64"),
        "structures/pbc": column([f["pbc"] for f in frames], (3,), "bool"),
        "structures/n_atoms": column([np.size(f["atomic_numbers"]) for f in frames], (), "int64"),
        "structures/input_index": column([f["input_index"] for f in frames], (), "int64"),
        "labels/energy": column([f["energy"] for f in frames], (), "float64"),
        "labels/forces": per_atom("forces"),
        "labels/stress": column(
            [nan33 if f.get("stress") is None else f["stress"] for f in frames], (3, 3), "float64"
        ),
    }


# ---------------------------------------------------------------------------------------------------
# reader


def _validate(f: h5py.File, path: Path) -> dict[str, Any]:
    """Check format, units and layout; return the header. ``ValueError`` naming what is wrong."""
    if "format" not in f.attrs:
        top = sorted(f.keys())
        raise ValueError(
            f"{path} is not an mlff_calc dataset: no 'format' attribute (top-level contents: {top})"
        )
    fmt = f.attrs["format"]
    fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
    if fmt != FORMAT:
        raise ValueError(f"{path} is not an mlff_calc dataset: format is {fmt!r}, expected {FORMAT!r}")
    if "format_version" not in f.attrs:
        raise ValueError(f"{path}: missing attribute 'format_version'")
    version = int(f.attrs["format_version"])
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {version} is newer than this mlff_calc reads ({FORMAT_VERSION})"
        )
    for name in ("units", "teacher", "provenance"):
        if name not in f.attrs:
            raise ValueError(
                f"{path}: missing attribute {name!r}"
                + (" (refusing to guess the units of the labels)" if name == "units" else "")
            )
    units = _json_attr(f, "units", path)
    for key, unit in UNITS.items():
        if not isinstance(units, dict) or key not in units:
            raise ValueError(f"{path}: attribute 'units' has no entry for {key!r} (expected {unit!r})")
        if units[key] != unit:
            raise ValueError(f"{path}: {key} is in {units[key]!r}, expected {unit!r}; convert the file first")
    for group in ("structures", "labels"):
        if group not in f or not isinstance(f[group], h5py.Group):
            raise ValueError(f"{path}: missing group /{group}")
    n_structures = None
    for name, (per, tail, _) in SCHEMA.items():
        if name not in f:
            if name in OPTIONAL:
                continue
            raise ValueError(f"{path}: missing dataset /{name}")
        shape = f[name].shape
        if shape is None or tuple(shape[1:]) != tail:
            raise ValueError(f"{path}: /{name} has shape {shape}, expected (n, {', '.join(map(str, tail))})")
    n_structures = f["structures/n_atoms"].shape[0]
    n_atoms_total = int(np.sum(f["structures/n_atoms"][()]))
    for name, (per, _, _) in SCHEMA.items():
        if name in f:
            want = n_atoms_total if per == "atom" else n_structures
            if f[name].shape[0] != want:
                raise ValueError(
                    f"{path}: /{name} has {f[name].shape[0]} rows, expected {want} "
                    f"(one per {per}); the file is inconsistent"
                )
    return {
        "format": fmt,
        "format_version": version,
        "units": units,
        "teacher": _json_attr(f, "teacher", path),
        "provenance": _json_attr(f, "provenance", path),
        "uid": str(f.attrs.get("uid", "")),
        "journal_seq": int(f.attrs.get("journal_seq", 0)),
    }


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """Validated attributes of a dataset file: format, units, teacher, provenance, uid, journal_seq."""
    path = Path(path)
    with _open_h5(path) as f:
        return _validate(f, path)


class DatasetReader:
    """Read-only view of a dataset file; validates on construction, opens the HDF5 handle lazily.

    The handle is dropped when pickled, so the reader can travel to DataLoader worker processes.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._h5: h5py.File | None = None
        with _open_h5(self.path) as f:
            self.header = _validate(f, self.path)
            self.n_atoms = f["structures/n_atoms"][()].astype(np.int64)  # (S,)
            n = len(self.n_atoms)
            self.input_index = (
                f["structures/input_index"][()].astype(np.int64)
                if "structures/input_index" in f
                else np.arange(n, dtype=np.int64)
            )
            if "failures/input_index" in f:
                self.failed_index = f["failures/input_index"][()].astype(np.int64)
                self.failed_reason = [
                    r.decode() if isinstance(r, bytes) else str(r) for r in f["failures/reason"][()]
                ]
            else:
                self.failed_index, self.failed_reason = np.zeros(0, dtype=np.int64), []
        self.offsets = np.concatenate([[0], np.cumsum(self.n_atoms)]).astype(np.int64)  # (S+1,)

    teacher = property(lambda self: self.header["teacher"])
    provenance = property(lambda self: self.header["provenance"])

    def __len__(self) -> int:
        return len(self.n_atoms)

    def _file(self) -> h5py.File:
        if self._h5 is None:
            self._h5 = _open_h5(self.path)
        return self._h5

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_h5"] = None  # an h5py handle cannot cross a process boundary; reopen on first use
        return state

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __enter__(self) -> "DatasetReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def frame(self, i: int) -> dict[str, Any]:
        """Structure ``i``: the frame dict of :func:`frames_to_arrays`, stress ``(3, 3)`` NaN where none."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"frame {i} out of range for {len(self)} structures")
        i = i % len(self)
        f = self._file()
        a, b = self.offsets[i], self.offsets[i + 1]
        return {
            "atomic_numbers": f["structures/atomic_numbers"][a:b].astype(np.int64),
            "positions": f["structures/positions"][a:b],
            "cell": f["structures/cells"][i],
            "pbc": f["structures/pbc"][i].astype(bool),
            "energy": float(f["labels/energy"][i]),
            "forces": f["labels/forces"][a:b],
            "stress": f["labels/stress"][i],
            "input_index": int(self.input_index[i]),
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """Every column of ``SCHEMA`` in memory (input_index filled in when the file lacks it)."""
        f = self._file()
        out = {name: f[name][()] for name in SCHEMA if name in f}
        out["structures/input_index"] = self.input_index
        return out

    def atoms(self, i: int):
        """Structure ``i`` as ``ase.Atoms`` carrying its labels in a ``SinglePointCalculator``."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        fr = self.frame(i)
        atoms = Atoms(numbers=fr["atomic_numbers"], positions=fr["positions"], cell=fr["cell"], pbc=fr["pbc"])
        results = {"energy": fr["energy"], "forces": fr["forces"]}
        if np.all(np.isfinite(fr["stress"])):
            s = fr["stress"]
            results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
        atoms.calc = SinglePointCalculator(atoms, **results)
        return atoms


def pending_frames(path: str | os.PathLike) -> tuple[int, int]:
    """``(frames, failures)`` committed to the journal of ``path`` but not yet compacted into it."""
    path = Path(path)
    jdir = journal_dir(path)
    if not jdir.is_dir():
        return 0, 0
    try:
        header = read_header(path)
    except (ValueError, FileNotFoundError):
        return 0, 0
    frames = failures = 0
    for seq, batch in _journal_batches(jdir):
        if seq > header["journal_seq"]:
            with np.load(batch, allow_pickle=False) as z:
                if str(z["uid"]) == header["uid"]:
                    frames += len(z["structures.n_atoms"])
                    failures += len(z["failures.input_index"])
    return frames, failures


def _journal_batches(jdir: Path) -> list[tuple[int, Path]]:
    found = []
    for p in jdir.iterdir():
        m = _BATCH_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


# ---------------------------------------------------------------------------------------------------
# writer


def _create(path: Path, teacher: dict[str, Any], provenance: dict[str, Any]) -> None:
    """Write an empty, valid dataset file atomically (temporary file + rename)."""
    tmp = _tmp_path(path)
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["units"] = json.dumps(UNITS)
        f.attrs["teacher"] = json.dumps(teacher, sort_keys=True)
        f.attrs["provenance"] = json.dumps(provenance, sort_keys=True)
        f.attrs["uid"] = uuid.uuid4().hex
        f.attrs["journal_seq"] = 0
        for name, (per, tail, dtype) in SCHEMA.items():
            f.create_dataset(
                name, shape=(0, *tail), maxshape=(None, *tail), dtype=dtype, chunks=(_CHUNK[per], *tail)
            )
        f.create_dataset("failures/input_index", shape=(0,), maxshape=(None,), dtype="int64", chunks=(256,))
        f.create_dataset(
            "failures/reason", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype(), chunks=(256,)
        )
    _fsync_file(tmp)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _append(ds: h5py.Dataset, values: np.ndarray) -> None:
    n0 = ds.shape[0]
    ds.resize(n0 + len(values), axis=0)
    ds[n0:] = values


class DatasetWriter:
    """Append frames (and teacher failures) to a dataset file, crash-safely (see the module docstring).

    ``teacher``/``provenance`` are needed only to create a new file. ``commit()`` makes the pending
    frames durable; ``close()`` (or leaving the ``with`` block) commits and compacts.
    ``compact_interval`` (s): how often commits are folded into ``path``; it grows to 20x the time a
    compaction takes, so copying a large file never costs more than ~5 % of the run.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        teacher: dict[str, Any] | None = None,
        provenance: dict[str, Any] | None = None,
        compact_interval: float = 60.0,
    ):
        self.path = Path(path)
        self.journal = journal_dir(self.path)
        self._closed = False
        self._lock_fd = self._lock()
        try:
            for stale in [*self.path.parent.glob(f".{self.path.name}.tmp-*"), *self.journal.glob("*.tmp")]:
                stale.unlink()  # half-written leftovers of a killed writer; never part of the data
            if not self.path.exists():
                if teacher is None:
                    raise FileNotFoundError(f"no such dataset file: {self.path}")
                _create(self.path, teacher, provenance or {})
            self.header = read_header(self.path)
            self.compact_interval = float(compact_interval)
            self._min_interval = self.compact_interval
            self._pending: list[dict[str, Any]] = []
            self._pending_failures: list[tuple[int, str]] = []
            self._seq = max([self.header["journal_seq"], *(s for s, _ in _journal_batches(self.journal))])
            self.compact()  # fold in what a killed run committed
        except BaseException:
            self._unlock()
            raise

    # -- locking ----------------------------------------------------------------------------------
    def _lock(self) -> int | None:
        if fcntl is None:  # pragma: no cover
            return None
        lock = self.journal / "lock"
        while True:
            self.journal.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise RuntimeError(f"{self.path} is being written by another process (lock {lock})") from None
            try:  # a closing writer removes its lock file: make sure ours is still the one on disk
                if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    def _unlock(self, tidy: bool = False) -> None:
        if getattr(self, "_lock_fd", None) is None:
            return
        if tidy and not _journal_batches(self.journal):  # nothing pending: leave no journal behind
            try:
                (self.journal / "lock").unlink()
                self.journal.rmdir()
            except OSError:
                pass
        os.close(self._lock_fd)  # closing releases the flock
        self._lock_fd = None

    # -- state ------------------------------------------------------------------------------------
    def done(self) -> tuple[set[int], dict[int, str]]:
        """Input indices already labelled, and failed ones with their reasons (file + pending)."""
        reader = DatasetReader(self.path)
        labelled = set(reader.input_index.tolist()) | {int(f["input_index"]) for f in self._pending}
        failed = dict(zip(reader.failed_index.tolist(), reader.failed_reason))
        failed.update(self._pending_failures)
        return labelled, failed

    @property
    def n_pending(self) -> int:
        return len(self._pending) + len(self._pending_failures)

    # -- writing ----------------------------------------------------------------------------------
    def add(self, frame: dict[str, Any]) -> None:
        """Queue one labelled frame (dict as in :func:`frames_to_arrays`); durable after ``commit()``."""
        n = len(np.ravel(frame["atomic_numbers"]))
        for key, shape in (("positions", (n, 3)), ("forces", (n, 3)), ("cell", (3, 3)), ("pbc", (3,))):
            if np.shape(frame[key]) != shape:
                raise ValueError(
                    f"frame {frame.get('input_index')}: {key} has shape {np.shape(frame[key])}, "
                    f"expected {shape}"
                )
        if not (np.isfinite(frame["energy"]) and np.all(np.isfinite(frame["forces"]))):
            raise ValueError(
                f"frame {frame.get('input_index')}: non-finite energy or forces are never stored"
            )
        self._pending.append({k: (np.array(v) if isinstance(v, np.ndarray) else v) for k, v in frame.items()})

    def add_failure(self, input_index: int, reason: str) -> None:
        """Record that the teacher failed on input frame ``input_index``."""
        self._pending_failures.append((int(input_index), str(reason)))

    def commit(self) -> None:
        """Make the queued frames durable: one journal batch, written whole or not at all."""
        if not self.n_pending:
            return
        arrays = {k.replace("/", "."): v for k, v in frames_to_arrays(self._pending).items()}
        arrays["failures.input_index"] = np.array([i for i, _ in self._pending_failures], dtype=np.int64)
        arrays["failures.reason"] = np.array([r for _, r in self._pending_failures], dtype=np.str_)
        arrays["uid"] = np.array(self.header["uid"])
        seq = self._seq + 1
        final = self.journal / f"{seq:09d}.npz"
        tmp = final.with_name(final.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)  # the commit point of these frames
        self._seq = seq
        self._pending, self._pending_failures = [], []
        if time.monotonic() - self._last_compact >= self.compact_interval:
            self.compact()

    def compact(self) -> None:
        """Fold journal batches into ``path``: copy, append, fsync, atomic rename; then drop the batches."""
        start = time.monotonic()
        applied, last, loaded = self.header["journal_seq"], None, []
        for seq, batch in _journal_batches(self.journal):
            try:
                with np.load(batch, allow_pickle=False) as z:
                    data = {k: z[k] for k in z.files}
            except Exception as exc:  # a renamed batch is whole; this means disk damage: stop, lose nothing
                raise RuntimeError(
                    f"journal batch {batch} is unreadable ({exc}); it was left in place"
                ) from None
            if str(data["uid"]) != self.header["uid"]:  # keep it (labels are precious) but out of the way
                batch.rename(batch.with_suffix(".orphaned"))
                warnings.warn(
                    f"{batch} belongs to another file that was named {self.path.name}; "
                    f"moved it to {batch.with_suffix('.orphaned').name}, not mixed in"
                )
            elif seq <= applied:
                batch.unlink()  # folded in before a kill stopped the clean-up
            else:
                loaded.append(data)
                last = seq
        if loaded:
            tmp = _tmp_path(self.path)
            shutil.copyfile(self.path, tmp)
            with h5py.File(tmp, "r+") as f:
                for name in SCHEMA:  # one resize per dataset, however many batches
                    _append(f[name], np.concatenate([data[name.replace("/", ".")] for data in loaded]))
                self._merge_failures(f, loaded)
                f.attrs["journal_seq"] = last
            _fsync_file(tmp)
            os.replace(tmp, self.path)  # the new file is whole; the old one stays until this instant
            _fsync_dir(self.path.parent)
            self.header["journal_seq"] = last
            for seq, batch in _journal_batches(self.journal):
                if seq <= last:
                    batch.unlink()
        self._last_compact = time.monotonic()
        self.compact_interval = max(self._min_interval, 20.0 * (self._last_compact - start))

    @staticmethod
    def _merge_failures(f: h5py.File, loaded: list[dict[str, np.ndarray]]) -> None:
        """Failures: newest reason per input index; an index that now has a label is no longer failed."""
        idx, why = f["failures/input_index"], f["failures/reason"]
        failed = dict(
            zip(idx[()].tolist(), [r.decode() if isinstance(r, bytes) else str(r) for r in why[()]])
        )
        before = dict(failed)
        for data in loaded:
            failed.update(zip(data["failures.input_index"].tolist(), data["failures.reason"].tolist()))
        labelled = set(f["structures/input_index"][()].tolist()) if failed else set()
        failed = {i: r for i, r in failed.items() if i not in labelled}
        if failed != before:
            idx.resize(len(failed), axis=0)
            why.resize(len(failed), axis=0)
            if failed:
                idx[:] = np.array(list(failed), dtype=np.int64)
                why[:] = np.array(list(failed.values()), dtype=object)

    def close(self) -> None:
        """Commit, compact and release the lock."""
        if self._closed:
            return
        self._closed = True
        try:
            self.commit()
            self.compact()
        finally:
            self._unlock(tidy=True)

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # On an exception (Ctrl-C included) the queued frames are complete and correct: keep them too.
        self.close()

    def __del__(self) -> None:
        self._unlock()


def write_frames(
    path: str | os.PathLike,
    frames: Iterable[dict[str, Any]],
    teacher: dict[str, Any],
    provenance: dict[str, Any],
    failures: Iterable[tuple[int, str]] = (),
) -> int:
    """Write a new dataset file from frame dicts (``ValueError`` if it exists). Returns the count."""
    path = Path(path)
    if path.exists():
        raise ValueError(f"{path} exists; remove it or pass --overwrite")
    n = 0
    with DatasetWriter(path, teacher, provenance, compact_interval=float("inf")) as w:
        for frame in frames:
            w.add(frame)
            n += 1
            if len(w._pending) >= 4096:
                w.commit()
        for i, reason in failures:
            w.add_failure(i, reason)
    return n


def remove_dataset(path: str | os.PathLike) -> None:
    """Delete a dataset file and its journal (for ``--overwrite``)."""
    path = Path(path)
    if path.exists():
        path.unlink()
    shutil.rmtree(journal_dir(path), ignore_errors=True)
