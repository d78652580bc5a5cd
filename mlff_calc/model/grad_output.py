"""Forces and stress as derivatives of the one energy.

The model's route (:func:`forces_from_edges`, :func:`strain_derivative_from_edges`): the energy depends
on positions and cell only through the edge vectors ``r_e = x_j - x_i + S @ cell``, so one gradient
``g_e = ∂E/∂r_e`` gives both. Forces: ``F_i = -∂E/∂x_i = Σ_{e: i→·} g_e - Σ_{e: ·→i} g_e``. Strain: a
homogeneous deformation maps every edge vector to ``r_e (1 + ε)``, so ``∂E/∂ε = Σ_e r_e ⊗ g_e``
(symmetrised, since ε is symmetric). This is the virial of the strain route below, written per edge;
it never touches absolute positions, so it is as accurate far from the origin as near it.

The strain route (the reference, :func:`energy_with_derivatives`; Knuth et al., Comput. Phys.
Commun. 190, 33 (2015); nequip ``nn/grad_output.py``): positions and cell are deformed by a
symmetric strain ε = 0,
    x' = x (1 + ε),   cell' = cell (1 + ε)
and then σ = (1/V) ∂E/∂ε, ASE's sign and convention (what ``calculate_numerical_stress`` returns).
Edge vectors are built from the deformed positions and cell, so both derivatives come out of a
single backward pass.
"""

from __future__ import annotations

from typing import Callable

import torch

from .. import _keys as K


def structure_energies(energies: torch.Tensor, graph) -> torch.Tensor:
    """``(B,)`` eV: per-atom energies ``(N,)`` summed per structure."""
    if graph.n_structures == 1:
        return energies.sum().reshape(1)
    return energies.new_zeros(graph.n_structures).index_add(0, graph.batch, energies)


def forces_from_edges(
    edge_grad: torch.Tensor, edge_index: torch.Tensor, reverse: torch.Tensor, n_atoms: int
) -> torch.Tensor:
    """``F (N, 3)`` eV/Å from ``edge_grad (E, 3) = ∂E/∂r_e`` of a full list with reverse edges.

    Atom ``i`` is the receiver of its edges and the sender of their reverse edges, so
    ``F_i = Σ_{e: receiver i} (g_e - g_rev(e))``: one scatter.
    """
    return edge_grad.new_zeros((n_atoms, 3)).index_add(0, edge_index[0], edge_grad - edge_grad[reverse])


def strain_derivative_from_edges(graph, vectors: torch.Tensor, edge_grad: torch.Tensor) -> torch.Tensor:
    """``∂E/∂ε (B, 3, 3)`` eV: ``Σ_e r_e ⊗ g_e`` per structure, symmetrised."""
    outer = vectors[:, :, None] * edge_grad[:, None, :]  # (E, 3, 3)
    if graph.n_structures == 1:
        total = outer.sum(0, keepdim=True)
    else:
        total = outer.new_zeros((graph.n_structures, 3, 3)).index_add(0, graph.batch[graph.edge_index[0]], outer)
    return 0.5 * (total + total.transpose(1, 2))


def stress_from_virial(virial: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor) -> torch.Tensor:
    """``σ = -virial / V (B, 3, 3)`` eV/Å³ (ASE sign); NaN for structures that are not fully periodic."""
    volume = torch.linalg.det(cell).abs()
    periodic = pbc.all(dim=-1)
    safe_volume = torch.where(periodic, volume, torch.ones_like(volume))
    stress = -virial / safe_volume[:, None, None]
    return torch.where(periodic[:, None, None], stress, torch.full_like(stress, float("nan")))


def energy_with_derivatives(
    energy_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    data: dict[str, torch.Tensor],
    compute_forces: bool = True,
    compute_stress: bool = False,
    create_graph: bool = False,
) -> dict[str, torch.Tensor]:
    """Run ``energy_fn(data) -> energies (N,)`` and differentiate by the strain route (the reference
    the model's edge route is tested against).

    Returns ``energy (B,)``, ``energies (N,)`` and, as asked, ``forces (N, 3)`` and
    ``stress``/``virial`` ``(B, 3, 3)`` (stress is NaN for structures that are not fully periodic).
    ``create_graph=True`` keeps the graph so that a loss on forces can be trained.
    """
    data = dict(data)
    positions = data[K.POSITIONS]
    cell = data[K.CELL]
    batch = data[K.BATCH]
    n_structures = cell.shape[0]

    inputs = []
    if compute_forces:
        positions = positions.detach().requires_grad_(True)
        inputs.append(positions)
    if compute_stress:
        strain = torch.zeros((n_structures, 3, 3), dtype=positions.dtype, device=positions.device)
        strain.requires_grad_(True)
        inputs.append(strain)
        symmetric = 0.5 * (strain + strain.transpose(-1, -2))
        data[K.POSITIONS] = positions + torch.einsum("na,nab->nb", positions, symmetric[batch])
        data[K.CELL] = cell + torch.bmm(cell, symmetric)
    else:
        data[K.POSITIONS] = positions

    energies = energy_fn(data)
    energy = torch.zeros(n_structures, dtype=energies.dtype, device=energies.device).index_add(0, batch, energies)
    out = {K.ENERGY: energy, K.ENERGIES: energies}
    if not inputs:
        return out

    grads = torch.autograd.grad(
        [energy.sum()], inputs, create_graph=create_graph, allow_unused=True, materialize_grads=True
    )
    if compute_forces:
        out[K.FORCES] = -grads[0]
    if compute_stress:
        de_dstrain = grads[-1]  # (B, 3, 3)
        volume = torch.linalg.det(cell).abs()
        periodic = data[K.PBC].all(dim=-1)
        safe_volume = torch.where(periodic, volume, torch.ones_like(volume))
        stress = de_dstrain / safe_volume[:, None, None]
        nan = torch.full_like(stress, float("nan"))
        out[K.STRESS] = torch.where(periodic[:, None, None], stress, nan)
        out[K.VIRIAL] = -de_dstrain
    return out
