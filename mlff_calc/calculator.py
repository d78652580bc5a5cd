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
from .utils import resolve_device, resolve_dtype

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

    def check_state(self, atoms, tol=1e-15):
        """What changed since the last calculation (ASE's ``compare_atoms``, about 10x faster).

        Exact equality instead of ASE's relative tolerance of 1e-15: a change that small only costs a
        recomputation (with identical results). Falls back to ASE for anything unusual.
        """
        old = self.atoms
        if old is None or self.ignored_changes or type(atoms.arrays) is not dict:
            return super().check_state(atoms, tol)
        changes = []
        if not _same(old.cell.array, atoms.cell.array):
            changes.append("cell")
        if not _same(old.pbc, atoms.pbc):
            changes.append("pbc")
        a, b = old.arrays, atoms.arrays
        for name in _ARRAY_CHANGES:
            x, y = a.get(name), b.get(name)
            if (x is not None or y is not None) and (x is None or y is None or not _same(x, y)):
                changes.append(name)
        return changes

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        # ASE's get_property has just stored a copy of ``atoms`` in self.atoms; the base class would copy
        # it again and stat its directory (a third of the Python overhead on a 9-atom molecule). Copy
        # only when called directly with atoms that differ from self.atoms.
        if atoms is not None and (self.atoms is None or self.check_state(atoms)):
            self.atoms = atoms.copy()
        atoms = self.atoms
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


_ARRAY_CHANGES = [name for name in all_changes if name not in ("cell", "pbc")]


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool((a == b).all())


def _numpy(out) -> tuple:
    """Model outputs as float64 numpy arrays (None stays None)."""
    return tuple(None if t is None else t.detach().cpu().numpy().astype(np.float64) for t in out)


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
