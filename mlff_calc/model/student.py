"""The student: PaiNN features -> atomwise energy, plus per-element references and scale/shift.

Energy is the network's only output; forces and stress are its derivatives (``grad_output``).
"""

from __future__ import annotations

import operator
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import _keys as K
from ..graph import Graph, graph_from_tensors
from . import fused
from .grad_output import forces_from_edges, strain_derivative_from_edges, stress_from_virial, structure_energies
from .painn import PaiNN


# model -> (its tensors, their (data_ptr, version) key, the kernel's packed copy): see _packed_weights.
_KERNEL_PACKS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_DATA_PTR, _VERSION = torch.Tensor.data_ptr, operator.attrgetter("_version")


class StudentForceField(nn.Module):
    """A PaiNN energy model with energy-conserving forces and stress.

    Args:
        hidden_dim: number of scalar and vector features per atom (F).
        num_interactions: message + update blocks.
        num_rbf: Gaussian radial basis functions on [0, cutoff].
        cutoff: Å; contributions vanish smoothly at this distance.
        max_z: largest atomic number the embedding can hold.

    Per-atom energy: ``E_i = scale * readout(s_i) + shift + atom_ref[Z_i]`` (buffers, set by training).

    TorchScript: a module holding the student may call ``representation(numbers, vectors, edge_index)``
    and :meth:`energy_head` from a scripted method (model export); the Python-only properties are
    skipped by the compiler.
    """

    __jit_unused_properties__ = ["config", "elements", "dtype", "device"]

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
        # The whole-model CPU kernel for inference (eval mode, CPU tensors); training always runs eager PyTorch,
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
    def energy_head(self, numbers: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Per-atom energies ``(N,)`` eV from PaiNN features ``(N, F)`` (scriptable)."""
        return self.scale * self.readout(features).squeeze(-1) + self.shift + self.atom_ref[numbers]

    def atomic_energies(self, graph: Graph, vectors: torch.Tensor | None = None) -> torch.Tensor:
        """Per-atom energies ``(N,)`` eV of ``graph`` at edge vectors ``vectors (E, 3)`` (default: the graph's),
        by the eager PyTorch path (differentiable)."""
        vectors = graph.vectors if vectors is None else vectors
        return self.energy_head(graph.numbers, self.representation(graph.numbers, vectors, graph.edge_index))

    def use_fused_path(self, graph: Graph) -> bool:
        """The whole-model CPU kernel runs inference when it could be built here; eager PyTorch otherwise
        (training needs a twice-differentiable graph; CUDA has no kernel)."""
        return self.fused and not self.training and self.device.type == "cpu" and fused.available()

    def _packed_weights(self) -> "fused.whole.PackedModel":
        """The kernel's copy of the weights, re-packed whenever a parameter or buffer changed: in place
        (an optimiser step, ``load_state_dict``: the tensor's version counter moves), replaced
        (``load_state_dict(assign=True)``, assigning a new ``Parameter``: a new object and storage) or by
        ``.to()``. The tensors are looked up in their modules on every call (a dict lookup each), so a
        replaced one is never missed.

        Kept outside the module (``_KERNEL_PACKS``), so deepcopy, pickling and DDP never see it."""
        slots, key, packed = _KERNEL_PACKS.get(self, (None, None, None))
        if slots is None:
            owners = [(m._parameters, n) for m in self.modules() for n in m._parameters] + [
                (m._buffers, n) for m in self.modules() for n in m._buffers
            ]
            slots = ([d for d, _ in owners], [n for _, n in owners])
        tensors = [t for t in map(dict.__getitem__, *slots) if t is not None]
        now = (tuple(map(_DATA_PTR, tensors)), tuple(map(_VERSION, tensors)))  # (maps: 3x faster than a loop)
        if now != key:
            packed = fused.whole.pack(self)
        _KERNEL_PACKS[self] = (slots, now, packed)
        return packed

    def _apply(self, fn, *args, **kwargs):  # .to(), .double(), .cpu(): new tensors, a new pack
        _KERNEL_PACKS.pop(self, None)
        return super()._apply(fn, *args, **kwargs)

    def inference(
        self, graph: Graph, want_stress: bool = False, features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``energies (N,)`` eV, ``forces (N, 3)`` eV/Å and ``virial (B, 3, 3)`` eV (``-∂E/∂ε``, or None).

        The derivatives come from one gradient, ``g_e = ∂E/∂r_e`` with respect to the edge vectors:
        forces are its scatter onto the atoms and the virial is ``-Σ_e r_e ⊗ g_e`` per structure
        (``grad_output``). In training mode the graph of that gradient is kept (forces in the loss).
        ``features``: see :meth:`energies_and_gradients`.
        """
        self._check_graph(graph)
        energies, forces, edge_grad = self.energies_and_gradients(graph, features)
        virial = -strain_derivative_from_edges(graph, graph.vectors, edge_grad) if want_stress else None
        return energies, forces, virial

    def energies_and_gradients(
        self, graph: Graph, features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``energies (N,)``, ``forces (N, 3)`` and ``edge_grad (E, 3) = ∂E/∂r_e``: the one place that runs
        the network — the whole-model C++ kernel for CPU inference (forward and analytic gradient in one
        call, :mod:`.fused.whole`), else eager PyTorch with autograd (training, CUDA, no compiler).

        ``features``: optional ``(N, readout hidden)`` tensor (model dtype and device, contiguous) filled with
        the readout's last hidden features ``silu(readout[0](s))`` (:mod:`mlff_calc.uncertainty`); both
        paths write the same numbers."""
        if self.use_fused_path(graph):
            return fused.whole.evaluate(
                self._packed_weights(), graph.numbers, graph.vectors, graph.rowptr, graph.edge_index[1],
                graph.reverse, graph.half, graph.n_pairs, features=features,
            )
        with torch.enable_grad():
            vectors = graph.vectors.detach().requires_grad_(True)
            if features is None:
                energies = self.atomic_energies(graph, vectors)
            else:  # the readout split in two (the same operations as energy_head), keeping its hidden features
                phi = self.readout[1](self.readout[0](self.representation(graph.numbers, vectors, graph.edge_index)))
                features.copy_(phi.detach())
                energies = self.scale * self.readout[2](phi).squeeze(-1) + self.shift + self.atom_ref[graph.numbers]
            (edge_grad,) = torch.autograd.grad(
                [energies.sum()], [vectors], create_graph=self.training, materialize_grads=True
            )
        if not self.training:
            energies = energies.detach()
        return energies, forces_from_edges(edge_grad, graph.edge_index, graph.reverse, graph.n_atoms), edge_grad

    @torch.jit.unused  # takes a Python object; export scripts representation + energy_head instead
    def forward(
        self,
        graph: Graph | dict,
        compute_forces: bool = True,
        compute_stress: bool = False,
        probe: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Energy ``(B,)``, per-atom energies ``(N,)``, forces ``(N, 3)`` and (optionally) stress and
        virial ``(B, 3, 3)`` of the structures in ``graph`` (see :class:`~mlff_calc.graph.Graph`).
        With ``probe (N, 3)`` also ``hvp (N, 3)`` eV/Å², the Hessian times the probe (:mod:`.curvature`).

        Convenience: a dict of raw inputs (keys of :mod:`mlff_calc._keys`) goes through :meth:`prepare`,
        the same builder as everywhere else; a dict with a ``graph`` entry (training batches) uses it.
        """
        if not isinstance(graph, Graph):
            graph = graph[K.GRAPH] if K.GRAPH in graph else self.prepare(graph)
        hvp = None
        if probe is not None:
            from .curvature import forces_and_hvp

            self._check_graph(graph)
            energies, forces, edge_grad, hvp = forces_and_hvp(self, graph, probe)
            virial = None
            if compute_stress:
                virial = -strain_derivative_from_edges(graph, graph.vectors, edge_grad)
        elif compute_forces or compute_stress:
            energies, forces, virial = self.inference(graph, want_stress=compute_stress)
        else:
            self._check_graph(graph)
            energies, forces, virial = self.atomic_energies(graph), None, None
        out = {K.ENERGY: structure_energies(energies, graph), K.ENERGIES: energies}
        if compute_forces:
            out[K.FORCES] = forces
        if hvp is not None:
            out[K.HVP] = hvp
        if virial is not None:
            out[K.STRESS] = stress_from_virial(virial, graph.cell, graph.pbc)
            out[K.VIRIAL] = virial
        return out

    def prepare(self, data: dict) -> Graph:
        """The :class:`Graph` of raw inputs (numpy or torch; ``batch``, ``cell`` and ``pbc`` default to one
        open structure) in this model's dtype and device: :func:`mlff_calc.graph.graph_from_tensors`."""
        return graph_from_tensors(data, self.cutoff, self.dtype, self.device)

    def _check_graph(self, graph: Graph) -> None:
        if graph.vectors.dtype != self.atom_ref.dtype or graph.numbers.device != self.atom_ref.device:
            raise ValueError(
                f"the graph is {graph.vectors.dtype} on {graph.numbers.device} but the model is "
                f"{self.atom_ref.dtype} on {self.atom_ref.device}: build the graph for the model "
                "(mlff_calc.graph.build_graph(..., dtype=model.dtype, device=model.device))"
            )

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
