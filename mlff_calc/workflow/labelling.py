"""Resumable labelling: run a teacher over every frame of a structure file into a dataset file.

Each input frame is labelled at most once, in input order. Frames are committed in small batches (see
:class:`~mlff_calc.data.journal.DatasetWriter`), so a killed run loses only the frames in flight, and
re-running the same call resumes: frames already labelled, or already failed, are skipped. The file
records the teacher, the input fingerprint, the shard and the curvature settings, and a resumed run refuses
to mix in others.

Curvature labels (``hvp_fraction > 0``): a fixed, seeded choice of that fraction of the input frames also
gets ``hvp_probes`` random orthonormal probe directions and the teacher's Hessian-vector products along
them by central differences of forces (:func:`mlff_calc.teachers.hvp.fd_hvp`: 2 teacher calls per probe),
stored with the frame in the same commit.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..data.hdf5 import DatasetWriter, read_header
from ..data.structures import fingerprint, read_structures
from ..errors import DataError, InputError, OutputExistsError, TeacherError
from ..io import same_file


def parse_shard(text: str | tuple[int, int] | None) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``; None -> ``(0, 1)``."""
    if text is None:
        return 0, 1
    try:
        i, n = (int(v) for v in (text.split("/") if isinstance(text, str) else text))
    except (ValueError, TypeError):
        raise InputError(f"--shard expects I/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise InputError(f"--shard {i}/{n}: need 0 <= I < N")
    return i, n


@dataclass
class LabelReport:
    """What one labelling call did (frames are input indices)."""

    shard_frames: int  # frames in this shard of the input
    labelled_before: int  # already in the file when the call started
    labelled_now: int
    failed_now: list[tuple[int, str]] = field(default_factory=list)
    failed_total: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0
    teacher_calls: int = 0  # this call's, all of them: 1 per frame + 2 per curvature probe
    hvp_frames_now: int = 0  # frames stored with curvature labels in this call
    hvp_failed_now: int = 0  # frames whose probes failed in the teacher: stored without curvature

    @property
    def done(self) -> int:
        return self.labelled_before + self.labelled_now


def label_file(
    structures: str | os.PathLike,
    out: str | os.PathLike,
    teacher: str,
    options: dict[str, Any] | None = None,
    *,
    batch_size: int = 16,
    commit_interval: float = 5.0,
    shard: str | tuple[int, int] | None = None,
    retry_failures: bool = False,
    progress: bool = True,
    compact_interval: float = 60.0,
    hvp_fraction: float = 0.0,
    hvp_probes: int = 2,
    hvp_epsilon: float | None = None,
) -> LabelReport:
    """Label every frame of ``structures`` (of shard ``I/N``: index % N == I) with ``teacher`` into ``out``.

    Commits after ``batch_size`` frames or ``commit_interval`` seconds, whichever comes first.
    Teacher failures are recorded in ``/failures`` and skipped; ``retry_failures`` tries them again.
    ``hvp_fraction`` (0..1) of the frames also get ``hvp_probes`` curvature probes at step ``hvp_epsilon``
    Å (default :data:`mlff_calc.teachers.hvp.DEFAULT_EPSILON`).
    """
    from .. import __version__
    from ..teachers import load_teacher, teacher_spec

    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    if not commit_interval > 0:
        raise InputError(f"--commit-interval must be > 0 seconds, got {commit_interval}")
    options = dict(options or {})
    shard = parse_shard(shard)
    hvp = _hvp_settings(hvp_fraction, hvp_probes, hvp_epsilon)
    if same_file(out, structures):
        raise OutputExistsError(f"dataset {out} is also the --structures input; choose another --out")
    frames = read_structures(structures)  # each frame checked (atoms, finite positions, cell): no teacher yet
    spec = teacher_spec(teacher, options)
    source = {
        "path": str(Path(structures).resolve()),
        "sha256": fingerprint(frames),
        "n_frames": len(frames),
        "shard": list(shard),
    }
    if hvp is not None:
        source["hvp"] = hvp
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(21, "is a directory, not a dataset file; give a file name", str(out))
    if out.exists():  # resuming is this command's documented way of writing into an existing file
        _check_same_job(out, spec, source)

    provenance = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "label",
        "mlff_calc_version": __version__,
        "input": source,
    }
    start = time.monotonic()
    with DatasetWriter(out, spec, provenance, compact_interval=compact_interval) as writer:
        labelled, failed = writer.done()
        mine = [i for i in range(len(frames)) if i % shard[1] == shard[0]]
        todo = [i for i in mine if i not in labelled and (retry_failures or i not in failed)]
        report = LabelReport(len(mine), len(labelled), 0)
        if todo:
            calc = load_teacher(teacher, **options)
            probed = _probed_frames(len(frames), hvp)
            report = _run(frames, todo, calc, writer, report, batch_size, commit_interval, progress,
                          probed, hvp)
        report.failed_total = {**failed, **dict(report.failed_now)}
    report.seconds = time.monotonic() - start
    return report


