"""The run directory of ``train``: one writer at a time, a finished student never replaced unasked, and the
training state (``last.pt``) that a killed run resumes from."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .. import io
from ..checkpoint import load_checkpoint, save_checkpoint
from ..errors import CheckpointError, InputError, OutputExistsError
from .config import incompatible_settings


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


def read_training_state(path: Path, cfg, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The training state at ``path`` (``None`` if there is none), refused when it was trained with other
    settings or on another dataset than ``cfg`` / ``fingerprint`` (naming every difference)."""
    if not path.exists():
        return None
    state = load_checkpoint(path)
    if state.get("kind") != "training_state":
        raise CheckpointError(f"{path} is not a training state written by mlff-calc train")
    diffs = incompatible_settings(state["config"], cfg)
    old = state["data_fingerprint"]
    if old != fingerprint:
        diffs.append(f"dataset: {old} -> {fingerprint}")
    if diffs:
        raise InputError(f"cannot resume {path}: it was trained with other settings ("
                         + "; ".join(diffs) + "); use another --out, or the original settings "
                         "to continue")
    return state


def restore_training_state(trainer, state: dict[str, Any]) -> None:
    """Weights, EMA, optimiser, schedule, progress and random streams of ``trainer`` from ``state``."""
    trainer.model.load_state_dict(state["state_dict"])
    trainer.ema.load_state_dict(state["ema"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.schedule.load_state_dict(state["schedule"])
    trainer.progress = state["progress"]
    torch.set_rng_state(state["rng"]["torch"])
    rng = state["rng"]
    np.random.set_state(("MT19937", rng["numpy"].numpy().astype(np.uint32), *rng["numpy_extra"]))
    if not trainer.quiet:
        print(f"resuming {trainer.run_dir} after epoch {trainer.progress['epoch']} "
              f"({trainer.progress['train_time']:.0f} s trained)")


def save_training_state(trainer) -> None:
    """``RUN_DIR/last.pt``: everything :func:`restore_training_state` needs (written atomically)."""
    np_state = np.random.get_state()
    save_checkpoint(
        trainer.run_dir / "last.pt", trainer.model.config,
        {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}, trainer.metadata,
        kind="training_state", config=trainer.cfg.to_dict(),
        data_fingerprint=trainer._fingerprint(),
        ema=trainer.ema.state_dict(), optimizer=trainer.optimizer.state_dict(),
        schedule=trainer.schedule.state_dict(),
        progress=trainer.progress,
        rng={"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
             "numpy_extra": [int(np_state[2]), int(np_state[3]), float(np_state[4])]},
    )
