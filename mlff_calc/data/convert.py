"""Conversions between dataset files: extxyz (the user's own DFT data) <-> HDF5, and joining shards.

The extxyz -> HDF5 -> extxyz round trip is exact for numbers, positions, cell, pbc, energy, forces and
stress: HDF5 keeps every float64 bit, and ASE writes a value it has read back to the same text.

Every output follows the one rule of :mod:`mlff_calc.io`: an existing output is replaced only with
``overwrite=True``, an output that is also an input is refused before anything is read, and the new file
is written under a temporary name and renamed into place only when it is complete.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, InputError
from ..io import atomic_path, check_output, same_file
from .hdf5 import DatasetReader, pending_frames, remove_journal, write_frames
from .structures import fingerprint, read_structures


def _provenance(command: str, **extra: Any) -> dict[str, Any]:
    from .. import __version__

    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "mlff_calc_version": __version__,
        **extra,
    }


def _labels_of(atoms, index: int, path: Path) -> dict[str, Any]:
    """energy eV, forces (n, 3) eV/Å and stress (3, 3) eV/Å³ or None from an Atoms' stored results."""
    from ase.stress import voigt_6_to_full_3x3_stress

    results = getattr(atoms.calc, "results", None) or {}
    missing = [k for k in ("energy", "forces") if results.get(k) is None]
    if missing:
        raise InputError(
            f"frame {index} of {path} has no {' or '.join(missing)}: from-xyz needs labelled frames "
            "(energy= in the comment line and a forces column, as ase.io.write writes them)"
        )
    stress = results.get("stress")
    if stress is not None:
        stress = np.asarray(stress, dtype=np.float64)
        stress = voigt_6_to_full_3x3_stress(stress) if stress.shape == (6,) else stress.reshape(3, 3)
    energy, forces = float(results["energy"]), np.asarray(results["forces"], dtype=np.float64)
    if not (
        np.isfinite(energy) and np.isfinite(forces).all() and (stress is None or np.isfinite(stress).all())
    ):
        raise InputError(f"frame {index} of {path} has non-finite labels (NaN or inf energy, forces or "
                         "stress)")
    return {"energy": energy, "forces": forces, "stress": stress}


def _write_dataset(out: Path, frames, teacher, provenance, failures=()) -> int:
    """``write_frames`` into a temporary file renamed over ``out`` when whole (a stale journal of an
    earlier ``out`` is removed after the rename: its batches belong to the replaced file)."""
    with atomic_path(out) as tmp:
        tmp.unlink()  # write_frames creates its file itself
        n = write_frames(tmp, frames, teacher, provenance, failures)
    remove_journal(out)
    return n


