"""The student in torch-sim: a ``ModelInterface`` that evaluates a whole batch in one call.

    import torch_sim as ts
    from mlff_calc.integrations.torchsim import StudentModel
    model = StudentModel("runs/x/student.pt", device="cuda", dtype="float32")
    state = ts.io.atoms_to_state(list_of_atoms, model.device, model.dtype)
    final = ts.integrate(state, model, integrator=ts.integrators.nvt_langevin, n_steps=1000,
                         temperature=300, timestep=0.0005)          # timestep in ps (torch-sim's metal units)

:func:`mlff_calc.integrations.batched_md.run_batched_md` runs NVT (Langevin, BAOAB) or NVE (velocity
Verlet) for a list of ``ase.Atoms`` as one torch-sim batch: every step evaluates all structures in a
single call of the student.

Conventions: torch-sim stores cells as *columns* (``state.cell``); the student takes ASE's rows
(``state.row_vector_cell``). Units are ASE's (eV, Å, amu, so time in √(amu Å²/eV)): torch-sim's "metal"
units are the same system. torch-sim 0.3 has one ``pbc`` flag per batch, so all structures of a batch are
either fully periodic or not periodic at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch_sim as ts
from ase import Atoms
from ase.data import chemical_symbols
from torch_sim.models.interface import ModelInterface
from torch_sim.state import SimState

from .. import _keys as K
from ..errors import InputError
from ..model.student import StudentForceField
from ..utils import element_list, resolve_device, resolve_dtype


def _student_energy_forces_stress(
    model: StudentForceField,
    positions: torch.Tensor,
    cell: torch.Tensor,
    pbc: torch.Tensor,
    numbers: torch.Tensor,
    system_idx: torch.Tensor,
    compute_stress: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The one place that calls the student: ``(energy (B,), forces (N, 3), stress (B, 3, 3) | None)``.

    ``cell`` has ASE's rows as lattice vectors; ``pbc`` is ``(B, 3)``. Stress is NaN for structures that
    are not fully periodic.
    """
    data = {
        K.POSITIONS: positions,
        K.CELL: cell,
        K.PBC: pbc,
        K.ATOMIC_NUMBERS: numbers,
        K.BATCH: system_idx,
    }
    out = model(data, compute_forces=True, compute_stress=compute_stress)
    return out[K.ENERGY], out[K.FORCES], out.get(K.STRESS)


class StudentModel(ModelInterface):
    """torch-sim ``ModelInterface`` of a :class:`StudentForceField` (or of a ``student.pt`` path).

    ``forward(state)`` returns ``energy`` ``(n_systems,)`` eV, ``forces`` ``(n_atoms, 3)`` eV/Å and, when
    ``compute_stress``, ``stress`` ``(n_systems, 3, 3)`` eV/Å³ (ASE's sign; NaN when not periodic).
    Structures with elements the student never saw in training are refused (:class:`InputError`).
    ``n_calls`` counts forward calls (one per MD step for a whole batch).
    """

    def __init__(
        self,
        model: StudentForceField | str | Path,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "float32",
        compute_stress: bool = False,
        compute_forces: bool = True,
    ):
        super().__init__()
        if not isinstance(model, StudentForceField):
            model = StudentForceField.load(model)
        self._device = resolve_device(device)
        self._dtype = resolve_dtype(dtype)
        self.model = _inference_copy(model, self._device, self._dtype)
        self._compute_stress = bool(compute_stress)
        self._compute_forces = True
        if not compute_forces:
            raise InputError("the student always computes forces (they are the gradient of its energy)")
        self._memory_scales_with = "n_atoms_x_density"  # a radial cutoff: neighbours grow with density
        self._elements = None if model.elements is None else torch.tensor(model.elements, device=self._device)
        self._checked: torch.Tensor | None = None
        self.n_calls = 0

    @ModelInterface.compute_stress.setter
    def compute_stress(self, value: bool) -> None:
        self._compute_stress = bool(value)

    def _check_elements(self, numbers: torch.Tensor) -> None:
        # Once per atomic_numbers tensor (an MD run keeps the same one): no device sync at every step.
        # The reference held in _checked keeps the tensor alive, so identity cannot be confused.
        if self._elements is None or numbers is self._checked:
            return
        unseen = ~torch.isin(numbers.to(self._elements.device), self._elements)
        if bool(unseen.any()):
            idx = int(torch.nonzero(unseen)[0, 0])
            z = int(numbers[idx])
            raise InputError(
                f"atom {idx} is {chemical_symbols[z]} (Z={z}), an element this model never saw in "
                f"training (it knows {element_list(self._elements.tolist())})"
            )
        self._checked = numbers

    def forward(self, state: SimState | dict, **kwargs) -> dict[str, torch.Tensor]:
        if not isinstance(state, SimState):
            state = SimState(**state)
        numbers = state.atomic_numbers.to(device=self._device, dtype=torch.long)
        self._check_elements(state.atomic_numbers)
        n_systems = state.cell.shape[0]
        pbc = torch.as_tensor(state.pbc, dtype=torch.bool, device=self._device)
        pbc = pbc.reshape(-1, 3) if pbc.dim() > 0 and pbc.shape[-1] == 3 else pbc.reshape(-1, 1).expand(-1, 3)
        pbc = pbc.expand(n_systems, 3)
        cell = state.row_vector_cell.to(device=self._device, dtype=self._dtype)
        positions = state.positions.to(device=self._device, dtype=self._dtype)
        energy, forces, stress = _student_energy_forces_stress(
            self.model,
            positions,
            cell,
            pbc,
            numbers,
            state.system_idx.to(self._device),
            self._compute_stress,
        )
        self.n_calls += 1
        out = {"energy": energy.detach(), "forces": forces.detach()}
        if self._compute_stress:
            out["stress"] = stress.detach()
        return out


def _inference_copy(model: StudentForceField, device: torch.device, dtype: torch.dtype) -> StudentForceField:
    import copy

    student = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    for p in student.parameters():
        p.requires_grad_(False)
    return student


def batch_state(structures: Sequence[Atoms], device: torch.device, dtype: torch.dtype) -> SimState:
    """One torch-sim state of all ``structures``; refuses batches that mix periodic and open structures."""
    kinds = {tuple(bool(x) for x in atoms.pbc) for atoms in structures}
    if len(kinds) > 1 or kinds.pop() not in ((True, True, True), (False, False, False)):
        raise InputError(
            "a torch-sim batch needs structures that are all fully periodic or all non-periodic (one pbc "
            f"flag per batch in torch-sim 0.3); got pbc {sorted({tuple(a.pbc.tolist()) for a in structures})}"
        )
    return ts.io.atoms_to_state(list(structures), device, dtype)
