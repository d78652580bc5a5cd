"""Neighbour lists from vesin, for molecules, slabs, wires, bulk and cells smaller than the cutoff.

vesin returns integer image shifts ``S``; the edge vectors themselves are computed in torch from
positions, cell and ``S`` (:func:`edge_vectors`) so that autograd sees positions and strain.
Edges are sorted by (receiver, sender, shift): a list built with a skin and then filtered gives the
very same edges in the very same order as a fresh list, so results with and without a skin are
bit-identical.
"""

from __future__ import annotations

import numpy as np
import torch
import vesin

from . import _keys as K
from .errors import InputError


def _vesin_box(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """A box vesin accepts: periodic rows as given, non-periodic rows made safe.

    Along a non-periodic axis no shift is ever applied, so the row only has to keep the box
    invertible: a degenerate (e.g. zero) row is replaced by a long vector orthogonal to the others.
    """
    box = np.array(cell, dtype=np.float64, copy=True)
    if not pbc.any():
        return np.zeros((3, 3))
    if pbc.all():
        return box
    scale = 1.0 + float(np.abs(box).max())
    for axis in np.flatnonzero(~pbc):
        others = [box[a] for a in range(3) if a != axis]
        normal = np.cross(others[0], others[1])
        if np.linalg.norm(normal) < 1e-8:
            # The other two rows do not span a plane either (a wire); pick any orthogonal frame.
            normal = np.zeros(3)
            normal[axis] = 1.0
        box[axis] = normal / np.linalg.norm(normal) * scale * 10.0
    if abs(np.linalg.det(box)) < 1e-8:  # still singular: rebuild non-periodic rows one by one
        for axis in np.flatnonzero(~pbc):
            box[axis] = 0.0
            box[axis, axis] = scale * 10.0
    return box


def check_cell(cell: np.ndarray, pbc: np.ndarray, where: str = "") -> None:
    """Raise :class:`~mlff_calc.errors.InputError` (a ``ValueError``) if the periodic lattice vectors are degenerate or non-finite."""
    cell = np.asarray(cell, dtype=np.float64)
    if not np.all(np.isfinite(cell)):
        raise InputError(f"cell{where} is not finite: {cell.tolist()}")
    periodic = cell[np.asarray(pbc, dtype=bool)]
    if len(periodic) == 0:
        return
    lengths = np.linalg.norm(periodic, axis=1)
    gram = periodic @ periodic.T
    # Volume (area, length) spanned by the periodic vectors, relative to the product of their lengths.
    measure = np.sqrt(max(np.linalg.det(gram), 0.0))
    if lengths.min() < 1e-6 or measure < 1e-6 * np.prod(lengths):
        raise InputError(
            f"pbc{where} is {np.asarray(pbc).tolist()} but the periodic lattice vectors are degenerate "
            f"(lengths {np.round(lengths, 6).tolist()} Å, spanned measure {measure:.3g}): "
            "give a cell with linearly independent vectors along every periodic direction, or set pbc=False there"
        )


def neighbor_list(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray]:
    """Full neighbour list of one structure.

    Args:
        positions: ``(n, 3)`` Å, anywhere in space (atoms outside the cell are fine).
        cell: ``(3, 3)`` Å, rows are lattice vectors.
        pbc: ``(3,)`` bool.
        cutoff: Å.

    Returns:
        ``edge_index (2, E) int64`` as [receiver i, sender j] and ``shifts (E, 3) int64`` such that
        ``r_ij = positions[j] - positions[i] + shifts @ cell``, sorted by (i, j, shift).
    """
    return _sorted(*_vesin_pairs(positions, cell, pbc, cutoff))


def _vesin_pairs(positions, cell, pbc, cutoff) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unsorted ``i, j (E,)`` and ``shifts (E, 3)``, int64."""
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    if len(positions) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros((0, 3), dtype=np.int64)
    calculator = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, shifts = calculator.compute(points=positions, box=_vesin_box(cell, pbc), periodic=pbc, quantities="ijS")
    return i.astype(np.int64), j.astype(np.int64), shifts.astype(np.int64)


def _sorted(i: np.ndarray, j: np.ndarray, shifts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((shifts[:, 2], shifts[:, 1], shifts[:, 0], j, i))
    return np.stack([i[order], j[order]]), shifts[order]


def batch_neighbor_list(
    positions: np.ndarray,
    cells: np.ndarray,
    pbcs: np.ndarray,
    n_atoms: np.ndarray,
    cutoff: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour lists of consecutive structures, with atom indices offset into the batch.

    Shapes: positions ``(N, 3)``, cells ``(B, 3, 3)``, pbcs ``(B, 3)``, n_atoms ``(B,)``. Sorted by
    (i, j, shift) as a whole (one sort), which is each structure's sorted list in turn.
    """
    offsets = np.concatenate([[0], np.cumsum(n_atoms)]).astype(np.int64)
    parts = [_vesin_pairs(positions[offsets[b]:offsets[b + 1]], cells[b], pbcs[b], cutoff) for b in range(len(n_atoms))]
    if not parts:
        return np.zeros((2, 0), dtype=np.int64), np.zeros((0, 3), dtype=np.int64)
    counts = [len(p[0]) for p in parts]
    shift = np.repeat(offsets[:-1], counts)
    return _sorted(
        np.concatenate([p[0] for p in parts]) + shift,
        np.concatenate([p[1] for p in parts]) + shift,
        np.concatenate([p[2] for p in parts]).reshape(-1, 3),
    )


def edge_vectors(data: dict[str, torch.Tensor]) -> torch.Tensor:
    """``r_ij = x_j - x_i + S @ cell`` in torch, differentiable in positions and cell.  Shape ``(E, 3)``."""
    i, j = data[K.EDGE_INDEX]
    pos = data[K.POSITIONS]
    shifts = data[K.CELL_SHIFTS]
    cell = data[K.CELL]
    if cell.shape[0] == 1:  # one structure (MD): no per-edge copy of the cell
        return pos[j] - pos[i] + shifts @ cell[0]
    return pos[j] - pos[i] + torch.einsum("ea,eab->eb", shifts, cell[data[K.BATCH][i]])


def reverse_edges(edge_index, shifts, n_atoms: int):
    """``rev (E,)`` with edge ``rev[e] = (j, i, -S)`` for edge ``e = (i, j, S)`` (numpy or torch in and out).

    Needs a full list sorted by (i, j, S), as :func:`neighbor_list` returns (and keeps after filtering
    by distance, which is symmetric). Each edge becomes one int64 key whose order is the list's order,
    so the reverse edges are found by binary search.
    """
    if isinstance(edge_index, torch.Tensor):
        rev = reverse_edges(edge_index.cpu().numpy(), torch.round(shifts).long().cpu().numpy(), n_atoms)
        return torch.from_numpy(rev).to(edge_index.device)
    edge_index = np.asarray(edge_index, dtype=np.int64)
    s = np.asarray(shifts, dtype=np.int64)
    if edge_index.shape[1] == 0:
        return np.zeros(0, dtype=np.int64)
    m = int(np.abs(s).max())
    width = 2 * m + 1
    if float(n_atoms) ** 2 * width**3 >= 2**62:
        raise ValueError("neighbour list too large to index its reverse edges")
    i, j = edge_index

    def key(a, b, sh):
        k = a * n_atoms + b
        for axis in range(3):
            k = k * width + (sh[:, axis] + m)
        return k

    keys, wanted = key(i, j, s), key(j, i, -s)
    rev = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    if not np.array_equal(keys[rev], wanted):
        raise ValueError("neighbour list is not a sorted full list: some edge has no reverse edge")
    return rev
