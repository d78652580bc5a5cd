"""Conversions between dataset files: extxyz (the user's own DFT data) <-> HDF5, and joining shards.

The extxyz -> HDF5 -> extxyz round trip is exact for numbers, positions, cell, pbc, energy, forces and
stress: HDF5 keeps every float64 bit, and ASE writes a value it has read back to the same text.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .hdf5 import DatasetReader, pending_frames, remove_dataset, write_frames
from .labelling import fingerprint, read_structures


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
        raise ValueError(
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
        raise ValueError(f"frame {index} of {path} has non-finite labels")
    return {"energy": energy, "forces": forces, "stress": stress}


def from_extxyz(source: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> int:
    """Labelled frames of any ASE-readable file (energy, forces, optional stress) -> a new dataset file."""
    from ..teachers import teacher_spec

    source, out = Path(source), Path(out)
    if out.exists() and not overwrite:
        raise ValueError(f"{out} exists; remove it or pass --overwrite")
    atoms_list = read_structures(source)
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
    if overwrite:
        remove_dataset(out)
    spec = teacher_spec("external", {"source": source.name})
    src = {
        "path": str(source.resolve()),
        "sha256": fingerprint(atoms_list),
        "n_frames": len(frames),
        "shard": [0, 1],
    }
    return write_frames(out, frames, spec, _provenance("dataset from-xyz", input=src))


def to_extxyz(path: str | os.PathLike, out: str | os.PathLike) -> int:
    """Every structure of a dataset file, with its labels, -> extended XYZ."""
    import ase.io

    reader = DatasetReader(path)
    with reader:
        ase.io.write(out, [reader.atoms(i) for i in range(len(reader))], format="extxyz")
    return len(reader)


def merge(
    out: str | os.PathLike, inputs: list[str | os.PathLike], overwrite: bool = False
) -> tuple[int, list[str]]:
    """Join shard files of one labelling job into ``out``, in input order. Returns (frames, warnings).

    Refuses files from different teachers or inputs, files with frames still in their journal, and
    input frames present in more than one file.
    """
    if not inputs:
        raise ValueError("dataset merge needs at least one input file")
    if Path(out).exists() and not overwrite:
        raise ValueError(f"{out} exists; remove it or pass --overwrite")
    readers = [DatasetReader(p) for p in inputs]
    for p in inputs:
        if sum(pending_frames(p)):
            raise ValueError(
                f"{p} has committed frames not yet folded into it (a killed run); "
                "re-run its `mlff-calc label` command first"
            )
    first = readers[0]
    source = dict(first.provenance.get("input") or {})
    for r in readers[1:]:
        if r.teacher != first.teacher:
            raise ValueError(
                f"cannot merge: {r.path} was labelled by {r.teacher}, {first.path} by {first.teacher}"
            )
        other = r.provenance.get("input") or {}
        if other.get("sha256") != source.get("sha256"):
            raise ValueError(
                f"cannot merge: {r.path} and {first.path} were labelled from different inputs "
                f"({other.get('path')} vs {source.get('path')})"
            )
    warnings = []
    shards = sorted(tuple(r.provenance.get("input", {}).get("shard") or (0, 1)) for r in readers)
    counts = {n for _, n in shards}
    if len(counts) == 1 and sorted(i for i, _ in shards) != list(range(counts.pop())):
        warnings.append(f"shards {['/'.join(map(str, s)) for s in shards]} do not cover the whole input")

    index = np.concatenate([r.input_index for r in readers])
    unique, seen = np.unique(index, return_counts=True)
    if (seen > 1).any():
        raise ValueError(
            f"cannot merge: input frames {unique[seen > 1][:10].tolist()} appear in more than one file"
        )
    order = np.argsort(index, kind="stable")
    where = [(k, j) for k, r in enumerate(readers) for j in range(len(r))]
    failures = {}
    for r in readers:
        failures.update(zip(r.failed_index.tolist(), r.failed_reason))
    failures = {i: why for i, why in failures.items() if i not in set(index.tolist())}
    if overwrite:
        remove_dataset(out)
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

    n = write_frames(out, frames(), first.teacher, provenance, sorted(failures.items()))
    for r in readers:
        r.close()
    return n, warnings