def _hvp_settings(fraction: float, probes: int, epsilon: float | None) -> dict[str, Any] | None:
    """The curvature settings recorded in the file (None when off); ``InputError`` names a bad one."""
    from ..teachers.hvp import DEFAULT_EPSILON

    if not (np.isfinite(fraction) and 0 <= fraction <= 1):
        raise InputError(f"hvp_fraction must be in [0, 1] (the fraction of frames with curvature labels), "
                         f"got {fraction}")
    if fraction == 0:
        return None
    if int(probes) != probes or probes < 1:
        raise InputError(f"hvp_probes must be a whole number >= 1 (probes per frame), got {probes}")
    epsilon = DEFAULT_EPSILON if epsilon is None else float(epsilon)
    if not (np.isfinite(epsilon) and 0 < epsilon <= 0.1):
        raise InputError(f"hvp_epsilon must be in (0, 0.1] Å, got {epsilon}")
    return {"fraction": float(fraction), "probes": int(probes), "epsilon": epsilon, "mode": "random",
            "seed": 0}


def _probed_frames(n_frames: int, hvp: dict[str, Any] | None) -> set[int]:
    """Input frames that get curvature labels: a function of the frame count and settings alone, so a
    resumed (or sharded) run picks the same ones."""
    if hvp is None:
        return set()
    count = int(round(hvp["fraction"] * n_frames))
    # A stream of its own: seed 0 alone is also training.data.split_frames', whose first rows are the
    # training split, so every probed frame would land in training and validation would see no curvature.
    rng = np.random.default_rng([hvp["seed"], 0x485650])
    return set(rng.permutation(n_frames)[:count].tolist())


def _check_same_job(out: Path, spec: dict[str, Any], source: dict[str, Any]) -> None:
    """Refuse to resume into a file written by another teacher, input or shard."""
    header = read_header(out)
    if header["teacher"] != spec:
        raise DataError(
            f"{out} holds labels from teacher {header['teacher']}, not {spec}; "
            "use another --out (or the same teacher and options to resume)"
        )
    old = header["provenance"].get("input", {})
    if old.get("sha256") != source["sha256"]:
        raise DataError(
            f"{out} was labelled from a different input ({old.get('path')}, "
            f"{old.get('n_frames')} frames, sha256 {str(old.get('sha256'))[:12]}) than "
            f"{source['path']} ({source['n_frames']} frames, sha256 {source['sha256'][:12]}); "
            "use another --out"
        )
    if old.get("hvp") != source.get("hvp"):
        raise DataError(f"{out} was labelled with curvature settings {old.get('hvp')}, not {source.get('hvp')}; "
                        "use the same hvp_* options to resume, or another --out")
    shard = list(old.get("shard") or [0, 1])  # a merged file (shard None) holds the whole input
    if shard != source["shard"]:
        raise DataError(
            f"{out} holds shard {shard[0]}/{shard[1]}, not {source['shard'][0]}/{source['shard'][1]}"
        )


def _run(
    frames,
    todo,
    calc,
    writer: DatasetWriter,
    report: LabelReport,
    batch_size: int,
    commit_interval: float,
    progress: bool,
    probed: set[int] = frozenset(),
    hvp: dict[str, Any] | None = None,
) -> LabelReport:
    from tqdm.auto import tqdm

    from ..teachers import compute_labels  # one checked teacher call per frame

    bar = tqdm(
        total=report.shard_frames,
        initial=report.labelled_before,
        unit="frame",
        disable=not progress,
        dynamic_ncols=True,
        smoothing=0.1,
    )
    last_commit = time.monotonic()
    try:
        for i in todo:
            atoms = frames[i]
            try:
                labels = compute_labels(calc, atoms)
                report.teacher_calls += 1
                frame = {
                    "atomic_numbers": atoms.numbers,
                    "positions": atoms.positions,
                    "cell": np.asarray(atoms.cell),
                    "pbc": atoms.pbc,
                    "input_index": i,
                    **labels,
                }
                if i in probed:
                    frame["hvp"] = _curvature(calc, atoms, i, hvp, report)
                writer.add(frame)  # re-checks shapes and finiteness: a wrong label is never written
                report.labelled_now += 1
            except Exception as exc:  # any teacher failure: record, skip, go on
                reason = str(exc) if isinstance(exc, TeacherError) else f"{type(exc).__name__}: {exc}"
                reason = " ".join(reason.split())[:300] or type(exc).__name__
                writer.add_failure(i, reason)
                report.failed_now.append((i, reason))
                bar.set_postfix(failed=len(report.failed_now), refresh=False)
            bar.update(1)
            if writer.n_pending >= batch_size or time.monotonic() - last_commit >= commit_interval:
                writer.commit()
                last_commit = time.monotonic()
    finally:
        bar.close()
    return report


def _curvature(calc, atoms, index: int, hvp: dict[str, Any], report: LabelReport) -> dict | None:
    """The frame's probes and the teacher's H v along them; None (frame kept without) if the teacher fails."""
    from ..teachers.hvp import fd_hvp, probe_directions

    k = min(hvp["probes"], 3 * len(atoms))
    probes = probe_directions(len(atoms), k, seed=hvp["seed"] * 1_000_003 + index, mode=hvp["mode"])
    report.teacher_calls += 2 * k  # counted when spent, whether or not they succeed
    try:
        values = fd_hvp(calc, atoms, probes, hvp["epsilon"])
    except Exception:  # the frame's own labels are good; keep them, without curvature
        report.hvp_failed_now += 1
        return None
    if not np.all(np.isfinite(values)):
        report.hvp_failed_now += 1
        return None
    report.hvp_frames_now += 1
    return {"probes": probes, "values": values, "epsilon": np.full(k, hvp["epsilon"])}
