"""The run directory of ``train``: one writer at a time, and a finished student never replaced unasked."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

from .. import io
from ..errors import InputError, OutputExistsError


@contextlib.contextmanager
def locked_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> Iterator[Path]:
    """Hold ``run_dir``'s :class:`~mlff_calc.io.DirectoryLock` (rank 0 only under torchrun) and check
    the resume/overwrite rule before anything in it is touched. A directory created here and left
    holding only its lock (the run was refused) is removed again."""
    if resume and overwrite:
        raise InputError("--resume and --overwrite contradict each other; give one of them")
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputExistsError(f"--out {run_dir} is a file, not a run directory; choose a directory path")
    main = int(os.environ.get("RANK", "0")) == 0
    lock, created = io.DirectoryLock(run_dir, "another mlff-calc train"), not run_dir.exists()
    if main:
        lock.acquire()
    try:
        check_run_dir(run_dir, resume, overwrite, main)
        yield run_dir
    except BaseException:
        if main and created and [p.name for p in run_dir.iterdir()] == [".lock"]:
            shutil.rmtree(run_dir)  # refused before anything was written: leave no empty run directory
        raise
    finally:
        lock.release()


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool, main: bool = True) -> None:
    """Resume semantics and the overwrite rule: ``last.pt`` is continued; a ``student.pt`` without a
    ``last.pt`` is a finished run, replaced only with ``overwrite`` (which also drops ``last.pt``)."""
    last, student = run_dir / "last.pt", run_dir / "student.pt"
    if resume and not last.exists():
        raise FileNotFoundError(f"--resume: {last} does not exist, nothing to resume")
    if overwrite:
        if main:  # start afresh: the old training state must not be continued
            last.unlink(missing_ok=True)
        return
    if student.exists() and not last.exists():
        raise OutputExistsError(f"{student} already exists and {run_dir} has no last.pt to resume from; "
                                "pass --overwrite to train a new student over it, or choose another --out")
