"""``StudentCalculator``: the student as a drop-in ASE calculator.

Thin on purpose: ``calculate`` lets the converter turn the atoms into a :class:`~mlff_calc.graph.Graph`
(validation, skin list), runs the model once (``StudentForceField.inference``) and fills ``results``.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from .converter import AtomsConverter
from .errors import CheckpointError, InputError, ModelOutputError
from .graph import build_graph
from .model.student import StudentForceField
from .uncertainty import UNCERTAINTY_KEYS, calibration_of
from .utils import bitwise_equal, resolve_device, resolve_dtype

_VOIGT = (np.array([0, 1, 2, 1, 0, 0]), np.array([0, 1, 2, 2, 2, 1]))  # xx, yy, zz, yz, xz, xy


class StudentCalculator(Calculator):
    """ASE calculator for a :class:`StudentForceField`.

    Args:
        model: the student (copied: the calculator holds its own, cast to ``device`` and ``dtype``).
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device``.
        dtype: ``"float32"`` (default) or ``"float64"``.
        skin: Verlet skin in Å; the neighbour list is rebuilt only after an atom moved more than
            ``skin / 2`` or the cell/pbc/atoms changed. Results do not depend on it, only speed does.
        uncertainty: also return the student's own uncertainty (last-layer prediction rigidity,
            :mod:`mlff_calc.uncertainty`); needs a calibrated checkpoint (every ``student.pt`` trained by
            this version is; ``mlff-calc calibrate`` adds one), else :class:`~mlff_calc.errors.InputError`.
            Off (default) costs nothing and leaves ``results`` unchanged.

    Properties: ``energy``, ``free_energy`` (eV), ``energies`` (eV per atom), ``forces`` (eV/Å) and
    ``stress`` (eV/Å³, Voigt order, ASE sign; fully periodic cells only). With ``uncertainty=True`` also:

    * ``energy_uncertainty``: float, eV: the expected RMS error of ``energy`` against the teacher;
    * ``forces_uncertainty``: ``(N,)`` eV/Å: per atom, the expected RMS magnitude ``|F - F_teacher|`` of
      the force error vector (calibrated on held-out frames, so it estimates the typical force error;
      large values mean the atom's environment is unlike the training data). To rank structures (frames
      to label), use the RMS over its atoms: it ranks true per-structure force errors best (Spearman 0.90
      vs 0.87 for the maximum, ``benchmarks/RESULTS.md``); the maximum flags one atom leaving the
      training domain (what ``run_md`` watches).
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(
        self,
        model: StudentForceField,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "float32",
        skin: float = 1.0,
        uncertainty: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(model, StudentForceField):
            raise TypeError(f"model must be a StudentForceField, got {type(model).__name__}")
        bad = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if not torch.isfinite(t).all()]
        if bad:
            raise InputError(
                f"the model's weights are not finite ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}): "
                "it would return NaN for every structure; a training run that diverged writes such weights"
            )
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.model = copy.deepcopy(model).to(device=self.device, dtype=self.dtype).eval()
        # Only derivatives with respect to positions and strain are needed: no parameter gradients.
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.uncertainty = calibration_of(self.model) if uncertainty else None
        self._feature_buffer: torch.Tensor | None = None
        if self.uncertainty is not None:
            self.implemented_properties = [*type(self).implemented_properties, *UNCERTAINTY_KEYS]
        self.converter = AtomsConverter(
            cutoff=self.model.cutoff,
            skin=skin,
            dtype=self.dtype,
            device=self.device,
            max_z=self.model.max_z,
            elements=self.model.elements,
        )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "float32",
        **kwargs,
    ) -> "StudentCalculator":
        """Load ``student.pt`` (weights only, never code) and wrap it."""
        model = StudentForceField.load(path)
        if kwargs.get("uncertainty"):
            calibration_of(model, where=f"checkpoint {path}")
        try:
            return cls(model, device=device, dtype=dtype, **kwargs)
        except InputError as exc:
            if "not finite" in str(exc):
                raise CheckpointError(f"{path}: {exc}") from None
            raise

    @property
    def metadata(self) -> dict:
        return self.model.metadata

    def batch_calculate(self, images, properties=("energy", "forces"), max_atoms: int = 4096) -> list[dict]:
        """Evaluate many structures in few model calls; each result equals a one-by-one ``calculate``.

        Structures are packed greedily into batches of at most ``max_atoms`` atoms (a larger structure
        gets a batch of its own). Returns one ``results``-like dict per image (stress only for fully
        periodic images, when asked for). Errors name the structure: ``structure 17: ...``.
        """
        images = list(images)
        for b, atoms in enumerate(images):
            self.converter.validate(atoms, where=f"structure {b}: ")
        want_stress = "stress" in properties
        results: list[dict] = []
        start = 0
        while start < len(images):
            stop, n = start, 0
            while stop < len(images) and (stop == start or n + len(images[stop]) <= max_atoms):
                n += len(images[stop])
                stop += 1
            results.extend(self._evaluate_batch(images[start:stop], start, want_stress))
            start = stop
        return results

    def _evaluate_batch(self, images, first: int, want_stress: bool) -> list[dict]:
        sizes = [len(a) for a in images]
        cells = np.stack([a.cell.array for a in images])
        pbcs = np.stack([a.pbc for a in images])
        try:
            graph = build_graph(
                np.concatenate([a.numbers for a in images]), np.concatenate([a.positions for a in images]),
                cells, pbcs, sizes, self.model.cutoff, self.dtype, self.device, check_overlap=True,
            )
        except InputError as exc:  # "structure b: ..." counts within this batch; name the image instead
            message = str(exc)
            if message.startswith("structure "):
                b, rest = message[len("structure "):].split(":", 1)
                message = f"structure {first + int(b)}:{rest}"
            raise InputError(message) from None
        features = self._features(graph)
        energies, forces, virial = _numpy(self._inference(graph, want_stress, features))
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        results = [
            _results(energies[offsets[b]:offsets[b + 1]], forces[offsets[b]:offsets[b + 1]],
                     virial[b] if want_stress and pbcs[b].all() else None, cells[b], first + b)
            for b in range(len(images))
        ]
        if features is not None:
            energy_unc, forces_unc = self.uncertainty.predict(features.double().cpu().numpy(), sizes,
                                                              graph.numbers.cpu().numpy())
            for b, res in enumerate(results):
                res["energy_uncertainty"] = float(energy_unc[b])
                res["forces_uncertainty"] = forces_unc[offsets[b]:offsets[b + 1]]
        return results

    def _inference(self, graph, want_stress: bool, features: torch.Tensor | None):
        """The model call; with uncertainty off exactly as before (no extra argument)."""
        if features is None:
            return self.model.inference(graph, want_stress)
        return self.model.inference(graph, want_stress, features=features)

    def _features(self, graph) -> torch.Tensor | None:
        """The buffer the model writes the readout features into, when uncertainty is on."""
        if self.uncertainty is None:
            return None
        shape = (graph.n_atoms, self.uncertainty.hidden)
        if self._feature_buffer is None or self._feature_buffer.shape != shape:  # reused: the model overwrites it
            self._feature_buffer = torch.empty(shape, dtype=self.dtype, device=self.device)
        return self._feature_buffer

    # ---- ASE's record of the last structure: ``self.atoms`` ------------------------------------------
    # ASE keeps ``calc.atoms = atoms.copy()`` after every calculation and compares the next structure with
    # it. On a 9-atom molecule that copy (an ``Atoms`` constructor) cost 40 µs of a 400 µs call, and the
    # comparison ~7 µs, twice per MD step (forces, then energy). Here the calculator keeps copies of the
    # arrays (:class:`_Snapshot`) and builds the ``Atoms`` only when someone reads ``calc.atoms``.
    @property
    def atoms(self):
        return None if self._snapshot is None else self._snapshot.materialize()

    @atoms.setter
    def atoms(self, atoms) -> None:  # as in ASE, the object itself is kept (callers pass a copy)
        self._snapshot = None if atoms is None else _Snapshot.of(atoms)

    def check_state(self, atoms, tol=1e-15):
        """What changed since the last calculation (ASE's ``compare_atoms``, about 20x faster).

        Exact equality of the bytes instead of ASE's relative tolerance of 1e-15: a change that small (or
        -0.0 for 0.0) only costs a recomputation, with identical results. Falls back to ASE for anything
        unusual.
        """
        old = self._snapshot
        if old is None or self.ignored_changes or type(atoms.arrays) is not dict:
            return super().check_state(atoms, tol)
        cell, pbc, arrays = old.state()
        changes = []
        if not bitwise_equal(cell, atoms.cell.array):
            changes.append("cell")
        if not bitwise_equal(pbc, atoms.pbc):
            changes.append("pbc")
        new = atoms.arrays
        for name in _ARRAY_CHANGES:
            x, y = arrays.get(name), new.get(name)
            if (x is not None or y is not None) and (x is None or y is None or not bitwise_equal(x, y)):
                changes.append(name)
        return changes

    def get_property(self, name, atoms=None, allow_calculation=True):
        """ASE's ``get_property`` (same contract, same results) with the cheap record of the last
        structure."""
        if name not in self.implemented_properties:
            raise PropertyNotImplementedError(f"{name} property not implemented")
        if atoms is not None and (self._snapshot is None or self.check_state(atoms)):
            self._snapshot, self.results = None, {}
        if name not in self.results:
            if not allow_calculation:
                return None
            self._compute(self.atoms if atoms is None else atoms, [name])
        if name not in self.results:
            raise PropertyNotImplementedError(f"{name} not present in this calculation")
        result = self.results[name]
        return result.copy() if isinstance(result, np.ndarray) else result

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        if atoms is not None and (self._snapshot is None or self.check_state(atoms)):
            self._snapshot = None
        self._compute(self.atoms if atoms is None else atoms, properties)

    def _compute(self, atoms, properties) -> None:
        """Evaluate ``atoms`` into ``results``, recording it first unless it is recorded already."""
        if atoms is None:
            raise InputError("nothing to calculate: pass atoms (this calculator has no structure yet)")
        if self._snapshot is None:
            self._snapshot = _Snapshot(atoms)
        want_stress = "stress" in properties
        if want_stress and not atoms.pbc.all():
            raise PropertyNotImplementedError(
                f"stress needs a fully periodic cell; this structure has pbc={atoms.pbc.tolist()}"
            )
        graph = self.converter(atoms)
        features = self._features(graph)
        energies, forces, virial = _numpy(self._inference(graph, want_stress, features))
        self.results = _results(energies, forces, virial[0] if want_stress else None, atoms.cell.array)
        if features is not None:
            energy_unc, forces_unc = self.uncertainty.predict_one(features.cpu().numpy(), atoms.numbers)
            self.results["energy_uncertainty"] = energy_unc
            self.results["forces_uncertainty"] = forces_unc


