"""Export the student as a metatomic model: one TorchScript file for LAMMPS, i-PI, ASE, torch-sim, ...

The exported module is the student's *energy* only. The engine hands it a full neighbour list at the
model cutoff whose values are the pair vectors ``r_ij = x_j - x_i + S·cell`` (Å), differentiable
with respect to positions and cell; forces and stress come from the engine's own autograd through
those vectors, exactly as :mod:`mlff_calc.model.grad_output` does for the student in Python.

Message passing reaches ``num_interactions`` neighbour shells, so the model's ``interaction_range``
is ``cutoff × num_interactions``: a domain-decomposed engine (LAMMPS) needs ghost atoms that far out.

    from mlff_calc.integrations.metatomic import export_metatomic
    export_metatomic("runs/x/student.pt", "student-mta.pt", dtype="float64")

No import of mlff_calc is needed to load the file (``metatomic.torch.load_atomistic_model``).
This module deliberately has no ``from __future__ import annotations``: metatomic checks the
annotations of ``forward`` as real types.
"""

import copy
import json
from pathlib import Path
from typing import Dict, List, Optional, Union

import torch
from metatensor.torch import Labels, TensorBlock, TensorMap
from metatomic.torch import (
    AtomisticModel,
    ModelCapabilities,
    ModelMetadata,
    ModelOutput,
    NeighborListOptions,
    System,
)

from ..errors import CheckpointError, InputError
from ..model.student import StudentForceField

PAINN_REFERENCE = (
    "K. T. Schütt, O. T. Unke, M. Gastegger, Equivariant message passing for the prediction of tensorial "
    "properties and molecular spectra, ICML 2021, arXiv:2102.03150"
)


class StudentEnergy(torch.nn.Module):
    """metatomic ``ModelInterface`` of a student: the ``energy`` output (per system or per atom), in eV.

    ``E_i = scale * readout(PaiNN(Z, r_ij)_i) + shift + atom_ref[Z_i]``, the same per-atom energy as
    :meth:`StudentForceField.atomic_energies` (its eager path), fed by metatomic's neighbour list.
    With ``selected_atoms`` (domain decomposition), only the selected atoms' energies are returned or
    summed; the others still act as neighbours (ghosts).
    """

    def __init__(self, model: StudentForceField):
        super().__init__()
        self.representation = model.representation
        self.readout = model.readout
        self.register_buffer("atom_ref", model.atom_ref.detach().clone())
        self.register_buffer("scale", model.scale.detach().clone())
        self.register_buffer("shift", model.shift.detach().clone())
        self.cutoff = float(model.cutoff)
        self.neighbors = NeighborListOptions(
            cutoff=self.cutoff, full_list=True, strict=True, requestor="mlff_calc student"
        )

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return [self.neighbors]

    def forward(
        self,
        systems: List[System],
        outputs: Dict[str, ModelOutput],
        selected_atoms: Optional[Labels] = None,
    ) -> Dict[str, TensorMap]:
        results: Dict[str, TensorMap] = {}
        if "energy" not in outputs:
            return results
        device = self.atom_ref.device

        numbers: List[torch.Tensor] = []
        vectors: List[torch.Tensor] = []
        edges: List[torch.Tensor] = []
        system_of_atom: List[torch.Tensor] = []
        atom_in_system: List[torch.Tensor] = []
        offsets: List[int] = []
        offset = 0
        for index, system in enumerate(systems):
            n = len(system)
            neighbors = system.get_neighbor_list(self.neighbors)
            pairs = neighbors.samples.values.to(torch.long)  # (P, 5): first, second, shift a, b, c
            numbers.append(system.types.to(torch.long))
            vectors.append(neighbors.values.reshape(-1, 3))  # r_ij = x[second] - x[first] + S·cell
            edges.append(pairs[:, :2].T + offset)  # [receiver i = first, sender j = second]
            system_of_atom.append(torch.full((n,), index, dtype=torch.long, device=device))
            atom_in_system.append(torch.arange(n, dtype=torch.long, device=device))
            offsets.append(offset)
            offset += n

        z = torch.cat(numbers) if len(numbers) > 0 else torch.zeros(0, dtype=torch.long, device=device)
        if len(vectors) > 0:
            r = torch.cat(vectors)
            edge_index = torch.cat(edges, dim=1)
        else:
            r = torch.zeros((0, 3), dtype=self.atom_ref.dtype, device=device)
            edge_index = torch.zeros((2, 0), dtype=torch.long, device=device)
        features = self.representation(z, r, edge_index)
        energies = self.readout(features).squeeze(-1) * self.scale + self.shift + self.atom_ref[z]  # (N,) eV

        sys_idx = torch.cat(system_of_atom) if len(system_of_atom) > 0 else z
        atom_idx = torch.cat(atom_in_system) if len(atom_in_system) > 0 else z
        if selected_atoms is not None:
            selected = selected_atoms.values.to(torch.long)  # (M, 2): system, atom
            start = torch.tensor(offsets, dtype=torch.long, device=device)
            keep = start[selected[:, 0]] + selected[:, 1]
            energies, sys_idx, atom_idx = energies[keep], sys_idx[keep], atom_idx[keep]

        properties = Labels(["energy"], torch.zeros((1, 1), dtype=torch.int32, device=device))
        if outputs["energy"].sample_kind == "atom":
            samples = Labels(["system", "atom"], torch.stack([sys_idx, atom_idx], dim=1).to(torch.int32))
            values = energies.reshape(-1, 1)
        else:
            totals = torch.zeros(len(systems), dtype=energies.dtype, device=device)
            values = totals.index_add(0, sys_idx, energies).reshape(-1, 1)
            samples = Labels(
                ["system"], torch.arange(len(systems), dtype=torch.int32, device=device).reshape(-1, 1)
            )
        block = TensorBlock(values=values, samples=samples, components=[], properties=properties)
        results["energy"] = TensorMap(
            Labels(["_"], torch.zeros((1, 1), dtype=torch.int32, device=device)), [block]
        )
        return results