def from_extxyz(source: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> int:
    """Labelled frames of any ASE-readable file (energy, forces, optional stress) -> a new dataset file."""
    from ..teachers import teacher_spec

    source, out = Path(source), Path(out)
    check_output(out, overwrite=overwrite, inputs=[source], what="dataset")
    atoms_list = read_structures(source)  # every frame checked: atoms, finite positions, a valid cell
    frames = [
        {
            "atomic_numbers": a.numbers,
            "positions": a.positions,
            "cell": np.asarray(a.cell),
            "pbc": a.pbc,
            "input_index": i,
            **_labels_of(a, i, source),
        }
        for i, a in enumerate(atoms_list)
    ]
    spec = teacher_spec("external", {"source": source.name})
    src = {
        "path": str(source.resolve()),
        "sha256": fingerprint(atoms_list),
        "n_frames": len(frames),
        "shard": [0, 1],
    }
    return _write_dataset(out, frames, spec, _provenance("dataset from-xyz", input=src))


def to_extxyz(path: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> int:
    """Every structure of a dataset file, with its labels, -> extended XYZ."""
    import ase.io

    check_output(out, overwrite=overwrite, inputs=[path], what="extxyz output")
    with DatasetReader(path) as reader:
        frames = [reader.atoms(i) for i in range(len(reader))]
    with atomic_path(out) as tmp:
        ase.io.write(tmp, frames, format="extxyz")
    return len(frames)


def _shard_coverage(readers: list[DatasetReader], source: dict[str, Any]) -> list[str]:
    """Warnings for input frames that no shard covers (any mix of shard counts N)."""
    n_frames = source.get("n_frames")
    shards = sorted({tuple(r.provenance.get("input", {}).get("shard") or (0, 1)) for r in readers})
    if not isinstance(n_frames, int):
        return []
    covered = np.zeros(n_frames, dtype=bool)
    for i, n in shards:
        covered[i::n] = True
    missing = np.flatnonzero(~covered)
    if not len(missing):
        return []
    names = ", ".join("/".join(map(str, s)) for s in shards)
    return [f"shards {names} do not cover the whole input: {len(missing)} of {n_frames} input frames are in "
            f"no shard (frames {missing[:10].tolist()}{', ...' if len(missing) > 10 else ''}); label them "
            "into another shard file and merge again"]


def merge_datasets(
    out: str | os.PathLike, inputs: list[str | os.PathLike], overwrite: bool = False
) -> tuple[int, list[str]]:
    """Join shard files of one labelling job into ``out``, in input order. Returns (frames, warnings).

    Refuses an ``out`` that is one of ``inputs`` (whatever ``overwrite`` says), an input given twice,
    files from different teachers or inputs, files with frames still in their journal, and input frames
    present in more than one file; warns about input frames that no shard covers.
    """
    if not inputs:
        raise InputError("dataset merge needs at least one input file")
    out = check_output(out, overwrite=overwrite, inputs=inputs, what="merged dataset")
    for k, a in enumerate(inputs):
        for b in inputs[k + 1:]:
            if same_file(a, b):
                raise InputError(f"{a} is given twice as an input (its frames would appear in more than "
                                 "one file); "
                                 "give each shard file once")
    readers = [DatasetReader(p) for p in inputs]
    for p in inputs:
        if sum(pending_frames(p)):
            raise DataError(
                f"{p} has committed frames not yet folded into it (a killed run); "
                "re-run its `mlff-calc label` command first"
            )
    first = readers[0]
    source = dict(first.provenance.get("input") or {})
    for r in readers[1:]:
        if r.teacher != first.teacher:
            raise DataError(
                f"cannot merge: {r.path} was labelled by {r.teacher}, {first.path} by {first.teacher}"
            )
        other = r.provenance.get("input") or {}
        if other.get("sha256") != source.get("sha256"):
            raise DataError(
                f"cannot merge: {r.path} and {first.path} were labelled from different inputs "
                f"({other.get('path')} vs {source.get('path')})"
            )
    warnings = _shard_coverage(readers, source)

    index = np.concatenate([r.input_index for r in readers])
    unique, seen = np.unique(index, return_counts=True)
    if (seen > 1).any():
        raise DataError(
            f"cannot merge: input frames {unique[seen > 1][:10].tolist()} appear in more than one file"
        )
    order = np.argsort(index, kind="stable")
    where = [(k, j) for k, r in enumerate(readers) for j in range(len(r))]
    failures = {}
    for r in readers:
        failures.update(zip(r.failed_index.tolist(), r.failed_reason))
    labelled = set(index.tolist())
    failures = {i: why for i, why in failures.items() if i not in labelled}
    source["shard"] = None
    provenance = _provenance(
        "dataset merge", input=source, merged_from=[str(Path(p).resolve()) for p in inputs]
    )

    def frames():
        for o in order:
            k, j = where[o]
            frame = readers[k].frame(j)
            if not np.isfinite(frame["stress"]).all():
                frame["stress"] = None
            yield frame

    try:  # every input is read whole into the temporary file before it replaces ``out``
        n = _write_dataset(out, frames(), first.teacher, provenance, sorted(failures.items()))
    finally:
        for r in readers:
            r.close()
    return n, warnings
