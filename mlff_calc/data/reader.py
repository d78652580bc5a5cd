"""Reading the HDF5 dataset (layout in :mod:`.schema`): validating header, lazy frames, pending journal.

This is all that training and evaluation need; it carries no writer code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import DataError
from .schema import (FORMAT, FORMAT_VERSION, HVP_SCHEMA, HVP_UNITS, OPTIONAL, SCHEMA, UNITS, journal_batches,
                     journal_dir, json_attr, open_h5)


def _validate(f: h5py.File, path: Path) -> dict[str, Any]:
    """Check format, units and layout; return the header. ``DataError`` (a ``ValueError``) names what is
    wrong."""
    if "format" not in f.attrs:
        top = sorted(f.keys())
        raise DataError(
            f"{path} is not an mlff_calc dataset: no 'format' attribute (top-level contents: {top})"
        )
    fmt = f.attrs["format"]
    fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
    if fmt != FORMAT:
        raise DataError(f"{path} is not an mlff_calc dataset: format is {fmt!r}, expected {FORMAT!r}")
    if "format_version" not in f.attrs:
        raise DataError(f"{path}: missing attribute 'format_version'")
    version = int(f.attrs["format_version"])
    if version > FORMAT_VERSION:
        raise DataError(
            f"{path}: format_version {version} is newer than this mlff_calc reads ({FORMAT_VERSION})"
        )
    for name in ("units", "teacher", "provenance"):
        if name not in f.attrs:
            raise DataError(
                f"{path}: missing attribute {name!r}"
                + (" (refusing to guess the units of the labels)" if name == "units" else "")
            )
    units = json_attr(f, "units", path)
    for key, unit in UNITS.items():
        if not isinstance(units, dict) or key not in units:
            raise DataError(f"{path}: attribute 'units' has no entry for {key!r} (expected {unit!r})")
        if units[key] != unit:
            raise DataError(f"{path}: {key} is in {units[key]!r}, expected {unit!r}; convert the file first")
    for group in ("structures", "labels"):
        if group not in f or not isinstance(f[group], h5py.Group):
            raise DataError(f"{path}: missing group /{group}")
    for name, (per, tail, _) in SCHEMA.items():
        if name not in f:
            if name in OPTIONAL:
                continue
            raise DataError(f"{path}: missing dataset /{name}")
        shape = f[name].shape
        if shape is None or tuple(shape[1:]) != tail:
            raise DataError(f"{path}: /{name} has shape {shape}, expected (n, {', '.join(map(str, tail))})")
    n_atoms = f["structures/n_atoms"][()]
    n_structures = n_atoms.shape[0]
    if n_structures and n_atoms.min() < 1:
        empty = np.flatnonzero(n_atoms < 1)[:10].tolist()
        raise DataError(f"{path}: structures {empty} have no atoms; a dataset frame needs at least one atom "
                        "(re-label the input without empty frames)")
    n_atoms_total = int(np.sum(n_atoms))
    for name, (per, _, _) in SCHEMA.items():
        if name in f:
            want = n_atoms_total if per == "atom" else n_structures
            if f[name].shape[0] != want:
                raise DataError(
                    f"{path}: /{name} has {f[name].shape[0]} rows, expected {want} "
                    f"(one per {per}); the file is inconsistent"
                )
    _validate_hvp(f, path, n_atoms, units)
    return {
        "format": fmt,
        "format_version": version,
        "units": units,
        "teacher": json_attr(f, "teacher", path),
        "provenance": json_attr(f, "provenance", path),
        "uid": str(f.attrs.get("uid", "")),
        "journal_seq": int(f.attrs.get("journal_seq", 0)),
    }


def _validate_hvp(f: h5py.File, path: Path, n_atoms: np.ndarray, units: dict) -> None:
    """The optional curvature labels: all four datasets or none, consistent rows, units recorded."""
    present = [name for name in HVP_SCHEMA if name in f]
    if not present:
        return
    if len(present) != len(HVP_SCHEMA):
        missing = sorted(set(HVP_SCHEMA) - set(present))
        raise DataError(f"{path}: curvature labels are incomplete: missing "
                        + ", ".join("/" + m for m in missing))
    for key, unit in HVP_UNITS.items():
        if units.get(key) != unit:
            raise DataError(f"{path}: {key} is in {units.get(key)!r}, expected {unit!r}")
    structure = f["labels/hvp_structure"][()]
    if f["labels/hvp_epsilon"].shape != structure.shape:
        raise DataError(f"{path}: /labels/hvp_epsilon and /labels/hvp_structure differ in length")
    if len(structure) and (structure.min() < 0 or structure.max() >= len(n_atoms)):
        raise DataError(f"{path}: /labels/hvp_structure points outside the {len(n_atoms)} structures")
    rows = int(n_atoms[structure].sum()) if len(structure) else 0
    for name in ("labels/hvp_probe", "labels/hvp"):
        if f[name].shape != (rows, 3):
            raise DataError(f"{path}: /{name} has shape {f[name].shape}, expected ({rows}, 3) "
                            "(n_atoms rows per probe)")


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """Validated attributes of a dataset file: format, units, teacher, provenance, uid, journal_seq."""
    path = Path(path)
    with open_h5(path) as f:
        return _validate(f, path)


class DatasetReader:
    """Read-only view of a dataset file; validates on construction, opens the HDF5 handle lazily.

    The handle is dropped when pickled, so the reader can travel to DataLoader worker processes.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._h5: h5py.File | None = None
        with open_h5(self.path) as f:
            self.header = _validate(f, self.path)
            self.n_atoms = f["structures/n_atoms"][()].astype(np.int64)  # (S,)
            n = len(self.n_atoms)
            self.input_index = (
                f["structures/input_index"][()].astype(np.int64)
                if "structures/input_index" in f
                else np.arange(n, dtype=np.int64)
            )
            # (P,) structure row of each curvature probe; empty for a file without them
            self.hvp_structure = (f["labels/hvp_structure"][()].astype(np.int64)
                                  if "labels/hvp_structure" in f else np.zeros(0, dtype=np.int64))
            if "failures/input_index" in f:
                self.failed_index = f["failures/input_index"][()].astype(np.int64)
                self.failed_reason = [
                    r.decode() if isinstance(r, bytes) else str(r) for r in f["failures/reason"][()]
                ]
            else:
                self.failed_index, self.failed_reason = np.zeros(0, dtype=np.int64), []
        self.offsets = np.concatenate([[0], np.cumsum(self.n_atoms)]).astype(np.int64)  # (S+1,)

    teacher = property(lambda self: self.header["teacher"])

    @property
    def n_probes(self) -> np.ndarray:
        """``(S,)`` curvature probes stored for each structure (0 for most, or all)."""
        return np.bincount(self.hvp_structure, minlength=len(self)).astype(np.int64)
    provenance = property(lambda self: self.header["provenance"])

    def __len__(self) -> int:
        return len(self.n_atoms)

    def _file(self) -> h5py.File:
        if self._h5 is None:
            self._h5 = open_h5(self.path)
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
            "hvp": self.hvp(i),
        }

    def hvp(self, i: int) -> dict[str, np.ndarray] | None:
        """Curvature labels of structure ``i`` (``probes``/``values`` ``(k, n, 3)``, ``epsilon (k,)``) or None."""
        mine = np.flatnonzero(self.hvp_structure == i)
        if not len(mine):
            return None
        f, n = self._file(), int(self.n_atoms[i])
        rows = np.concatenate([[0], np.cumsum(self.n_atoms[self.hvp_structure])])
        take = np.concatenate([np.arange(rows[p], rows[p] + n) for p in mine])
        return {"probes": f["labels/hvp_probe"][take].reshape(len(mine), n, 3),
                "values": f["labels/hvp"][take].reshape(len(mine), n, 3),
                "epsilon": f["labels/hvp_epsilon"][mine]}

    def arrays(self) -> dict[str, np.ndarray]:
        """Every column of ``SCHEMA`` (and ``HVP_SCHEMA``, when present) in memory (input_index filled in
        when the file lacks it)."""
        f = self._file()
        out = {name: f[name][()] for name in (*SCHEMA, *HVP_SCHEMA) if name in f}
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
    for seq, batch in journal_batches(jdir):
        if seq > header["journal_seq"]:
            with np.load(batch, allow_pickle=False) as z:
                if str(z["uid"]) == header["uid"]:
                    frames += len(z["structures.n_atoms"])
                    failures += len(z["failures.input_index"])
    return frames, failures
