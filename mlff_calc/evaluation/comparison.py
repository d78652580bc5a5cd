"""``compare``: a student against its teacher -- errors, speed, NVE stability, RDFs -> a report directory."""

from __future__ import annotations

import datetime
import os
import platform
import warnings
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.stress import full_3x3_to_voigt_6_stress

from .. import io
from ..errors import DataError, InputError, OutputExistsError
from . import metrics as M
from . import plots
from .nve import run_nve
from .report import write_json, write_report
from .speed import time_calls

STUDENT_DTYPE = "float32"  # what users get by default: errors, speed and NVE are all measured in it
SPEED_STRUCTURES = 3  # timed structures: first, middle and last of the evaluated frames
RDF_R_MAX = 6.0  # Å, for (partly) periodic systems; molecules use all pairs
RDF_BINS = 120
FIGURES = {"parity": "force_parity.png", "error_histogram": "force_error_histogram.png",
           "energy_drift": "nve_energy_drift.png", "rdf": "rdf.png", "reliability": "uncertainty_reliability.png"}


def compare(student, teacher, teacher_options=None, data=None, structures=None, out="report",
            max_frames=200, nve_steps=2000, timestep=0.5, temperature=300.0, teacher_md=False,
            md_structure=None, device="auto", progress=True) -> dict:
    """Compare a student with its teacher and write ``out/report.md``, ``out/metrics.json`` and figures.

    Args:
        student: path to ``student.pt`` (or a ready ``StudentCalculator``); evaluated in float32.
        teacher: teacher name for :func:`mlff_calc.teachers.load_teacher` (or an ASE calculator).
        teacher_options: keyword options of the teacher (names only).
        data: labelled HDF5 dataset; its stored teacher labels are the reference (no teacher calls).
        structures: any ASE-readable file; its frames are labelled by the teacher now.
            Exactly one of ``data`` and ``structures``.
        out: report directory (created; files in it are overwritten).
        max_frames: evaluate at most this many frames, evenly spaced over the input (None or 0: all).
        nve_steps: NVE steps with the student (0: no MD); ``timestep`` in fs; velocities drawn at
            ``temperature`` K.
        teacher_md: run the same NVE (same start, same velocities) with the teacher, and compare RDFs.
        md_structure: file whose first frame starts the NVE runs (default: the first evaluated frame).
        device: student device, ``"auto" | "cpu" | "cuda[:n]"``.
        progress: progress bars on stderr.

    Returns the content of ``metrics.json``: sections ``errors`` (``energy_mae_ev_per_atom``,
    ``force_mae_ev_per_ang``, ``force_rmse_ev_per_ang``, ``force_cosine_mean``, ``stress_mae_ev_per_ang3``
    ...), ``speed`` (``student_ms_per_call``, ``teacher_ms_per_call``, ``speed_ratio``), ``nve``
    (``student`` and ``teacher`` runs: ``ok``, ``drift_mev_per_atom_ps``, ``max_deviation_mev_per_atom``,
    ``ns_per_day``), ``rdf`` (or None), ``figures`` and ``provenance``. The parity figure's energy panel
    shows per-structure energy deviations from each seed's mean (:func:`energy_deviations`).

    Raises ``FileNotFoundError`` for a missing student or input file, ``InputError`` (a ``ValueError``)
    for bad arguments, an unknown teacher or elements the student was not trained on, ``DataError`` for
    an empty dataset, ``OutputExistsError`` when ``out`` is a file, ``RunLockedError`` when another
    compare writes into ``out``.
    """
    from ..calculator import StudentCalculator
    from ..teachers import TeacherError, compute_labels, load_teacher, teacher_spec

    if (data is None) == (structures is None):
        raise InputError("give exactly one of data (a labelled .h5 dataset) and structures "
                         "(a structure file)")
    if max_frames is not None and max_frames < 0:
        raise InputError(f"max_frames must be >= 0, got {max_frames}")
    if Path(out).exists() and not Path(out).is_dir():
        raise OutputExistsError(f"--out {out} is a file; give a report directory")
    if nve_steps < 0 or timestep <= 0 or temperature < 0:
        raise InputError(f"need nve_steps >= 0, timestep > 0 fs and temperature >= 0 K "
                         f"(got {nve_steps}, {timestep}, {temperature})")

    # --- student, frames and element check: fail fast, before any slow teacher work ---------------------
    if isinstance(student, StudentCalculator):
        calc, student_path = student, None
    else:
        student_path = Path(student)
        if not student_path.is_file():
            raise FileNotFoundError(f"student checkpoint not found: {student_path}")
        calc = StudentCalculator.from_checkpoint(student_path, device=device, dtype=STUDENT_DTYPE)
    source = str(data if data is not None else structures)
    frames, refs, available, data_teacher = _read_frames(data, structures, max_frames)
    for index, atoms in frames:
        _check_student_can_evaluate(calc, atoms, f"frame {index} of {source}")
    if md_structure is not None:
        md_atoms, md_source = _read_first(md_structure), str(md_structure)
        _check_student_can_evaluate(calc, md_atoms, f"MD structure {md_structure}")
    else:
        md_atoms, md_source = frames[0][1].copy(), f"frame {frames[0][0]} of {source}"

    if isinstance(teacher, str):
        spec = teacher_spec(teacher, teacher_options)
        teacher_calc = load_teacher(teacher, **(teacher_options or {}))
    else:
        if teacher_options:
            raise InputError("teacher_options go with a teacher name, not a ready calculator")
        spec, teacher_calc = {"name": type(teacher).__name__, "options": {}}, teacher
    if data_teacher and str(data_teacher.get("name", "")).lower() != str(spec["name"]).lower():
        warnings.warn(f"{data} was labelled by {data_teacher.get('name')!r}, not by {spec['name']!r}: "
                      "errors are against the stored labels, speed and MD use the given teacher",
                      stacklevel=2)

    # --- reference labels -----------------------------------------------------------------------------
    failures = 0
    if refs is None:  # --structures: label now
        from tqdm.auto import tqdm

        kept, refs = [], []
        for index, atoms in tqdm(frames, desc="teacher labels", unit="frame", disable=not progress):
            try:
                refs.append(compute_labels(teacher_calc, atoms))
                kept.append((index, atoms))
            except TeacherError as exc:  # one bad frame: skip it, count it, say so
                failures += 1
                warnings.warn(f"teacher failed on frame {index} of {source}; skipped: {exc}", stacklevel=2)
        frames = kept
        if not frames:
            raise TeacherError(f"the teacher failed on every frame of {source}; nothing to compare")

    # --- errors -----------------------------------------------------------------------------------------
    images = [atoms for _, atoms in frames]
    preds = _predict(_with_uncertainty(calc), images, progress)
    n_atoms = np.array([len(a) for a in images])
    f_ref = np.concatenate([r["forces"] for r in refs])
    f_pred = np.concatenate([p["forces"] for p in preds])
    e_ref = np.array([r["energy"] for r in refs])
    e_pred = np.array([p["energy"] for p in preds])
    errors = {"n_frames": len(frames), "n_atoms": int(n_atoms.sum()), "n_teacher_failures": failures,
              "labels": "computed by the teacher in this run" if data is None else "stored in the dataset",
              **M.energy_errors(e_pred, e_ref, n_atoms), **M.force_errors(f_pred, f_ref)}
    s_ref = np.array([_voigt(r.get("stress")) for r in refs])
    s_pred = np.array([_voigt(p.get("stress")) for p in preds])
    errors.update(M.stress_errors(s_pred, s_ref))

    # --- speed ------------------------------------------------------------------------------------------
    picks = sorted({round(x) for x in np.linspace(0, len(images) - 1, min(SPEED_STRUCTURES, len(images)))})
    student_speed = _fresh_student(calc)
    speed = time_calls({"student": student_speed, "teacher": teacher_calc}, [images[i] for i in picks],
                       progress=progress)
    speed["speed_ratio"] = speed["teacher_ms_per_call"] / speed["student_ms_per_call"]  # > 1: student faster

    # --- NVE and RDFs -----------------------------------------------------------------------------------
    out = Path(out)
    lock = io.DirectoryLock(out, "another mlff-calc compare").acquire()  # one writer per report directory
    try:
        for name in (*FIGURES.values(), "student_nve.traj", "teacher_nve.traj", "metrics.json", "report.md"):
            (out / name).unlink(missing_ok=True)  # no stale figure or trajectory of an earlier run
        md_settings = {"steps": nve_steps, "timestep_fs": timestep, "temperature_k": temperature,
                       "interval_steps": _interval(nve_steps), "seed": 0,
                       "student_dtype": str(calc.dtype).removeprefix("torch."),
                       "structure": md_source,
                       "n_atoms": len(md_atoms), "formula": md_atoms.get_chemical_formula()}
        runs: dict[str, dict] = {}
        if nve_steps > 0:
            who = {"student": student_speed, **({"teacher": teacher_calc} if teacher_md else {})}
            for name, c in who.items():
                c.reset()
                runs[name] = run_nve(md_atoms, c, temperature=temperature, timestep=timestep, steps=nve_steps,
                                     interval=md_settings["interval_steps"], traj=out / f"{name}_nve.traj",
                                     seed=0, progress=progress)
        rdf_result, rdf_curves = _rdfs(runs)

        # --- figures, metrics.json, report.md -------------------------------------------------------------
        figures = {}
        d_ref, d_pred = energy_deviations(images, e_ref), energy_deviations(images, e_pred)
        plots.parity(out / FIGURES["parity"], f_ref, f_pred, d_ref, d_pred, errors["force_mae_ev_per_ang"],
                     float(np.mean(np.abs(d_pred - d_ref))))
        plots.error_histogram(out / FIGURES["error_histogram"], f_ref, f_pred)
        figures.update(parity=FIGURES["parity"], error_histogram=FIGURES["error_histogram"])
        uncertainty = _uncertainty(preds, f_pred, f_ref, n_atoms, out / FIGURES["reliability"])
        if uncertainty is not None:
            figures["reliability"] = FIGURES["reliability"]
        if runs:
            plots.energy_drift(out / FIGURES["energy_drift"], runs, timestep,
                               f", student in {md_settings['student_dtype']}")
            figures["energy_drift"] = FIGURES["energy_drift"]
        if rdf_curves is not None:
            plots.rdf_overlay(out / FIGURES["rdf"], rdf_curves[0], rdf_curves[1], rdf_result["kind"],
                              f"; relative L1 difference {rdf_result['difference_l1_relative']:.3g}")
            figures["rdf"] = FIGURES["rdf"]

        drop = ("times_ps", "total_energies_ev", "temperatures_k")  # series live in the .traj files
        result = {
            "errors": errors,
            "speed": speed,
            "nve": {"settings": md_settings, **{name: {k: v for k, v in run.items() if k not in drop}
                                                for name, run in runs.items()}},
            "rdf": rdf_result,
            "uncertainty": uncertainty,
            "figures": figures,
            "provenance": _provenance(calc, student_path, spec, data, structures, data_teacher, available,
                                      [i for i, _ in frames], device),
        }
        result = write_json(out / "metrics.json", result)
        write_report(out / "report.md", result)
        return result
    finally:
        lock.release()


