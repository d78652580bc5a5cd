"""Forces and stress as derivatives of the one energy.

Stress follows the strain route (Knuth et al., Comput. Phys. Commun. 190, 33 (2015); nequip
``nn/grad_output.py``): positions and cell are deformed by a symmetric strain ε = 0,
    x' = x (1 + ε),   cell' = cell (1 + ε)
and then σ = (1/V) ∂E/∂ε, ASE's sign and convention (what ``calculate_numerical_stress`` returns).
Edge vectors are built from the deformed positions and cell, so both derivatives come out of a
single backward pass.
"""

from __future__ import annotations

from typing import Callable

import torch

from .. import _keys as K


def energy_with_derivatives(
    energy_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    data: dict[str, torch.Tensor],
    compute_forces: bool = True,
    compute_stress: bool = False,
    create_graph: bool = False,
) -> dict[str, torch.Tensor]:
    """Run ``energy_fn(data) -> energies (N,)`` and differentiate.

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