class _Snapshot:
    """The structure of the last calculation: copies of its arrays, cell and pbc (what ``check_state``
    compares with), made into an ``Atoms`` (as ``atoms.copy()`` would: info, constraints, celldisp) only
    when ``calc.atoms`` is read; from then on that object is the record, as in ASE."""

    __slots__ = ("cls", "arrays", "cell", "pbc", "celldisp", "info", "constraints", "atoms")

    def __init__(self, atoms):
        self.cls = type(atoms)
        self.arrays = {name: a.copy() for name, a in atoms.arrays.items()}
        self.cell = atoms.cell.array.copy()
        self.pbc = atoms.pbc.copy()
        self.celldisp = atoms._celldisp.copy()
        self.info = dict(atoms.info)
        self.constraints = copy.deepcopy(atoms.constraints) if atoms.constraints else []
        self.atoms = None

    @classmethod
    def of(cls, atoms) -> "_Snapshot":
        """A record that is ``atoms`` itself."""
        snapshot = cls.__new__(cls)
        snapshot.atoms = atoms
        return snapshot

    def materialize(self):
        if self.atoms is None:
            atoms = self.cls(cell=self.cell, pbc=self.pbc, info=self.info, celldisp=self.celldisp)
            atoms.arrays = self.arrays
            atoms.constraints = self.constraints
            self.atoms = atoms
        return self.atoms

    def state(self) -> tuple:
        """``(cell, pbc, arrays)`` to compare the next structure with."""
        a = self.atoms
        return (self.cell, self.pbc, self.arrays) if a is None else (a.cell.array, a.pbc, a.arrays)