# ---------------------------------------------------------------------------------------------------
# helpers


def _read_frames(data, structures, max_frames):
    """Selected frames ``[(index, Atoms)]``, their stored labels (None for a structure file), the number
    of frames available, and the dataset's teacher spec (None for a structure file)."""
    if data is not None:
        from ..data.reader import DatasetReader

        with DatasetReader(data) as reader:
            if len(reader) == 0:
                raise DataError(f"{data} holds no structures; nothing to compare")
            picks = _evenly_spaced(len(reader), max_frames)
            frames, refs = [], []
            for i in picks:
                fr = reader.frame(int(i))
                frames.append((int(i), Atoms(numbers=fr["atomic_numbers"], positions=fr["positions"],
                                             cell=fr["cell"], pbc=fr["pbc"])))
                refs.append({"energy": fr["energy"], "forces": fr["forces"], "stress": fr["stress"]})
            return frames, refs, len(reader), reader.teacher
    from ..data.structures import read_structures

    everything = read_structures(structures)  # raises for missing/empty files
    for atoms in everything:
        atoms.calc = None  # labels stored in the file are not the teacher's: always recompute
    picks = _evenly_spaced(len(everything), max_frames)
    return [(int(i), everything[i]) for i in picks], None, len(everything), None


def energy_deviations(images: list[Atoms], energies: np.ndarray) -> np.ndarray:
    """Per-atom energy of each structure minus the mean over the frames of the same seed (eV/atom).

    Frames are grouped by composition (the frames sampled from one seed structure share it). Absolute
    energies of different molecules sit eV apart, which on a parity plot makes tight clusters that hide
    the error; deviations from each seed's mean show whether the student orders conformers right.
    """
    per_atom = np.asarray(energies, float) / np.array([len(a) for a in images])
    groups = [tuple(sorted(a.numbers.tolist())) for a in images]
    out = np.empty_like(per_atom)
    for key in set(groups):
        members = np.array([g == key for g in groups])
        out[members] = per_atom[members] - per_atom[members].mean()
    return out


