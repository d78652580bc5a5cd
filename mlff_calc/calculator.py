"""``StudentCalculator``: the student as a drop-in ASE calculator."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from . import _keys as K
from .converter import AtomsConverter
from .model.student import StudentForceField
from .neighbors import edge_vectors
from .utils import resolve_device, resolve_dtype


class StudentCalculator(Calculator):
    """ASE calculator for a :class:`StudentForceField`.

    Args:
        model: the student (copied: the calculator holds its own, cast to ``device`` and ``dtype``).
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device``.
        dtype: ``"float32"`` (default) or ``"float64"``.
        skin: Verlet skin in Å; the neighbour list is rebuilt only after an atom moved more than
            ``skin / 2`` or the cell/pbc/atoms changed. Results do not depend on it, only speed does.

    Properties: ``energy``, ``free_energy`` (eV), ``energies`` (eV per atom), ``forces`` (eV/Å) and
    ``stress`` (eV/Å³, Voigt order, ASE sign; fully periodic cells only).
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(
        self,
        model: StudentForceField,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "float32",
        skin: float = 1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(model, StudentForceField):
            raise TypeError(f"model must be a StudentForceField, got {type(model).__name__}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.model = copy.deepcopy(model).to(device=self.device, dtype=self.dtype).eval()
        # Only derivatives with respect to positions and strain are needed: no parameter gradients.
        for p in self.model.parameters():
            p.requires_grad_(False)
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
        return cls(StudentForceField.load(path), device=device, dtype=dtype, **kwargs)

    @property
    def metadata(self) -> dict:
        return self.model.metadata

    def batch_calculate(self, images, properties=("energy", "forces"), max_atoms: int = 4096) -> list[dict]:
        """Evaluate many structures in few model calls; each result equals a one-by-one ``calculate``.

        Structures are packed greedily into batches of at most ``max_atoms`` atoms (a larger structure
        gets a batch of its own). Returns one ``results``-like dict per image (stress only for fully
        periodic images, when asked for).
        """
        images = list(images)
        for atoms in images:
            self.converter.validate(atoms)
        results: list[dict] = []
        start = 0
        while start < len(images):
            stop, n = start, 0
            while stop < len(images) and (stop == start or n + len(images[stop]) <= max_atoms):
                n += len(images[stop])
                stop += 1
            results.extend(self._evaluate_batch(images[start:stop], "stress" in properties))
            start = stop
        return results

    def _evaluate_batch(self, images, want_stress: bool) -> list[dict]:
        data = {
            K.ATOMIC_NUMBERS: np.concatenate([a.numbers for a in images]),
            K.POSITIONS: torch.as_tensor(np.concatenate([a.positions for a in images])),
            K.CELL: torch.as_tensor(np.stack([a.cell.array for a in images])),
            K.PBC: torch.as_tensor(np.stack([a.pbc for a in images])),
            K.BATCH: torch.as_tensor(np.repeat(np.arange(len(images)), [len(a) for a in images])),
        }
        data = self.model.prepare(data)
        offsets = np.concatenate([[0], np.cumsum([len(a) for a in images])])
        distances = torch.linalg.vector_norm(edge_vectors(data), dim=-1)
        for b, atoms in enumerate(images):  # the same overlap check as one-by-one evaluation
            mine = data[K.BATCH][data[K.EDGE_INDEX][0]] == b
            self.converter.check_overlap(
                atoms, data[K.EDGE_INDEX][:, mine] - int(offsets[b]), data[K.CELL_SHIFTS][mine], distances[mine]
            )
        out = _to_numpy(self.model(data, compute_forces=True, compute_stress=want_stress))
        return [
            _results(out, b, offsets[b], offsets[b + 1], want_stress and atoms.pbc.all())
            for b, atoms in enumerate(images)
        ]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        want_stress = "stress" in properties
        if want_stress and not atoms.pbc.all():
            raise PropertyNotImplementedError(
                f"stress needs a fully periodic cell; this structure has pbc={atoms.pbc.tolist()}"
            )
        data = self.converter(atoms)
        out = _to_numpy(self.model(data, compute_forces=True, compute_stress=want_stress))
        self.results = _results(out, 0, 0, len(atoms), want_stress)


def _to_numpy(out: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().to(torch.float64).numpy() for k, v in out.items()}


def _results(out: dict[str, np.ndarray], b: int, start: int, stop: int, stress: bool) -> dict:
    """ASE ``results`` of structure ``b`` (atoms ``start:stop``) of a model output; refuses non-finite values."""
    energy = float(out[K.ENERGY][b])
    forces = out[K.FORCES][start:stop]
    if not (np.isfinite(energy) and np.isfinite(forces).all()):
        raise RuntimeError(
            "the student returned a non-finite energy or forces; please report this with the structure"
        )
    results = {"energy": energy, "free_energy": energy, "energies": out[K.ENERGIES][start:stop], "forces": forces}
    if stress:
        results["stress"] = full_3x3_to_voigt_6_stress(out[K.STRESS][b])
    return results
