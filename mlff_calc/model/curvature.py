"""Hessian-vector products of the student by double differentiation of its one energy.

For a probe ``v (N, 3)`` (per atom; any norm), ``H v = ∂/∂x (∂E/∂x · v) = -∂/∂x (F · v)``. The student's
forces come from ``g_e = ∂E/∂r_e`` with respect to the edge vectors (``grad_output``), so a second
reverse pass of ``s = Σ_i F_i · v_i`` with respect to the same edge vectors gives ``h_e = ∂s/∂r_e``, and
``H v = forces_from_edges(h)`` — the same scatter that turns ``∂E/∂r`` into ``-∂E/∂x`` (``∂s/∂x = -H v``).
Cost: one forward and two reverse passes (about 1.5-2x a forces-only step; see ``benchmarks/RESULTS.md``).
The teacher's side, from forces alone, is :mod:`mlff_calc.teachers.hvp`.
"""

from __future__ import annotations

import torch

from .grad_output import forces_from_edges


def forces_and_hvp(model, graph, probe: torch.Tensor):
    """``(energies (N,), forces (N, 3), edge_grad (E, 3), hvp (N, 3))`` of ``model`` on ``graph``.

    ``probe (N, 3)``: one direction per structure, stacked like the atoms (zeros: no probe there);
    ``hvp`` is in eV/Å² per unit of the probe. Always eager PyTorch (the C++ inference kernel has no
    second derivative); the graph is kept for a loss when ``model.training``.
    """
    probe = probe.to(dtype=graph.vectors.dtype, device=graph.vectors.device)
    with torch.enable_grad():
        vectors = graph.vectors.detach().requires_grad_(True)
        energies = model.atomic_energies(graph, vectors)
        (edge_grad,) = torch.autograd.grad([energies.sum()], [vectors], create_graph=True,
                                           materialize_grads=True)
        forces = forces_from_edges(edge_grad, graph.edge_index, graph.reverse, graph.n_atoms)
        (h,) = torch.autograd.grad([(forces * probe).sum()], [vectors], create_graph=model.training,
                                   materialize_grads=True)
    hvp = forces_from_edges(h, graph.edge_index, graph.reverse, graph.n_atoms)
    if not model.training:
        energies, forces, edge_grad = energies.detach(), forces.detach(), edge_grad.detach()
    return energies, forces, edge_grad, hvp