def _evenly_spaced(n: int, max_frames: int | None) -> np.ndarray:
    """Indices of at most ``max_frames`` frames spread over ``n`` (a trajectory's start alone would be a
    biased test set)."""
    if not max_frames or max_frames >= n:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, max_frames)).astype(int))


def _read_first(path) -> Atoms:
    from ..data.structures import read_structures

    atoms = read_structures(path)[0]
    atoms.calc = None
    return atoms


def _check_student_can_evaluate(calc, atoms: Atoms, where: str) -> None:
    try:
        calc.converter.validate(atoms)
    except ValueError as exc:
        raise InputError(f"the student cannot evaluate {where}: {exc}") from None


def _predict(calc, images, progress, chunk: int = 16) -> list[dict]:
    """Student energy, forces (and stress for fully periodic cells) in batches, with a progress bar."""
    from tqdm.auto import tqdm

    props = ("energy", "forces", "stress") if any(a.pbc.all() for a in images) else ("energy", "forces")
    preds = []
    with tqdm(total=len(images), desc="student", unit="frame", disable=not progress) as bar:
        for start in range(0, len(images), chunk):
            preds += calc.batch_calculate(images[start : start + chunk], props)
            bar.update(len(images[start : start + chunk]))
    return preds


def _with_uncertainty(calc):
    """The calculator itself, or a copy that also reports uncertainty when the student is calibrated."""
    from ..calculator import StudentCalculator
    from ..uncertainty import METADATA_KEY

    if getattr(calc, "uncertainty", True) is not None or METADATA_KEY not in calc.model.metadata:
        return calc
    return StudentCalculator(calc.model, device=calc.device, dtype=calc.dtype, skin=calc.converter.skin,
                             uncertainty=True)


