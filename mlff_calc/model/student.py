"""The student: PaiNN features -> atomwise energy, plus per-element references and scale/shift.

Energy is the network's only output; forces and stress are its derivatives (``grad_output``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import _keys as K
from ..neighbors import batch_neighbor_list, csr_rowptr, edge_vectors, reverse_edges
from . import fused
from .grad_output import energy_with_derivatives
from .painn import PaiNN


class StudentForceField(nn.Module):
    """A PaiNN energy model with energy-conserving forces and stress.

    Args:
        hidden_dim: number of scalar and vector features per atom (F).
        num_interactions: message + update blocks.
        num_rbf: Gaussian radial basis functions on [0, cutoff].
        cutoff: Å; contributions vanish smoothly at this distance.
        max_z: largest atomic number the embedding can hold.

    Per-atom energy: ``E_i = scale * readout(s_i) + shift + atom_ref[Z_i]`` (buffers, set by training).
    """

    def __init__(
        self,
        hidden_dim: int = 128,
        num_interactions: int = 3,
        num_rbf: int = 20,
        cutoff: float = 5.0,
        max_z: int = 118,
    ):
        super().__init__()
        if hidden_dim < 1 or num_interactions < 1 or num_rbf < 1:
            raise ValueError("hidden_dim, num_interactions and num_rbf must be positive integers")
        if not cutoff > 0:
            raise ValueError(f"cutoff must be positive, got {cutoff}")
        if not 1 <= max_z <= 118:
            raise ValueError(f"max_z must be in 1..118, got {max_z}")
        self.hidden_dim = int(hidden_dim)
        self.num_interactions = int(num_interactions)
        self.num_rbf = int(num_rbf)
        self.cutoff = float(cutoff)
        self.max_z = int(max_z)

        self.representation = PaiNN(self.hidden_dim, self.num_interactions, self.num_rbf, self.cutoff, self.max_z)
        self.readout = nn.Sequential(
            nn.Linear(self.hidden_dim, self.hidden_dim // 2 or 1),
            nn.SiLU(),
            nn.Linear(self.hidden_dim // 2 or 1, 1),
        )
        self.register_buffer("atom_ref", torch.zeros(self.max_z + 1))  # (max_z+1,) | eV per atom of element Z
        self.register_buffer("scale", torch.ones(()))  # eV
        self.register_buffer("shift", torch.zeros(()))  # eV per atom
        # Free-form information carried in checkpoints (teacher, elements seen in training, metrics ...).
        self.metadata: dict[str, Any] = {}
        # Fused CPU kernels for inference (eval mode, CPU tensors); training always runs eager PyTorch,
        # whose graph can be differentiated twice (forces in the loss).
        self.fused = True

    # ---- configuration -------------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments: ``StudentForceField(**model.config)`` rebuilds the architecture."""
        return {
            "hidden_dim": self.hidden_dim,
            "num_interactions": self.num_interactions,
            "num_rbf": self.num_rbf,
            "cutoff": self.cutoff,
            "max_z": self.max_z,
        }

    @property
    def elements(self) -> list[int] | None:
        """Atomic numbers seen in training, or ``None`` for an untrained model (every 1..max_z allowed)."""
        elements = self.metadata.get("elements")
        return None if elements is None else [int(z) for z in elements]

    @property
    def dtype(self) -> torch.dtype:
        return self.atom_ref.dtype

    @property
    def device(self) -> torch.device:
        return self.atom_ref.device

    # ---- physics -------------------------------------------------------------------------------------
    def atomic_energies(self, data: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-atom energies ``(N,)`` in eV from positions, cell, shifts and edges in ``data``."""
        numbers = data[K.ATOMIC_NUMBERS]
        csr = None
        if self.use_fused_path(data):
            edge_index = data[K.EDGE_INDEX]
            reverse = data.get(K.EDGE_REVERSE)
            if reverse is None:
                reverse = reverse_edges(edge_index, data[K.CELL_SHIFTS], numbers.shape[0])
            csr = (csr_rowptr(edge_index[0], numbers.shape[0]), reverse)
        features = self.representation(numbers, edge_vectors(data), data[K.EDGE_INDEX], csr)
        out = self.readout(features).squeeze(-1)
        return self.scale * out + self.shift + self.atom_ref[numbers]

    def use_fused_path(self, data: dict[str, torch.Tensor]) -> bool:
        """Fused kernels run for CPU inference when they could be built here; eager PyTorch otherwise."""
        return (
            self.fused
            and not self.training
            and self.device.type == "cpu"
            and data[K.EDGE_INDEX].shape[1] > 0
            and fused.available()
        )

    def forward(
        self,
        data: dict[str, torch.Tensor],
        compute_forces: bool = True,
        compute_stress: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Energy, per-atom energies, forces and (optionally) stress of a batch of structures.

        ``data`` holds the inputs of :mod:`mlff_calc._keys`; ``batch``, ``cell`` and ``pbc`` default to a
        single non-periodic structure, and the neighbour list is built here when ``edge_index`` is absent.
        In training mode the graph is kept so that a loss on forces can be back-propagated.
        """
        data = self.prepare(data)
        return energy_with_derivatives(
            self.atomic_energies,
            data,
            compute_forces=compute_forces,
            compute_stress=compute_stress,
            create_graph=self.training,
        )

    def prepare(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Cast inputs to the model's dtype/device, fill defaults and build missing neighbour lists."""
        dtype, device = self.dtype, self.device
        positions = torch.as_tensor(data[K.POSITIONS], dtype=dtype, device=device)
        n_atoms = positions.shape[0]
        out = {
            K.ATOMIC_NUMBERS: torch.as_tensor(data[K.ATOMIC_NUMBERS], dtype=torch.long, device=device),
            K.POSITIONS: positions,
        }
        batch = data.get(K.BATCH)
        if batch is None:
            batch = torch.zeros(n_atoms, dtype=torch.long, device=device)
        out[K.BATCH] = torch.as_tensor(batch, dtype=torch.long, device=device)
        n_structures = int(out[K.BATCH].max()) + 1 if n_atoms else 1
        cell = data.get(K.CELL)
        cell = torch.zeros((n_structures, 3, 3)) if cell is None else torch.as_tensor(cell)
        out[K.CELL] = cell.to(dtype=dtype, device=device).reshape(-1, 3, 3)
        pbc = data.get(K.PBC)
        pbc = torch.zeros((n_structures, 3), dtype=torch.bool) if pbc is None else torch.as_tensor(pbc)
        out[K.PBC] = pbc.to(dtype=torch.bool, device=device).reshape(-1, 3)

        if data.get(K.EDGE_INDEX) is None:
            counts = torch.bincount(out[K.BATCH], minlength=out[K.CELL].shape[0]).cpu().numpy()
            edge_index, shifts = batch_neighbor_list(
                positions.detach().cpu().numpy(),
                out[K.CELL].detach().cpu().numpy(),
                out[K.PBC].cpu().numpy(),
                counts,
                self.cutoff,
            )
        else:
            edge_index, shifts = data[K.EDGE_INDEX], data[K.CELL_SHIFTS]
        out[K.EDGE_INDEX] = torch.as_tensor(edge_index, dtype=torch.long, device=device)
        out[K.CELL_SHIFTS] = torch.as_tensor(shifts, device=device).to(dtype)
        if data.get(K.EDGE_REVERSE) is not None and data.get(K.EDGE_INDEX) is not None:
            out[K.EDGE_REVERSE] = torch.as_tensor(data[K.EDGE_REVERSE], dtype=torch.long, device=device)
        return out

    # ---- persistence ---------------------------------------------------------------------------------
    def save(self, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
        """Write a checkpoint (DESIGN.md format) atomically; ``metadata`` is merged into ``self.metadata``."""
        from ..checkpoint import save_checkpoint

        meta = dict(self.metadata)
        meta.update(metadata or {})
        state = {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}
        save_checkpoint(path, model_config=self.config, state_dict=state, metadata=meta)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "StudentForceField":
        """Rebuild a model from a checkpoint written by :meth:`save` (never executes code from the file)."""
        from ..checkpoint import load_checkpoint

        checkpoint = load_checkpoint(path)
        model = cls(**checkpoint["model_config"])
        try:
            model.load_state_dict(checkpoint["state_dict"])
        except RuntimeError as exc:
            raise ValueError(f"checkpoint {path}: weights do not match its model_config: {exc}") from None
        model.metadata = dict(checkpoint["metadata"])
        return model.to(map_location)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def randomize_parameters(model: nn.Module, std: float = 0.5, seed: int = 0) -> nn.Module:
    """Give every parameter random values (tests: symmetry must hold for any weights, not just at init)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p.shape[-1] if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) * std / np.sqrt(fan_in))
    return model
