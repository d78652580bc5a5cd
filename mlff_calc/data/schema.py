"""The HDF5 dataset layout (``*.h5``): names, shapes, units, and frame dicts <-> column arrays.

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
    /labels/hvp_structure      (P,)       int64    optional curvature labels: structure row of each probe
    /labels/hvp_epsilon        (P,)       float64  Å, the central-difference step of each probe
    /labels/hvp_probe          (Q, 3)     float64  probe directions v, unit norm over each probe's 3n values
                                                   (normal-mode probes: their norm is their loss weight)
    /labels/hvp                (Q, 3)     float64  eV/Å², H v (the teacher's Hessian times v)
    /failures/input_index      (F,)       int64    input frames the teacher failed on ...
    /failures/reason           (F,)       str      ... and why
    attrs: format, format_version, units (JSON), teacher (JSON), provenance (JSON), uid, journal_seq

``P`` probes; a probe of a structure with ``n`` atoms has ``n`` rows of ``hvp_probe`` and ``hvp``, in probe
order (``Q = Σ_p n_atoms[hvp_structure[p]]``). The four ``hvp*`` datasets are optional (``HVP_SCHEMA``): a
file without them reads and trains as before, and they are created when the first probe is stored.

Readers are in :mod:`.reader`, the crash-safe writer in :mod:`.journal`; :mod:`.hdf5` gathers both.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .. import _keys as K
from ..errors import DataError

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
# Curvature labels (teachers/hvp.py): rows per "probe" or per "probe_atom" (n_atoms rows of each probe).
HVP_SCHEMA: dict[str, tuple[str, tuple[int, ...], str]] = {
    "labels/hvp_structure": ("probe", (), "int64"),
    "labels/hvp_epsilon": ("probe", (), "float64"),
    "labels/hvp_probe": ("probe_atom", (3,), "float64"),
    "labels/hvp": ("probe_atom", (3,), "float64"),
}
HVP_UNITS = {"hvp": "eV/Angstrom^2", "hvp_epsilon": "Angstrom", "hvp_probe": "1 (unit vector)"}
OPTIONAL = {"structures/input_index"}  # files from other producers may lack it: 0..S-1 then
# ~24 kB per chunk: cheap random access
CHUNK = {"atom": 1024, "structure": 256, "probe": 256, "probe_atom": 1024}
BATCH_RE = re.compile(r"^(\d{9})\.npz$")


def journal_dir(path: str | os.PathLike) -> Path:
    """Directory holding the committed-but-not-yet-compacted batches of ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".journal")


def journal_batches(jdir: Path) -> list[tuple[int, Path]]:
    """``[(seq, path)]`` of the committed batches in journal directory ``jdir``, oldest first."""
    found = []
    for p in jdir.iterdir():
        m = BATCH_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def open_h5(path: Path, mode: str = "r") -> h5py.File:
    """``h5py.File`` whose failures (garbage, truncation, not HDF5) read as one clear ``DataError``."""
    if not path.exists():
        raise FileNotFoundError(f"no such dataset file: {path}")
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a dataset file")
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        raise DataError(
            f"{path} is not a readable HDF5 file (corrupted, truncated or not HDF5 at all): {exc}"
        ) from None


def json_attr(f: h5py.File, name: str, path: Path) -> Any:
    try:
        return json.loads(f.attrs[name])
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: attribute {name!r} is not valid JSON: {exc}") from None


def frames_to_arrays(frames: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Concatenate frame dicts into the column arrays of ``SCHEMA``.

    A frame: ``atomic_numbers (n,)``, ``positions (n, 3)`` Å, ``cell (3, 3)`` Å, ``pbc (3,)``,
    ``energy`` eV, ``forces (n, 3)`` eV/Å, ``stress (3, 3)`` eV/Å³ or None, ``input_index`` int, and
    optionally ``hvp``: ``{"probes": (k, n, 3), "values": (k, n, 3) eV/Å², "epsilon": (k,) Å}``. The
    ``HVP_SCHEMA`` columns come out with ``labels/hvp_structure`` counted from 0 in ``frames``.
    """

    def column(values, shape, dtype):  # list of per-frame values -> one (rows, *shape) array
        return np.asarray(values, dtype=dtype).reshape((-1, *shape))

    def per_atom(key):
        return column(
            np.concatenate([np.reshape(f[key], (-1, 3)) for f in frames]) if frames else [], (3,), "float64"
        )

    nan33 = np.full((3, 3), np.nan)
    probed = [(s, f["hvp"]) for s, f in enumerate(frames) if f.get("hvp") is not None]

    def probe_rows(key):  # (k, n, 3) per probed frame -> (Q, 3)
        rows = [np.reshape(h[key], (-1, 3)) for _, h in probed]
        return column(np.concatenate(rows) if rows else [], (3,), "float64")

    hvp = {
        "labels/hvp_structure": column([s for s, h in probed for _ in np.ravel(h["epsilon"])], (), "int64"),
        "labels/hvp_epsilon": column([e for _, h in probed for e in np.ravel(h["epsilon"])], (), "float64"),
        "labels/hvp_probe": probe_rows("probes"),
        "labels/hvp": probe_rows("values"),
    }
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
    } | hvp