def _uncertainty(preds, f_pred, f_ref, n_atoms, figure) -> dict | None:
    """How well the student's own uncertainty ranks its errors on these frames (None without one)."""
    from .. import uncertainty as U

    if not preds or "forces_uncertainty" not in preds[0]:
        return None
    per_atom = np.concatenate([p["forces_uncertainty"] for p in preds])
    predicted, observed = U.structure_force_errors(f_pred, f_ref, per_atom, n_atoms)
    atom_err = np.linalg.norm(np.asarray(f_pred) - np.asarray(f_ref), axis=1)
    ok = len(predicted) >= 3
    rel_atoms, rel_structures = U.reliability(per_atom, atom_err), U.reliability(predicted, observed)
    plots.reliability(figure, rel_atoms, rel_structures)
    return {"rank_correlation_structure": U.rank_correlation(predicted, observed) if ok else None,
            "rank_correlation_atom": U.rank_correlation(per_atom, atom_err) if len(atom_err) >= 3 else None,
            "predicted_over_observed_rms": float(np.sqrt(np.mean(predicted**2)) / np.sqrt(np.mean(observed**2))),
            "max_forces_uncertainty_ev_per_ang": float(per_atom.max())}


def _voigt(stress) -> np.ndarray:
    """(3, 3) or (6,) stress in eV/Å³ -> Voigt (6,); NaN when absent."""
    if stress is None:
        return np.full(6, np.nan)
    s = np.asarray(stress, float)
    return full_3x3_to_voigt_6_stress(s) if s.shape == (3, 3) else s.reshape(6)


