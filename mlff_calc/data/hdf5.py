"""The HDF5 dataset (``*.h5``) in one import: layout, validating lazy reader, crash-safe writer.

The parts live along their seams: :mod:`.schema` (layout, units, frame dicts <-> columns),
:mod:`.reader` (what training needs), :mod:`.journal` (the append-only writer, its lock and compaction).
This module gathers them and adds the one-shot helpers ``write_frames`` and ``remove_journal``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Iterable

from ..errors import OutputExistsError
from .journal import DatasetWriter
from .reader import DatasetReader, pending_frames, read_header
from .schema import FORMAT, FORMAT_VERSION, OPTIONAL, SCHEMA, UNITS, frames_to_arrays, journal_dir

__all__ = ["FORMAT", "FORMAT_VERSION", "OPTIONAL", "SCHEMA", "UNITS", "DatasetReader", "DatasetWriter",
           "frames_to_arrays", "journal_dir", "pending_frames", "read_header", "remove_journal",
           "write_frames"]


def write_frames(
    path: str | os.PathLike,
    frames: Iterable[dict[str, Any]],
    teacher: dict[str, Any],
    provenance: dict[str, Any],
    failures: Iterable[tuple[int, str]] = (),
) -> int:
    """Write a new dataset file from frame dicts (``OutputExistsError`` if it exists). Returns the count."""
    path = Path(path)
    if path.exists():
        raise OutputExistsError(f"{path} exists; remove it or pass --overwrite")
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


def remove_journal(path: str | os.PathLike) -> None:
    """Delete the journal of ``path`` (after ``path`` was replaced by a new file: its batches are stale)."""
    shutil.rmtree(journal_dir(path), ignore_errors=True)