_ARRAY_CHANGES = [name for name in all_changes if name not in ("cell", "pbc")]


def _numpy(out) -> tuple:
    """Model outputs as float64 numpy arrays (None stays None)."""
    return tuple(None if t is None else _array(t) for t in out)


def _array(t: torch.Tensor) -> np.ndarray:
    if t.device.type != "cpu" or t.requires_grad:  # (the CPU kernel's outputs need neither step)
        t = t.detach().cpu()
    return t.numpy().astype(np.float64)


def _results(energies: np.ndarray, forces: np.ndarray, virial, cell: np.ndarray, index: int | None = None) -> dict:
    """ASE ``results`` of one structure; refuses non-finite values. Energy in float64 from per-atom ones."""
    energy = float(energies.sum())
    if not (math.isfinite(energy) and np.isfinite(forces).all()):
        where = "" if index is None else f"structure {index}: "
        raise ModelOutputError(
            f"{where}the student returned a non-finite energy or forces although its weights are finite and "
            "the structure passed validation: the structure is likely far outside what the model was "
            "trained on (e.g. atoms much closer than in any training frame), overflowing the "
            "arithmetic; dtype='float64' may help, otherwise add such structures to the training data"
        )
    results = {"energy": energy, "free_energy": energy, "energies": energies, "forces": forces}
    if virial is not None:
        stress = -virial / abs(np.linalg.det(cell))
        results["stress"] = stress[_VOIGT]
    return results