def _fresh_student(calc):
    """A second calculator on the same weights, so timing and MD start from empty caches."""
    from ..calculator import StudentCalculator

    return StudentCalculator(calc.model, device=calc.device, dtype=calc.dtype, skin=calc.converter.skin)


def _interval(steps: int) -> int:
    """Record every 10 steps, but at least ~20 points for short runs."""
    return max(1, min(10, steps // 20))


def _rdfs(runs: dict[str, dict]):
    """RDFs of the second half of each run's trajectory (the first half relaxes from the initial
    velocities), only when both student and teacher ran stably. Returns (metrics or None, curves or None)."""
    from ase.io import read

    if not all(name in runs and runs[name]["ok"] for name in ("student", "teacher")):
        return None, None
    trajs = {name: read(runs[name]["traj"], index=":") for name in ("student", "teacher")}
    first = trajs["student"][0]
    if first.pbc.any():
        r_max = RDF_R_MAX
    else:  # a molecule: all pairs, out to the largest distance seen (+10 %)
        r_max = 1.1 * max(float(a.get_all_distances().max()) for t in trajs.values() for a in t) or 1.0
    curves, kind = {}, "g(r)"
    for name, frames in trajs.items():
        r, curves[name], kind = M.rdf(frames[len(frames) // 2 :], r_max, RDF_BINS)
    info = {"kind": kind, "r_max_ang": r_max, "bins": RDF_BINS,
            "n_frames_each": len(trajs["student"]) - len(trajs["student"]) // 2,
            "difference_l1_relative": M.rdf_difference(curves["student"], curves["teacher"])}
    return info, (r, curves)


def _provenance(calc, student_path, spec, data, structures, data_teacher, available, indices, device):
    import ase
    import torch

    from .. import __version__

    model = calc.model
    machine = {"node": platform.node(), "platform": platform.platform(), "processor": platform.processor()
               or platform.machine(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "device": str(calc.device)}
    if calc.device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(calc.device)
    return {
        "student": str(Path(student_path).resolve()) if student_path else None,
        "student_model": dict(getattr(model, "config", {})),
        "student_parameters": int(sum(p.numel() for p in model.parameters())),
        "student_elements": model.elements,
        "student_teacher": model.metadata.get("teacher"),
        "student_dtype": str(calc.dtype).removeprefix("torch."),
        "teacher": spec,
        "data": str(Path(data).resolve()) if data is not None else None,
        "data_teacher": data_teacher,
        "structures": str(Path(structures).resolve()) if structures is not None else None,
        "frames_available": available,
        "frames_used": indices,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "versions": {"mlff_calc": __version__, "torch": torch.__version__, "ase": ase.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "requested_device": str(device),
    }
