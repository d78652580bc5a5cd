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

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        want_stress = "stress" in properties
        if want_stress and not atoms.pbc.all():
            raise PropertyNotImplementedError(
                f"stress needs a fully periodic cell; this structure has pbc={atoms.pbc.tolist()}"
            )
        data = self.converter(atoms)
        out = self.model(data, compute_forces=True, compute_stress=want_stress)

        energy = float(out[K.ENERGY][0].detach())
        forces = out[K.FORCES].detach().cpu().to(torch.float64).numpy()
        if not (np.isfinite(energy) and np.isfinite(forces).all()):
            raise RuntimeError(
                "the student returned a non-finite energy or forces; please report this with the structure"
            )
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": out[K.ENERGIES].detach().cpu().to(torch.float64).numpy(),
            "forces": forces,
        }
        if want_stress:
            stress = out[K.STRESS][0].detach().cpu().to(torch.float64).numpy()
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress)
