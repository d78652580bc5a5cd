"""The crash-safe, append-only writer of the HDF5 dataset (layout in :mod:`.schema`).

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
import shutil
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import DataError
from ..io import DirectoryLock, atomic_write, commit, temporary_path
from .reader import DatasetReader, read_header
from .schema import (CHUNK, FORMAT, FORMAT_VERSION, HVP_SCHEMA, HVP_UNITS, SCHEMA, UNITS, frames_to_arrays,
                     journal_batches, journal_dir)

def _temporary(path: Path) -> Path:
    """A unique temporary name next to ``path``, with the permissions a newly created file gets."""
    tmp = temporary_path(path)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; a dataset is as readable as any other file
    return tmp


def _stale_temporaries(path: Path) -> list[Path]:
    """Half-written leftovers of a killed writer next to ``path`` and in its journal; never data."""
    return [*path.parent.glob(f".{path.name}.tmp-*"), *path.parent.glob(f".{path.name}.*.tmp"),
            *journal_dir(path).glob("*.tmp")]


def _create(path: Path, teacher: dict[str, Any], provenance: dict[str, Any]) -> None:
    """Write an empty, valid dataset file atomically (temporary file + rename)."""
    tmp = _temporary(path)
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["units"] = json.dumps(UNITS)  # curvature units join with the first curvature labels
        f.attrs["teacher"] = json.dumps(teacher, sort_keys=True)
        f.attrs["provenance"] = json.dumps(provenance, sort_keys=True)
        f.attrs["uid"] = uuid.uuid4().hex
        f.attrs["journal_seq"] = 0
        for name, (per, tail, dtype) in SCHEMA.items():
            _create_column(f, name, per, tail, dtype)
        f.create_dataset("failures/input_index", shape=(0,), maxshape=(None,), dtype="int64", chunks=(256,))
        f.create_dataset(
            "failures/reason", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype(), chunks=(256,)
        )
    commit(tmp, path)


def _create_column(f: h5py.File, name: str, per: str, tail: tuple[int, ...], dtype: str) -> None:
    f.create_dataset(name, shape=(0, *tail), maxshape=(None, *tail), dtype=dtype, chunks=(CHUNK[per], *tail))


def _append_hvp(f: h5py.File, n_before: int, loaded: list[dict[str, np.ndarray]]) -> None:
    """Append the batches' curvature labels (if any), their structure rows shifted to rows of the file.

    A file without ``hvp*`` datasets (older, or no probes yet) gets them here, with their units."""
    columns, offset = {name: [] for name in HVP_SCHEMA}, n_before
    for data in loaded:  # batches written before curvature labels existed have no hvp keys
        if "labels.hvp_structure" in data:
            for name in HVP_SCHEMA:
                columns[name].append(data[name.replace("/", ".")])
            columns["labels/hvp_structure"][-1] = columns["labels/hvp_structure"][-1] + offset
        offset += len(data["structures.n_atoms"])
    if not any(len(c) for cols in columns.values() for c in cols):
        return
    for name, (per, tail, dtype) in HVP_SCHEMA.items():
        if name not in f:
            _create_column(f, name, per, tail, dtype)
        _append(f[name], np.concatenate(columns[name]))
    units = json.loads(f.attrs["units"])
    if any(units.get(k) != v for k, v in HVP_UNITS.items()):
        f.attrs["units"] = json.dumps(units | HVP_UNITS)


def _append(ds: h5py.Dataset, values: np.ndarray) -> None:
    n0 = ds.shape[0]
    ds.resize(n0 + len(values), axis=0)
    ds[n0:] = values


def _check_hvp(hvp: dict[str, Any], n: int, index) -> None:
    """Curvature labels of one frame: ``probes``/``values`` ``(k, n, 3)``, ``epsilon (k,)``, all finite."""
    k = len(np.ravel(hvp["epsilon"]))
    for key in ("probes", "values"):
        if k < 1 or np.shape(hvp[key]) != (k, n, 3):
            raise DataError(f"frame {index}: hvp {key} has shape {np.shape(hvp[key])}, "
                            f"expected ({k}, {n}, 3)")
    if not all(np.all(np.isfinite(hvp[key])) for key in ("probes", "values", "epsilon")):
        raise DataError(f"frame {index}: non-finite curvature (hvp) labels are never stored")
    if not np.all(np.ravel(hvp["epsilon"]) > 0):
        raise DataError(f"frame {index}: hvp epsilon must be > 0 Å")


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
        self._lock = DirectoryLock(self.journal, f"another process writing {self.path}", name="lock").acquire()
        try:
            for stale in _stale_temporaries(self.path):
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
            self._seq = max([self.header["journal_seq"], *(s for s, _ in journal_batches(self.journal))])
            self.compact()  # fold in what a killed run committed
        except BaseException:
            self._unlock()
            raise

    # -- locking ----------------------------------------------------------------------------------
    def _unlock(self, tidy: bool = False) -> None:
        lock = getattr(self, "_lock", None)
        if lock is None:
            return
        if tidy and not journal_batches(self.journal):  # nothing pending: leave no journal behind
            lock.path.unlink(missing_ok=True)  # while still locked; the next writer re-checks the inode
            try:
                self.journal.rmdir()
            except OSError:
                pass
        lock.release()

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
        if n == 0:
            raise DataError(f"frame {frame.get('input_index')}: a structure with no atoms is never stored")
        for key, shape in (("positions", (n, 3)), ("forces", (n, 3)), ("cell", (3, 3)), ("pbc", (3,))):
            if np.shape(frame[key]) != shape:
                raise DataError(
                    f"frame {frame.get('input_index')}: {key} has shape {np.shape(frame[key])}, "
                    f"expected {shape}"
                )
        if not (np.isfinite(frame["energy"]) and np.all(np.isfinite(frame["forces"]))):
            raise DataError(
                f"frame {frame.get('input_index')}: non-finite energy or forces are never stored"
            )
        if not (np.all(np.isfinite(frame["positions"])) and np.all(np.isfinite(frame["cell"]))):
            raise DataError(
                f"frame {frame.get('input_index')}: non-finite positions or cell are never stored"
            )
        if frame.get("hvp") is not None:
            _check_hvp(frame["hvp"], n, frame.get("input_index"))
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
        with atomic_write(final, "wb") as fh:  # its rename is the commit point of these frames
            np.savez(fh, **arrays)
        self._seq = seq
        self._pending, self._pending_failures = [], []
        if time.monotonic() - self._last_compact >= self.compact_interval:
            self.compact()

    def compact(self) -> None:
        """Fold journal batches into ``path``: copy, append, fsync, atomic rename; then drop the batches."""
        start = time.monotonic()
        applied, last, loaded = self.header["journal_seq"], None, []
        for seq, batch in journal_batches(self.journal):
            try:
                with np.load(batch, allow_pickle=False) as z:
                    data = {k: z[k] for k in z.files}
            except Exception as exc:  # a renamed batch is whole; this means disk damage: stop, lose nothing
                raise DataError(
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
            tmp = _temporary(self.path)
            shutil.copyfile(self.path, tmp)
            with h5py.File(tmp, "r+") as f:
                n_before = f["structures/n_atoms"].shape[0]
                for name in SCHEMA:  # one resize per dataset, however many batches
                    _append(f[name], np.concatenate([data[name.replace("/", ".")] for data in loaded]))
                _append_hvp(f, n_before, loaded)
                self._merge_failures(f, loaded)
                f.attrs["journal_seq"] = last
            commit(tmp, self.path)  # the new file is whole; the old one stays until this instant
            self.header["journal_seq"] = last
            for seq, batch in journal_batches(self.journal):
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
