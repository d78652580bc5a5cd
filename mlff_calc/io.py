"""Durable writes, one home for them: every file mlff_calc writes goes through here.

The rule (DESIGN.md, "nothing a user made is ever lost"):

* an output is written to a unique temporary name in its own directory, flushed, fsynced and then
  ``os.replace``-d into place, so a reader sees the old file or the whole new one, never half of one;
* an existing output is replaced only when the caller says so (``overwrite=True``), see
  :func:`check_output`; an output that is also an input is refused before anything is touched;
* a directory that one process writes into (a run directory, a dataset journal) is held with
  :class:`DirectoryLock`, an exclusive ``flock`` that the kernel drops when the process dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from .errors import OutputExistsError, RunLockedError


def fsync_path(path: str | Path) -> None:
    """fsync a file or a directory by path (a directory fsync makes a rename inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temporary_path(path: str | Path) -> Path:
    """A fresh, unique temporary name next to ``path`` (same directory, so a rename is atomic).

    The file is created with the permissions an ordinary ``open(path, "w")`` would give (0666 less the
    umask), not ``mkstemp``'s 0600, so a committed output is as readable as any other file the user writes.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    return Path(tmp)


def commit(tmp: str | Path, path: str | Path) -> None:
    """fsync ``tmp``, rename it over ``path`` and fsync the directory: the new file is durable."""
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(Path(path).parent)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """``with atomic_write(p) as fh: ...`` writes ``p`` whole or not at all.

    The data goes to a unique temporary file next to ``p``; on success it is fsynced and renamed over
    ``p``; on any exception the temporary file is removed and ``p`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """For writers that need a path, not a handle (h5py, ase.io, torch.save, a compiler).

    Yields a unique temporary path next to ``path``; when the block ends without an exception the file
    written there is committed (:func:`commit`), otherwise it is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Atomically write a text file (UTF-8)."""
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_json(path: str | Path, data: Any, indent: int | None = 1) -> None:
    """Atomically write ``data`` as JSON (a trailing newline, keys in insertion order)."""
    write_text(path, json.dumps(data, indent=indent) + "\n")


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when ``a`` and ``b`` name the same file (resolving links; also for a file not there yet)."""
    a, b = Path(a), Path(b)
    try:
        return a.samefile(b)
    except OSError:
        return a.resolve() == b.resolve()


def check_output(
    path: str | Path,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | Path] = (),
    what: str = "output",
    flag: str = "--overwrite",
) -> Path:
    """Refuse, before anything is touched, an output that would destroy the user's data.

    Raises :class:`OutputExistsError` when ``path`` is also one of ``inputs`` (whatever ``overwrite``
    says), or when it exists and ``overwrite`` is false; ``IsADirectoryError`` when it is a directory.
    Returns ``path`` as a ``Path``.
    """
    path = Path(path)
    for source in inputs:
        if same_file(path, source):
            raise OutputExistsError(f"{what} {path} is also an input; choose another {what} path")
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a directory; give a file name")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{what} {path} already exists; pass {flag} to replace it, or choose another path")
    return path


class DirectoryLock:
    """An exclusive, non-blocking ``flock`` on ``directory/name``: one writer per run directory.

    ``with DirectoryLock(run_dir, "mlff-calc train"): ...``; a second process gets
    :class:`RunLockedError` at once. The kernel releases the lock when the process ends, however it
    ends, so a killed run never leaves a stale lock behind. An owner may delete the lock file before
    releasing it (a dataset journal leaves no directory behind), so acquiring checks that the file it
    locked is still the one on disk.
    """

    def __init__(self, directory: str | Path, holder: str = "another mlff-calc process", name: str = ".lock"):
        self.directory = Path(directory)
        self.holder = holder
        self.path = self.directory / name
        self._fd: int | None = None

    def acquire(self) -> "DirectoryLock":
        while True:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunLockedError(
                    f"{self.directory} is in use by {self.holder} (it holds {self.path}); "
                    "wait for it to finish or use another directory"
                ) from None
            try:  # the file we locked is still the lock file on disk (not one a releasing owner deleted)
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    self._fd = fd
                    return self
            except FileNotFoundError:
                pass
            os.close(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        os.close(self._fd)  # closing the descriptor drops the flock
        self._fd = None

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