def _load_student(model: Union[StudentForceField, str, Path]) -> StudentForceField:
    if isinstance(model, StudentForceField):
        return model
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"student checkpoint not found: {path}")
    try:
        return StudentForceField.load(path)
    except CheckpointError:
        raise
    except (ValueError, TypeError, KeyError) as exc:  # weights that do not fit their config, bad kwargs
        raise CheckpointError(f"checkpoint {path} cannot be exported: {exc}") from None


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def student_metadata(model: StudentForceField, name: str = "") -> ModelMetadata:
    """metatomic metadata: teacher, training-data summary, package version, references."""
    from .. import __version__

    meta = model.metadata
    teacher = meta.get("teacher") or {}
    teacher_name = teacher.get("name", "unknown") if isinstance(teacher, dict) else str(teacher)
    config = model.config
    description = (
        f"PaiNN student distilled with mlff_calc from the teacher '{teacher_name}': hidden_dim "
        f"{config['hidden_dim']}, {config['num_interactions']} interaction blocks, "
        f"cutoff {config['cutoff']} Å. "
        "Energy in eV; forces and stress are its derivatives (conservative)."
    )
    extra = {
        "mlff_calc_version": __version__,
        "checkpoint_package_version": _text(meta.get("package_version", "unknown")),
        "teacher": _text(teacher),
        "elements": _text(model.elements),
        "model_config": _text(config),
    }
    for key in ("data", "test", "validation"):
        if key in meta:
            extra["training_data" if key == "data" else f"metrics_{key}"] = _text(meta[key])
    return ModelMetadata(
        name=name or f"mlff_calc student ({teacher_name})",
        description=description,
        authors=["mlff_calc"],
        references={
            "architecture": [PAINN_REFERENCE],
            "implementation": [f"mlff_calc {__version__}"],
            "model": [f"distilled from {teacher_name}"],
        },
        extra=extra,
    )


def to_atomistic_model(
    model: Union[StudentForceField, str, Path],
    dtype: Union[str, torch.dtype] = "float64",
    devices: Optional[List[str]] = None,
    name: str = "",
) -> AtomisticModel:
    """Wrap a student (or a checkpoint path) as a metatomic ``AtomisticModel`` (not yet scripted).

    ``dtype``: the one precision the exported model runs in (metatomic models declare a single dtype).
    ``devices``: supported devices in order of preference (default ``["cuda", "cpu"]``).
    Raises :class:`~mlff_calc.errors.InputError` for a model without ``metadata["elements"]`` (an untrained
    model: the exported file must declare the atomic types it knows) and
    :class:`~mlff_calc.errors.CheckpointError` for an unreadable checkpoint.
    """
    from ..utils import resolve_dtype

    source = _load_student(model)
    elements = source.elements
    if not elements:
        raise InputError(
            "the model has no metadata['elements'] (an untrained model?): a metatomic export must declare "
            "the atomic types the student was trained on; export a checkpoint written by mlff-calc train"
        )
    torch_dtype = resolve_dtype(dtype)
    student = (
        copy.deepcopy(source).to(device="cpu", dtype=torch_dtype).eval()
    )  # the caller's model is untouched
    energy = StudentEnergy(student).to(torch_dtype).eval()
    capabilities = ModelCapabilities(
        outputs={
            "energy": ModelOutput(
                unit="eV",
                sample_kind="atom",
                explicit_gradients=[],
                description="student energy (per atom on request)",
            )
        },
        atomic_types=sorted(int(z) for z in elements),
        interaction_range=float(student.cutoff * student.num_interactions),
        length_unit="angstrom",
        supported_devices=list(devices or ["cuda", "cpu"]),
        dtype="float64" if torch_dtype == torch.float64 else "float32",
    )
    return AtomisticModel(energy, student_metadata(student, name), capabilities)


def export_metatomic(
    model: Union[StudentForceField, AtomisticModel, str, Path],
    out: Union[str, Path],
    dtype: Union[str, torch.dtype] = "float64",
    devices: Optional[List[str]] = None,
    name: str = "",
) -> Path:
    """Write the student (or an :func:`to_atomistic_model` result) as a scripted metatomic model file
    ``out``, atomically, and return its path."""
    from ..io import atomic_path

    if isinstance(model, AtomisticModel):
        atomistic = model
    else:
        atomistic = to_atomistic_model(model, dtype=dtype, devices=devices, name=name)
    out = Path(out)
    with atomic_path(out) as tmp:
        atomistic.save(str(tmp))
    return out
