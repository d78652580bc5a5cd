"""How far the student is from what it was trained on: last-layer prediction rigidity (LLPR).

Method (after Bigi et al., "A prediction rigidity formalism for low-cost uncertainties in trained neural
networks", 2024), applied to the student's readout. ``phi_i = silu(readout[0](s_i))`` ``(Fh,)`` are the
readout's last hidden features of atom ``i``; the energy is linear in them. From the fit frames (the
training split) we keep precision matrices ``(Fh, Fh)``:

* per element ``Z``: ``P_Z = (Φ_Zᵀ Φ_Z / n_Z + λ I)⁻¹`` over the features of the training atoms of element
  ``Z`` (one per element: the features of H and of C lie in different regions, and a pooled covariance
  would call an H atom "typical" when it looks like a C atom; measured: rank correlation 0.86 vs 0.79);
* structures: ``P_s = (Σᵀ Σ / n_structures + λ I)⁻¹`` over each structure's summed ``f = Σ_i phi_i``;

with ``λ = regularization · trace / Fh``. An atom whose features lie where training had few gets a large
``d_i² = phi_iᵀ P_Z phi_i``. Calibration on held-out frames (the validation split) sets the scales:

* ``forces_uncertainty_i = force_scale · d_i^force_power`` (eV/Å), so it estimates the RMS magnitude of the
  force error vector of atom ``i``: ``force_power`` is the slope of log(observed RMS error) against
  log(RMS d) over equal-count bins of the calibration atoms (clipped to [1, 2]; measured ~1.4 on the
  quickstart student: errors grow faster than d, and p = 1 underpredicts the hot frames' errors 1.4x),
  then ``force_scale² = mean |ΔF_i|² / mean d_i^(2p)``;
* ``energy_uncertainty = energy_scale · sqrt(fᵀ P_s f)`` (eV): the RMS energy error of the structure.

A structure's force uncertainty is best summarised by the RMS of its atoms' values (it ranks structures
by their true force RMSE best, see ``benchmarks/bench_uncertainty.py``), or by their maximum.
Nothing in training changes; at inference it costs one ``(N, Fh) x (Fh, n_elements Fh)`` product (the CPU
kernel writes ``phi`` in the same call, :meth:`StudentForceField.energies_and_gradients`). The calibration
lives in the checkpoint's ``metadata["uncertainty"]`` as plain lists (weights-only loading still holds).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError, InputError

METADATA_KEY = "uncertainty"
METHOD = "llpr"
VERSION = 2  # 2: one atom precision matrix per element
UNCERTAINTY_KEYS = ("energy_uncertainty", "forces_uncertainty")  # eV per structure; (N,) eV/Å per atom
HOW_TO_CALIBRATE = ("retrain with this mlff_calc (every new student.pt is calibrated), or add a calibration to "
                    "this checkpoint: mlff-calc calibrate --model student.pt --data data.h5 --out calibrated.pt")


@dataclass
class Calibration:
    """The fitted LLPR state of one student (see the module docstring). Arrays float64."""

    elements: list[int]  # atomic numbers with an atom precision matrix
    atom_precision: np.ndarray  # (n_elements, Fh, Fh) | 1 / (feature units)², in the order of ``elements``
    structure_precision: np.ndarray  # (Fh, Fh)
    force_scale: float  # eV/Å per unit of d_i^force_power
    energy_scale: float  # eV per unit of sqrt(fᵀ P_s f)
    info: dict[str, Any]  # frames used, calibration errors (plain values)
    force_power: float = 1.0  # exponent of d_i

    def __post_init__(self):
        self._index = np.full(max(self.elements, default=0) + 1, -1, dtype=np.int64)
        self._index[self.elements] = np.arange(len(self.elements))
        n, f = len(self.elements), self.hidden
        self._stacked = np.ascontiguousarray(self.atom_precision.transpose(1, 0, 2).reshape(f, n * f))
        self._gather: tuple | None = None  # predict_one's cache: key, gather rows, matrices in its dtype

    @property
    def hidden(self) -> int:
        return int(self.structure_precision.shape[0])

    def distances(self, features: np.ndarray, numbers: np.ndarray) -> np.ndarray:
        """``d_i² = phi_iᵀ P_Z phi_i`` ``(N,)`` for ``features (N, Fh)`` float64 of atoms ``numbers (N,)``."""
        numbers = np.asarray(numbers, dtype=np.int64)
        try:
            index = self._index[numbers]
            if index.min(initial=0) < 0:
                raise IndexError
        except IndexError:
            unknown = sorted(set(numbers.tolist()) - set(self.elements))
            raise InputError(f"the uncertainty calibration has no data for elements {unknown}") from None
        n, f = len(numbers), self.hidden
        # one product against every element's matrix, then each atom's own block (cheaper than a loop)
        y = (features @ self._stacked).reshape(n, len(self.elements), f)[np.arange(n), index]
        return (y * features).sum(axis=1)

    def predict(self, features: np.ndarray, n_atoms: Sequence[int],
                numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(energy_uncertainty (B,) eV, forces_uncertainty (N,) eV/Å)`` from ``features (N, Fh)`` of the
        atoms ``numbers (N,)`` of ``B`` consecutive structures of ``n_atoms`` atoms."""
        phi = np.asarray(features, dtype=np.float64)
        forces = self.force_scale * np.maximum(self.distances(phi, numbers), 0.0) ** (0.5 * self.force_power)
        summed = phi.sum(axis=0, keepdims=True) if len(n_atoms) == 1 else _summed(phi, np.asarray(n_atoms))
        s2 = ((summed @ self.structure_precision) * summed).sum(axis=1)
        return self.energy_scale * np.sqrt(np.maximum(s2, 0.0)), forces

    def predict_one(self, features: np.ndarray, numbers: np.ndarray) -> tuple[float, np.ndarray]:
        """:meth:`predict` for one structure, lean: the calculator's per-call path (a dozen small numpy
        operations, in the features' own dtype; the per-atom gather index is cached for the last ``numbers``)."""
        n, f = features.shape
        key = (numbers.tobytes(), features.dtype)
        if self._gather is None or self._gather[0] != key:
            numbers = np.asarray(numbers, dtype=np.int64)
            known = numbers < len(self._index)
            index = np.where(known, self._index[np.where(known, numbers, 0)], -1)
            if index.min(initial=0) < 0:
                unknown = sorted(set(numbers[index < 0].tolist()))
                raise InputError(f"the uncertainty calibration has no data for elements {unknown}")
            self._gather = (key, np.arange(n) * len(self.elements) + index, self._stacked.astype(features.dtype),
                            self.structure_precision.astype(features.dtype))
        _, rows, stacked, structure = self._gather
        d2 = ((features @ stacked).reshape(-1, f).take(rows, axis=0) * features).sum(axis=1)
        summed = features.sum(axis=0)
        energy = self.energy_scale * math.sqrt(max(float(summed @ structure @ summed), 0.0))
        return energy, self.force_scale * np.power(np.maximum(d2, 0.0), 0.5 * self.force_power, dtype=np.float64)

    def to_metadata(self) -> dict[str, Any]:
        """Plain containers for ``model.metadata[METADATA_KEY]`` (checkpoints hold no numpy objects)."""
        return {"method": METHOD, "version": VERSION, "hidden": self.hidden, "elements": list(self.elements),
                "atom_precision": self.atom_precision.tolist(),
                "structure_precision": self.structure_precision.tolist(),
                "force_scale": float(self.force_scale), "force_power": float(self.force_power),
                "energy_scale": float(self.energy_scale),
                "info": dict(self.info)}

    @classmethod
    def from_metadata(cls, meta: dict[str, Any], hidden: int, where: str = "the model") -> "Calibration":
        """Read :meth:`to_metadata`'s dict back; :class:`CheckpointError` when it does not fit the model."""
        try:
            if meta.get("method") != METHOD or int(meta.get("version", 0)) != VERSION:
                raise ValueError(f"method {meta.get('method')!r} version {meta.get('version')!r}, this mlff_calc "
                                 f"reads {METHOD} version {VERSION}")
            elements = [int(z) for z in meta["elements"]]
            atom = np.asarray(meta["atom_precision"], dtype=np.float64)
            struct = np.asarray(meta["structure_precision"], dtype=np.float64)
            if atom.shape != (len(elements), hidden, hidden) or struct.shape != (hidden, hidden):
                raise ValueError(f"precision matrices of shapes {atom.shape} and {struct.shape} do not fit a "
                                 f"readout of {hidden} features and {len(elements)} elements")
            if not (np.isfinite(atom).all() and np.isfinite(struct).all()):
                raise ValueError("non-finite precision matrices")
            return cls(elements, atom, struct, float(meta["force_scale"]), float(meta["energy_scale"]),
                       dict(meta.get("info", {})), float(meta.get("force_power", 1.0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: unusable uncertainty calibration ({exc}); {HOW_TO_CALIBRATE}") from None


def readout_hidden(model) -> int:
    """Fh: the width of the readout's last hidden layer."""
    return int(model.readout[0].out_features)


def calibration_of(model, where: str = "the model") -> Calibration:
    """The model's calibration, or :class:`InputError` saying how to get one."""
    meta = model.metadata.get(METADATA_KEY)
    if meta is None:
        raise InputError(f"{where} has no uncertainty calibration; {HOW_TO_CALIBRATE}")
    calibration = Calibration.from_metadata(meta, readout_hidden(model), where)
    missing = sorted(set(model.elements or ()) - set(calibration.elements))
    if missing:
        raise InputError(f"{where}: its uncertainty calibration has no data for elements {missing} it was trained "
                         f"on; recalibrate on frames that contain them ({HOW_TO_CALIBRATE})")
    return calibration


# ---- fitting --------------------------------------------------------------------------------------------
def _frame(item) -> dict[str, np.ndarray]:
    """A frame dict (``DatasetReader.frame`` keys) from such a dict or from ``ase.Atoms`` with forces."""
    if isinstance(item, dict):
        return item
    forces = item.arrays.get("forces")
    energy = None
    if item.calc is not None:
        forces = item.calc.results.get("forces", forces)
        energy = item.calc.results.get("energy")
    return {"atomic_numbers": item.numbers, "positions": item.positions, "cell": item.cell.array,
            "pbc": item.pbc, "forces": forces, "energy": item.info.get("energy", energy)}


def evaluate_frames(model, frames: Iterable, max_atoms: int = 4096) -> dict[str, np.ndarray]:
    """Features and predictions of ``model`` (in its dtype and device) on labelled frames.

    Returns float64 arrays: ``features (N, Fh)``, ``numbers (N,)`` (int64), ``forces (N, 3)``, ``ref_forces (N, 3)`` (NaN where
    missing), ``energy (B,)``, ``ref_energy (B,)`` and ``n_atoms (B,)``.
    """
    from .graph import build_graph

    frames = [_frame(f) for f in frames]
    if not frames:
        raise InputError("no frames to evaluate")
    keys = ("features", "numbers", "forces", "ref_forces", "energy", "ref_energy", "n_atoms")
    out: dict[str, list] = {k: [] for k in keys}
    was_training = model.training
    model.eval()
    try:
        start = 0
        while start < len(frames):
            stop, n = start, 0
            while stop < len(frames) and (stop == start or n + len(frames[stop]["atomic_numbers"]) <= max_atoms):
                n += len(frames[stop]["atomic_numbers"])
                stop += 1
            chunk = frames[start:stop]
            sizes = [len(f["atomic_numbers"]) for f in chunk]
            graph = build_graph(np.concatenate([f["atomic_numbers"] for f in chunk]),
                                np.concatenate([f["positions"] for f in chunk]),
                                np.stack([np.asarray(f["cell"], dtype=np.float64) for f in chunk]),
                                np.stack([np.asarray(f["pbc"], dtype=bool) for f in chunk]),
                                sizes, model.cutoff, model.dtype, model.device)
            phi = torch.empty((n, readout_hidden(model)), dtype=model.dtype, device=model.device)
            energies, forces, _ = model.inference(graph, features=phi)
            energies = energies.detach().double().cpu().numpy()
            offsets = np.concatenate([[0], np.cumsum(sizes)])
            out["features"].append(phi.double().cpu().numpy())
            out["numbers"].append(graph.numbers.cpu().numpy())
            out["forces"].append(forces.detach().double().cpu().numpy())
            out["energy"].append(np.add.reduceat(energies, offsets[:-1]))
            for f in chunk:
                ref = f.get("forces")
                out["ref_forces"].append(np.full((len(f["atomic_numbers"]), 3), np.nan) if ref is None
                                         else np.asarray(ref, dtype=np.float64))
                out["ref_energy"].append(np.nan if f.get("energy") is None else float(f["energy"]))
            out["n_atoms"].extend(sizes)
            start = stop
    finally:
        model.train(was_training)
    return {"features": np.concatenate(out["features"]), "numbers": np.concatenate(out["numbers"]),
            "forces": np.concatenate(out["forces"]),
            "ref_forces": np.concatenate(out["ref_forces"]), "energy": np.concatenate(out["energy"]),
            "ref_energy": np.asarray(out["ref_energy"], dtype=np.float64),
            "n_atoms": np.asarray(out["n_atoms"], dtype=np.int64)}


def _precision(rows: np.ndarray, regularization: float) -> np.ndarray:
    cov = rows.T @ rows / max(len(rows), 1)
    lam = regularization * max(float(np.trace(cov)) / len(cov), 1e-30)
    return np.linalg.inv(cov + lam * np.eye(len(cov)))


def _summed(features: np.ndarray, n_atoms: np.ndarray) -> np.ndarray:
    return np.add.reduceat(features, np.concatenate([[0], np.cumsum(n_atoms)[:-1]]).astype(np.int64), axis=0)


def fit(model, frames: Iterable, calibration_frames: Iterable, regularization: float = 1e-6,
        max_atoms: int = 4096) -> Calibration:
    """Fit the LLPR calibration of ``model``: covariances over ``frames`` (the training frames), scales
    over ``calibration_frames`` (held-out frames with reference forces and energies: the validation split).

    Frames: ``ase.Atoms`` with reference forces (a calculator's results or ``arrays["forces"]``) or dicts
    with the keys of :meth:`mlff_calc.data.reader.DatasetReader.frame`. Returns the :class:`Calibration`;
    :func:`attach` stores it in the model. ``regularization``: λ relative to the mean feature variance
    (1e-6: measured best of 1e-9..1e-1 on the quickstart molecules; 1e-3 and above blur the signal).
    """
    fit_data = evaluate_frames(model, frames, max_atoms)
    elements = sorted(int(z) for z in np.unique(fit_data["numbers"]))
    held = [f for f in map(_frame, calibration_frames) if set(np.unique(f["atomic_numbers"]).tolist()) <= set(elements)]
    if not held:
        raise InputError("no calibration frame has only elements of the fit frames "
                         f"{elements}; give held-out frames like the training data")
    cal_data = evaluate_frames(model, held, max_atoms)
    atom_p = np.stack([_precision(fit_data["features"][fit_data["numbers"] == z], regularization)
                       for z in elements])
    struct_p = _precision(_summed(fit_data["features"], fit_data["n_atoms"]), regularization)
    raw = Calibration(elements, atom_p, struct_p, 1.0, 1.0, {})
    raw_e, raw_f = raw.predict(cal_data["features"], cal_data["n_atoms"], cal_data["numbers"])
    err_f = np.linalg.norm(cal_data["forces"] - cal_data["ref_forces"], axis=1)
    ok_f = np.isfinite(err_f)
    if not ok_f.any():
        raise InputError("the calibration frames have no reference forces")
    power = _force_power(raw_f[ok_f], err_f[ok_f])
    force_scale = float(np.sqrt(np.mean(err_f[ok_f] ** 2) / max(np.mean(raw_f[ok_f] ** (2 * power)), 1e-300)))
    err_e = cal_data["energy"] - cal_data["ref_energy"]
    ok_e = np.isfinite(err_e)
    # without reference energies the energy uncertainty has no calibrated scale: 0 says "unknown"
    energy_scale = (float(np.sqrt(np.mean(err_e[ok_e] ** 2) / max(np.mean(raw_e[ok_e] ** 2), 1e-300)))
                    if ok_e.any() else 0.0)
    info = {"fit_frames": int(len(fit_data["n_atoms"])), "fit_atoms": int(len(fit_data["features"])),
            "calibration_frames": int(len(cal_data["n_atoms"])), "regularization": float(regularization),
            "calibration_force_rmse_ev_per_ang": float(np.sqrt(np.mean(err_f[ok_f] ** 2) / 3.0)),
            "energy_calibrated": bool(ok_e.any())}
    return Calibration(elements, atom_p, struct_p, force_scale, energy_scale, info, power)


def _force_power(d: np.ndarray, err: np.ndarray, min_atoms_per_bin: int = 30) -> float:
    """Slope of log(bin RMS error) vs log(bin RMS d) over equal-count bins, clipped to [1, 2]; 1 (plain
    LLPR scaling) when there are too few atoms for 3 bins."""
    bins = min(10, len(d) // min_atoms_per_bin)
    if bins < 3:
        return 1.0
    rel = reliability(d, err, bins)
    x, y = np.log(rel["predicted_rms"]), np.log(np.maximum(rel["observed_rms"], 1e-300))
    if not (np.isfinite(x).all() and np.isfinite(y).all()) or np.ptp(x) == 0:
        return 1.0
    return float(np.clip(np.polyfit(x, y, 1)[0], 1.0, 2.0))


def attach(model, calibration: Calibration) -> None:
    """Store ``calibration`` in ``model.metadata`` (saved with the model)."""
    if calibration.hidden != readout_hidden(model):
        raise InputError(f"the calibration is for a readout of {calibration.hidden} features, the model has "
                         f"{readout_hidden(model)}")
    model.metadata[METADATA_KEY] = calibration.to_metadata()


# ---- measuring it -------------------------------------------------------------------------------------
def rank_correlation(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation of two equally long sequences (average ranks for ties)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) != len(b) or len(a) < 3:
        raise InputError(f"rank correlation needs two sequences of equal length >= 3, got {len(a)} and {len(b)}")

    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="mergesort")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=np.float64)
        _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
        sums = np.bincount(inverse, weights=r)
        return sums[inverse] / counts[inverse]

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def reliability(predicted: Sequence[float], observed: Sequence[float], bins: int = 10) -> dict[str, list]:
    """Predicted vs observed error, binned by predicted value (equal-count bins): for each bin the RMS
    predicted uncertainty, the RMS observed error and the count. Calibrated means the two agree."""
    p, o = np.asarray(predicted, dtype=np.float64), np.asarray(observed, dtype=np.float64)
    order = np.argsort(p)
    groups = [g for g in np.array_split(order, min(bins, len(p))) if len(g)]
    return {"predicted_rms": [float(np.sqrt(np.mean(p[g] ** 2))) for g in groups],
            "observed_rms": [float(np.sqrt(np.mean(o[g] ** 2))) for g in groups],
            "count": [int(len(g)) for g in groups]}


def structure_force_errors(forces: np.ndarray, ref_forces: np.ndarray, forces_uncertainty: np.ndarray,
                           n_atoms: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per structure: ``(predicted, observed)`` RMS over atoms of the force-error magnitude (eV/Å), the
    prediction from ``forces_uncertainty (N,)``, the observation from ``|forces - ref_forces|``."""
    err2 = np.sum((np.asarray(forces) - np.asarray(ref_forces)) ** 2, axis=1)
    starts = np.concatenate([[0], np.cumsum(n_atoms)[:-1]]).astype(np.int64)
    counts = np.asarray(n_atoms, dtype=np.float64)
    predicted = np.sqrt(np.add.reduceat(np.asarray(forces_uncertainty) ** 2, starts) / counts)
    return predicted, np.sqrt(np.add.reduceat(err2, starts) / counts)
