"""Structure files (any ASE-readable format): a validating reader, a fingerprint, a streaming extxyz writer,
the MD trajectory writer.

Every command reads its structures through :func:`read_structures`, so bad input is refused at the
boundary, named as such, before a teacher, a model or an integrator sees it: a missing, empty or
unreadable file, a frame with no atoms, non-finite positions, a non-finite or degenerate periodic cell.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
from ase import Atoms

from ..errors import InputError
from ..io import temporary_path


def check_structure(atoms: Atoms, source: str) -> None:
    """``InputError`` naming ``source`` for an empty structure, non-finite positions, a bad periodic cell."""
    from ..neighbors import check_cell

    if len(atoms) == 0:
        raise InputError(f"{source}: structure has no atoms (remove the empty frame)")
    finite = np.isfinite(atoms.positions).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise InputError(f"{source}: non-finite positions (NaN or inf) of atoms {bad[:10].tolist()}")
    try:
        check_cell(atoms.cell.array, atoms.pbc, where=f" of {source}")
    except ValueError as exc:
        raise InputError(str(exc)) from None


def read_structures(path: str | os.PathLike, check: bool = True) -> list[Atoms]:
    """Every frame of one ASE-readable file, each checked with :func:`check_structure` (``check=False``: not).

    ``FileNotFoundError`` for a missing file, ``InputError`` (a ``ValueError``) for a directory, an empty
    or unreadable file, or a structure no calculator can use.
    """
    import ase.io

    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a directory; give a structure file")
    if not path.is_file():
        raise FileNotFoundError(f"structure file not found: {path} (no such structure file; check the path)")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty: it contains no structures")
    try:
        frames = ase.io.read(path, index=":")
    except Exception as exc:  # ASE raises many types for a bad file; all mean "cannot read it"
        raise InputError(f"cannot read structures from {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(frames, list):
        frames = [frames]
    if not frames:
        raise InputError(f"{path} contains no structures")
    if check:
        for i, atoms in enumerate(frames):
            check_structure(atoms, f"{path}@{i}")
    return frames


def fingerprint(frames: list[Atoms]) -> str:
    """sha256 of every frame's atomic numbers, positions, cell and pbc (what the labels depend on)."""
    h = hashlib.sha256()
    for atoms in frames:
        for a in (
            atoms.numbers.astype(np.int64),
            atoms.positions.astype(np.float64),
            np.asarray(atoms.cell, dtype=np.float64),
            atoms.pbc.astype(bool),
        ):
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def write_extxyz(path: str | os.PathLike, frames: Iterable[Atoms]) -> int:
    """Write ``frames`` (any iterable, e.g. a generator running MD) to ``path`` as extended XYZ; count them.

    Frames go to ``<stem>.partial<suffix>`` next to ``path``, each flushed as it comes, and the file is
    renamed to ``path`` only when all are written. If producing the frames fails or is interrupted, the
    partial file keeps every frame made so far (its name is in the re-raised exception's notes) and
    ``path`` is untouched. Whether ``path`` may be replaced is the caller's decision (``io.check_output``).
    """
    from ase.io import write

    from ..io import commit

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.partial{path.suffix or '.extxyz'}")
    tmp = temporary_path(partial)  # the partial file appears under its name only once it holds a frame
    count = 0
    try:
        with open(tmp, "w") as fh:
            for frame in frames:
                write(fh, frame, format="extxyz")
                fh.flush()
                count += 1
                if count == 1:
                    os.replace(tmp, partial)
            os.fsync(fh.fileno())
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if count:
            note = f"{count} frames written before the failure are kept in {partial}"
            if hasattr(exc, "add_note"):  # Python >= 3.11
                exc.add_note(note)
            else:  # pragma: no cover
                warnings.warn(note, stacklevel=2)
        raise
    commit(partial if count else tmp, path)
    return count


class TrajectoryWriter:
    """A frame per call to ``write``: an ASE ``.traj`` or extended XYZ (flushed per frame)."""

    def __init__(self, path: Path, fmt: str):
        from ase.io.trajectory import Trajectory

        self.fmt = fmt
        self._out = Trajectory(str(path), "w") if fmt == "traj" else open(path, "w")

    def write(self, atoms: Atoms) -> None:
        if self.fmt == "traj":
            self._out.write(atoms)
        else:
            from ase.io import write

            write(self._out, atoms, format="extxyz")
            self._out.flush()

    def close(self) -> None:
        self._out.close()
