"""PaiNN message passing (Schütt, Unke & Gastegger, ICML 2021, arXiv:2102.03150).

Scalar features ``s`` have shape ``(N, F)``, vector features ``v`` have shape ``(N, 3, F)``: the
Cartesian axis sits in the middle so every ``nn.Linear`` acts on the feature axis only, which keeps
vector features equivariant (a linear map over features commutes with a rotation over axes).
"""

from __future__ import annotations

import math

import torch
from torch import nn



class GaussianRBF(nn.Module):
    """``num_rbf`` Gaussians with centres evenly spaced on [0, cutoff] and width equal to the spacing.

    Input ``(E,)`` distances in Å, output ``(E, num_rbf)``.
    """

    def __init__(self, num_rbf: int, cutoff: float):
        super().__init__()
        centers = torch.linspace(0.0, cutoff, num_rbf, dtype=torch.float64)
        width = float(centers[1] - centers[0]) if num_rbf > 1 else cutoff
        self.register_buffer("centers", centers.to(torch.get_default_dtype()))
        self.coeff = -0.5 / width**2

    def forward(self, distances: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.coeff * (distances[:, None] - self.centers) ** 2)


class CosineCutoff(nn.Module):
    """``0.5 (cos(π r / r_c) + 1)`` for r < r_c, else 0.

    Value and first derivative vanish at r_c, so the energy is continuous and the forces go to zero
    continuously as a neighbour leaves the sphere.
    """

    def __init__(self, cutoff: float):
        super().__init__()
        self.cutoff = float(cutoff)

    def forward(self, distances: torch.Tensor) -> torch.Tensor:
        inside = distances < self.cutoff
        value = 0.5 * (torch.cos(distances * (math.pi / self.cutoff)) + 1.0)
        return torch.where(inside, value, torch.zeros_like(value))


class PaiNNMessage(nn.Module):
    """Equivariant message from neighbours ``j`` to centre ``i`` (PaiNN Eq. 7-8)."""

    def __init__(self, hidden_dim: int):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.scalar_mlp = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, 3 * hidden_dim)
        )

    def forward(
        self,
        s: torch.Tensor,  # (N, F)
        v: torch.Tensor,  # (N, 3, F)
        filters: torch.Tensor,  # (E, 3F): radial filter of this block, already times the cutoff
        directions: torch.Tensor,  # (E, 3): unit vectors r_ij / |r_ij|
        edge_index: torch.Tensor,  # (2, E)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        i, j = edge_index[0], edge_index[1]
        x = self.scalar_mlp(s)[j] * filters  # (E, 3F)
        ds, dv_dir, dv_vec = torch.split(x, self.hidden_dim, dim=-1)
        dv = dv_dir[:, None, :] * directions[:, :, None] + dv_vec[:, None, :] * v[j]  # (E, 3, F)
        s = s.index_add(0, i, ds)
        v = v.index_add(0, i, dv)
        return s, v


class PaiNNUpdate(nn.Module):
    """Per-atom mixing of scalar and vector channels (PaiNN Eq. 9-11)."""

    def __init__(self, hidden_dim: int, epsilon: float = 1e-2):
        super().__init__()
        self.hidden_dim = hidden_dim
        # sqrt(|v|² + ε) instead of |v|: finite gradient at v = 0, where every vector feature starts,
        # so forces never become NaN. ε is not tiny on purpose: at a symmetric structure (a perfect
        # lattice) v = 0 exactly, and with ε = 1e-8 the energy would grow like |displacement| (a cusp,
        # curvature 1/√ε = 1e4) instead of quadratically; 1e-2 keeps the surface smooth there.
        self.epsilon = epsilon
        self.vector_mix = nn.Linear(hidden_dim, 2 * hidden_dim, bias=False)
        self.scalar_mlp = nn.Sequential(
            nn.Linear(2 * hidden_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, 3 * hidden_dim)
        )

    def forward(self, s: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v_u, v_v = torch.split(self.vector_mix(v), self.hidden_dim, dim=-1)  # (N, 3, F) each
        v_v_norm = torch.sqrt(torch.sum(v_v**2, dim=1) + self.epsilon)  # (N, F)
        a = self.scalar_mlp(torch.cat([s, v_v_norm], dim=-1))
        a_vv, a_sv, a_ss = torch.split(a, self.hidden_dim, dim=-1)
        s = s + a_ss + a_sv * torch.sum(v_u * v_v, dim=1)
        v = v + a_vv[:, None, :] * v_u
        return s, v


class PaiNN(nn.Module):
    """Embedding + ``num_interactions`` message/update blocks; returns per-atom scalar features ``(N, F)``."""

    def __init__(self, hidden_dim: int, num_interactions: int, num_rbf: int, cutoff: float, max_z: int):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.num_interactions = num_interactions
        self.embedding = nn.Embedding(max_z + 1, hidden_dim)
        self.rbf = GaussianRBF(num_rbf, cutoff)
        self.cutoff_fn = CosineCutoff(cutoff)
        # The radial filters of all blocks come from one matrix product (one pass over the edges).
        self.filter_net = nn.Linear(num_rbf, num_interactions * 3 * hidden_dim)
        self.messages = nn.ModuleList(PaiNNMessage(hidden_dim) for _ in range(num_interactions))
        self.updates = nn.ModuleList(PaiNNUpdate(hidden_dim) for _ in range(num_interactions))

    def radial_filters(self, distances: torch.Tensor) -> list[torch.Tensor]:
        """One ``(len(distances), 3F)`` filter per block: ``(rbf(d) W + b) fc(d)``."""
        # As one matrix product: append fc(d) to the basis and b to the weights, so the filter matrix is
        # written once, not three times. One product per block: each block's filters are then
        # contiguous, and the backward sums small (edges, K+1) gradients instead of concatenating one.
        envelope = self.cutoff_fn(distances)[:, None]
        basis = torch.cat([self.rbf(distances) * envelope, envelope], dim=-1)
        weight = torch.cat([self.filter_net.weight, self.filter_net.bias[:, None]], dim=1)
        return [nn.functional.linear(basis, w) for w in torch.split(weight, 3 * self.hidden_dim, dim=0)]

    def forward(self, atomic_numbers: torch.Tensor, vectors: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """atomic_numbers ``(N,)``, edge vectors ``(E, 3)`` Å, edge_index ``(2, E)`` -> ``(N, F)``.

        Eager PyTorch, twice differentiable (training) and TorchScript-scriptable (export).
        """
        distances = torch.linalg.vector_norm(vectors, dim=-1)  # (E,); > 0, overlapping atoms are refused upstream
        directions = vectors / distances[:, None]
        filters = self.radial_filters(distances)
        s = self.embedding(atomic_numbers)
        v = s.new_zeros((s.shape[0], 3, self.hidden_dim))
        k = 0
        for message, update in zip(self.messages, self.updates):
            s, v = message(s, v, filters[k], directions, edge_index)
            s, v = update(s, v)
            k += 1
        return s
