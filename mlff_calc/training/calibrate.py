"""Add an uncertainty calibration (:mod:`mlff_calc.uncertainty`) to an existing ``student.pt``.

New students are calibrated at the end of training; this is for older checkpoints, or to recalibrate
on other frames. The output is a new checkpoint; the input is replaced only when asked (``in_place``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import uncertainty
from ..data.reader import DatasetReader
from ..errors import InputError
from ..io import check_output
from ..model.student import StudentForceField
from .data import split_frames


def calibrate_checkpoint(model_path: str | Path, data: str | Path, out: str | Path | None = None,
                         calibration_data: str | Path | None = None, in_place: bool = False,
                         overwrite: bool = False, max_frames: int = 5000) -> uncertainty.Calibration:
    """Fit the LLPR calibration of ``model_path`` and write the calibrated checkpoint to ``out``.

    Covariances come from the frames of ``data``; the scales from ``calibration_data`` when given, else
    from a held-out part of ``data``: the training run's own validation split when ``data`` is the file
    the student was trained on (same uid), otherwise a seeded 20% of its frames. ``in_place`` writes over
    ``model_path`` (atomically); otherwise ``out`` must be another path (``overwrite`` to replace it).
    """
    model_path = Path(model_path)
    if in_place:
        if out is not None and Path(out) != model_path:
            raise InputError("give either --out or --in-place, not both")
        out = model_path
    elif out is None:
        raise InputError("no output checkpoint given (--out), and --in-place not asked")
    else:
        inputs = [model_path, data, *([calibration_data] if calibration_data else [])]
        check_output(out, overwrite=overwrite, inputs=inputs, what="calibrated checkpoint")
    model = StudentForceField.load(model_path).eval()
    reader = DatasetReader(data)
    try:
        if len(reader) == 0:
            raise InputError(f"{data} holds no frames")
        frames = [reader.frame(i) for i in range(len(reader))]
    finally:
        reader.close()
    if calibration_data is not None:
        held = DatasetReader(calibration_data)
        try:
            held_out = [held.frame(i) for i in range(len(held))]
        finally:
            held.close()
        fit_frames = frames
    else:
        summary = model.metadata.get("data") or {}
        same = summary.get("uid") is not None and summary.get("uid") == reader.header.get("uid")
        config = ((model.metadata.get("training") or {}).get("config") or {}).get("data") or {}
        if same and config:
            train, val, _ = split_frames(len(frames), config.get("val_size", 0.1), config.get("test_size", 0.0),
                                         config.get("split_seed", 0))
        else:
            train, val, _ = split_frames(len(frames), 0.2, 0.0, 0)
        if not len(val):
            raise InputError(f"{data}: no held-out frames to calibrate on; pass --calibration-data")
        fit_frames, held_out = [frames[i] for i in train], [frames[i] for i in val]
    if len(fit_frames) > max_frames:
        fit_frames = [fit_frames[i] for i in np.linspace(0, len(fit_frames) - 1, max_frames).astype(np.int64)]
    calibration = uncertainty.fit(model, fit_frames, held_out)
    uncertainty.attach(model, calibration)
    model.save(out)
    return calibration
