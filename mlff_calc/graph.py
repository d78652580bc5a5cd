"""The graph: everything the model needs for one structure or a batch, built by one code path.

Three callers build it and nothing else does: the calculator (one structure, with the Verlet-skin cache
of :class:`~mlff_calc.converter.AtomsConverter`), ``StudentCalculator.batch_calculate`` (many structures)
and training ``collate``. The model takes a :class:`Graph` and never builds neighbour lists or casts.

Float32 far from the origin: positions enter the graph relative to a reference before any cast
(:func:`reference_frame`): wrapped into the cell along periodic directions (integer wrap ``n_i =
floor(frac_i)``, shifts ``S' = S + n_j - n_i``), and relative to the centroid along open ones. Edge
vectors are float64 differences cast afterwards. Both are functions of the current positions only, so
a filtered skin list and a fresh list give bit-identical graphs.

Shapes (``B`` structures, ``N`` atoms, ``E`` directed edges, ``P = E / 2`` pairs) and units are those of
:mod:`mlff_calc._keys`; edges are sorted by (receiver, sender, shift).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from ase.data import chemical_symbols

from .errors import InputError
from .neighbors import _vesin_box, batch_neighbor_list, neighbor_list, reverse_edges

MIN_DISTANCE = 0.1  # Å; closer atoms are refused as overlapping


@dataclass(eq=False)
class Graph:
    """Model input for ``B`` structures (see the module docstring for the conventions)."""

    numbers: torch.Tensor  # (N,)       int64
    positions: torch.Tensor  # (N, 3)     float | Å, relative to the reference (wrapped into the cell)
    vectors: torch.Tensor  # (E, 3)     float | Å, r_e = x_j - x_i + S' @ cell, differences taken in float64
    cell: torch.Tensor  # (B, 3, 3)  float | Å, rows are lattice vectors
    pbc: torch.Tensor  # (B, 3)     bool
    batch: torch.Tensor  # (N,)       int64 | structure of each atom
    edge_index: torch.Tensor  # (2, E)     int64 | [receiver i, sender j], sorted by receiver
    cell_shifts: torch.Tensor  # (E, 3)     float | integer shifts S' that go with ``positions``
    reverse: torch.Tensor  # (E,)       int64 | index of edge (j, i, -S') for edge (i, j, S')
    rowptr: torch.Tensor  # (N + 1,)   int64 | edges of receiver i are rowptr[i]:rowptr[i+1]
    half: torch.Tensor  # (E,)       int64 | pair of each edge (both directions share one), in 0..P-1
    pairs: torch.Tensor  # (P,)       int64 | first edge (e < reverse[e]) of each pair
    n_pairs: int  # P
    n_structures: int  # B

    @property
    def n_atoms(self) -> int:
        return self.numbers.shape[0]

    @property
    def n_edges(self) -> int:
        return self.edge_index.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.vectors.dtype

    @property
    def device(self) -> torch.device:
        return self.numbers.device

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "Graph":
        """A copy on ``device`` with float tensors in ``dtype`` (self when nothing changes)."""
        changes = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                moved = value.to(device=device, dtype=dtype if value.is_floating_point() and dtype else None)
                if moved is not value:
                    changes[f.name] = moved
        return dataclasses.replace(self, **changes) if changes else self


# ---- numpy level: one structure's neighbour list and what is derived from it ---------------------------
@dataclass(eq=False)
class EdgeList:
    """A sorted full neighbour list of one structure with its derived indices (numpy, int64)."""

    edge_index: np.ndarray  # (2, E)
    shifts: np.ndarray  # (E, 3) integer shifts S relative to the positions it was built from
    reverse: np.ndarray  # (E,)
    rowptr: np.ndarray  # (n + 1,)
    half: np.ndarray  # (E,)
    pairs: np.ndarray  # (P,)

    @classmethod
    def build(cls, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, radius: float) -> "EdgeList":
        """vesin list within ``radius`` Å, plus reverse edges, CSR row pointers and pair indices."""
        edge_index, shifts = neighbor_list(positions, cell, pbc, radius)
        return cls.from_sorted(edge_index, shifts, len(positions))

    @classmethod
    def from_sorted(cls, edge_index: np.ndarray, shifts: np.ndarray, n: int) -> "EdgeList":
        """Derived indices of a full list sorted by (i, j, S) over ``n`` atoms (one structure or a batch)."""
        reverse = reverse_edges(edge_index, shifts, n)
        rowptr = np.searchsorted(edge_index[0], np.arange(n + 1)).astype(np.int64)
        order = np.arange(len(reverse))
        canonical = order < reverse
        pair_of = np.cumsum(canonical) - 1
        return cls(edge_index, shifts, reverse, rowptr, pair_of[np.minimum(order, reverse)], np.flatnonzero(canonical))

    def select(self, keep: np.ndarray) -> "EdgeList":
        """The edges where ``keep`` (symmetric: an edge and its reverse together), renumbered."""
        new = np.cumsum(keep) - 1
        counts = np.concatenate([[0], np.cumsum(keep)])
        pair_keep = keep[self.pairs]
        new_pair = np.cumsum(pair_keep) - 1
        return EdgeList(
            self.edge_index[:, keep], self.shifts[keep], new[self.reverse[keep]], counts[self.rowptr],
            new_pair[self.half[keep]], new[self.pairs[pair_keep]],
        )


class Frame:
    """Reference frame of one structure's cell: positions relative to it are small wherever the
    structure sits (see :func:`reference_frame`). Depends on the cell and pbc only (cached per build)."""

    def __init__(self, cell: np.ndarray, pbc: np.ndarray):
        self.cell = np.asarray(cell, dtype=np.float64)
        self.pbc = np.asarray(pbc, dtype=bool)
        self.periodic = bool(self.pbc.any())
        if self.periodic:
            self.box = _vesin_box(self.cell, self.pbc)  # periodic rows as given, open rows made invertible
            self.inverse = np.linalg.inv(self.box)
            self.open = ~self.pbc

    def relative(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(positions - reference (N, 3) float64, integer wrap n (N, 3) int64 or None)``.

        Periodic directions: each atom wrapped into the cell, ``n_i = floor(frac_i)``. Open directions:
        relative to the centroid. Edge shifts that go with the result are ``S + n_j - n_i``.
        """
        if not self.periodic:
            return positions - _centroids(positions, _ZERO), None
        frac = positions @ self.inverse
        wrap = np.floor(frac)
        wrap[:, self.open] = 0.0
        offset = wrap
        if self.open.any():
            offset = wrap.copy()
            offset[:, self.open] = frac[:, self.open].mean(axis=0)
        return positions - offset @ self.box, wrap.astype(np.int64)


_ZERO = np.zeros(1, dtype=np.int64)


def _squared_norms(vectors: np.ndarray) -> np.ndarray:
    """``|r_e|² (E,)`` by elementwise ufuncs: the same rounding for an edge wherever it sits in the list
    (and for its reverse), so a skin list and a fresh list keep the same edges."""
    x, y, z = vectors[:, 0], vectors[:, 1], vectors[:, 2]
    return x * x + y * y + z * z


def _centroids(positions: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """``(B, 3)`` centroids of consecutive structures starting at ``starts`` (the same rounding for one
    structure alone and inside a batch)."""
    sums = np.add.reduceat(positions, starts, axis=0)
    if len(starts) == 1:  # one structure (the calculator's every call): np.diff costs 4x the sum
        return sums / len(positions)
    counts = np.diff(np.append(starts, len(positions)))
    return sums / counts[:, None]


def reference_frame(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray):
    """Positions relative to the reference of their own cell (see :class:`Frame`)."""
    return Frame(cell, pbc).relative(np.asarray(positions, dtype=np.float64))


@dataclass(eq=False)
class StructureEdges:
    """One structure's edges inside the cutoff for the current positions (numpy, float64)."""

    relative: np.ndarray  # (n, 3) Å, positions relative to the reference
    vectors: np.ndarray  # (E, 3) Å, float64
    shifts: np.ndarray  # (E, 3) int64, S' that goes with ``relative``
    edges: EdgeList  # the kept edges, renumbered
    keep: np.ndarray | None  # (E_list,) bool mask into the list, None when every edge was kept


def structure_edges(
    edges: EdgeList, frame: Frame, positions: np.ndarray, cutoff: float, numbers: np.ndarray | None = None
) -> StructureEdges:
    """Filter ``edges`` (a list built with radius >= ``cutoff`` at nearby positions) to the cutoff.

    Raises :class:`InputError` for overlapping atoms when ``numbers`` is given (for the message).
    """
    relative, wrap = frame.relative(positions)
    i, j = edges.edge_index
    shifts = edges.shifts if wrap is None else edges.shifts + wrap[j] - wrap[i]
    vectors = relative.take(j, axis=0) - relative.take(i, axis=0)  # = relative[j] - relative[i], 2x faster
    if frame.periodic:
        # Elementwise, not a matrix product: r_ji == -r_ij bit for bit, whatever the list's length.
        cell = frame.cell
        vectors += shifts[:, 0, None] * cell[0] + shifts[:, 1, None] * cell[1] + shifts[:, 2, None] * cell[2]
    d2 = _squared_norms(vectors)
    keep = d2 < cutoff * cutoff
    if keep.all():
        mask, kept = None, edges
    else:
        mask, kept = keep, edges.select(keep)
        vectors, shifts, d2 = vectors[keep], shifts[keep], d2[keep]
    if numbers is not None and len(d2) and d2.min() < MIN_DISTANCE**2:
        closest = int(np.argmin(d2))
        # The shift as the user sees it: relative to the positions as given, not the wrapped ones.
        raise InputError(_overlap_message(numbers, kept.edge_index[:, closest], kept.shifts[closest],
                                          float(np.sqrt(d2[closest]))))
    return StructureEdges(relative, vectors, shifts, kept, mask)


def _overlap_message(numbers: np.ndarray, pair: np.ndarray, shift: np.ndarray, distance: float) -> str:
    i, j = (int(x) for x in pair)
    si, sj = chemical_symbols[int(numbers[i])], chemical_symbols[int(numbers[j])]
    shift = [int(x) for x in shift]
    image = "" if shift == [0, 0, 0] else f" (periodic image shifted by {shift})"
    what = f"atom {i} ({si}) and its own periodic image{image}" if i == j else f"atoms {i} ({si}) and {j} ({sj}){image}"
    return f"{what} are {distance:.4f} Å apart, closer than {MIN_DISTANCE} Å: overlapping atoms"


# ---- torch level ------------------------------------------------------------------------------------
def _tensor(array: np.ndarray, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(array))
    return t.to(device=device, dtype=dtype) if (dtype is not None or device.type != "cpu") else t


def _float(array: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """float64 numpy -> tensor in ``dtype`` on ``device`` (the one place a float array is cast)."""
    native = dtype in (torch.float32, torch.float64)
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    return _tensor(np.asarray(array, dtype=np_dtype), device, None if native else dtype)


def build_graph(
    numbers: np.ndarray,
    positions: np.ndarray,
    cells: np.ndarray,
    pbcs: np.ndarray,
    n_atoms: Sequence[int],
    cutoff: float,
    dtype: torch.dtype,
    device: str | torch.device = "cpu",
    check_overlap: bool = False,
    raw_shifts: list | None = None,
) -> Graph:
    """The graph of ``B`` consecutive structures, each with a fresh neighbour list at ``cutoff`` Å.

    Shapes: numbers ``(N,)``, positions ``(N, 3)`` Å (float64 differences are taken before any cast),
    cells ``(B, 3, 3)``, pbcs ``(B, 3)``, n_atoms ``(B,)``. ``check_overlap`` refuses overlapping atoms
    with an :class:`InputError` naming the structure. ``raw_shifts``, when a list, receives each
    structure's neighbour-list shifts relative to the positions as given.
    """
    numbers = np.asarray(numbers, dtype=np.int64)
    positions = np.asarray(positions, dtype=np.float64)
    cells = np.asarray(cells, dtype=np.float64).reshape(-1, 3, 3)
    pbcs = np.asarray(pbcs, dtype=bool).reshape(-1, 3)
    n_atoms = np.asarray(n_atoms, dtype=np.int64).reshape(-1)
    offsets = np.concatenate([[0], np.cumsum(n_atoms)]).astype(np.int64)
    device = torch.device(device)
    if (n_atoms == 0).any():
        raise InputError(f"structure {int(np.flatnonzero(n_atoms == 0)[0])}: the structure has no atoms")
    if len(cells) == 1:  # the calculator's path (without its cache)
        edges = EdgeList.build(positions, cells[0], pbcs[0], cutoff)
        try:
            part = structure_edges(edges, Frame(cells[0], pbcs[0]), positions, cutoff,
                                   numbers if check_overlap else None)
        except InputError as exc:
            raise InputError(f"structure 0: {exc}") from None
        if raw_shifts is not None:
            raw_shifts.append(part.edges.shifts)
        return assemble(numbers, part, cells[0], pbcs[0], dtype, device)

    # Many structures: one sorted list over the batch, every step vectorised over it; the arithmetic
    # per edge is that of structure_edges, so each structure's part equals its graph alone.
    edge_index, shifts = batch_neighbor_list(positions, cells, pbcs, n_atoms, cutoff)
    edges = EdgeList.from_sorted(edge_index, shifts, len(positions))
    batch = np.repeat(np.arange(len(cells)), n_atoms)
    relative = np.empty_like(positions)
    wrap = np.zeros(positions.shape, dtype=np.int64)
    periodic = pbcs.any(axis=1)
    open_atoms = ~periodic[batch]
    if open_atoms.any():
        idx = np.flatnonzero(open_atoms)
        centroids = _centroids(positions[idx], _open_starts(n_atoms, periodic))
        relative[idx] = positions[idx] - np.repeat(centroids, n_atoms[~periodic], axis=0)
    for b in np.flatnonzero(periodic):
        atoms = slice(offsets[b], offsets[b + 1])
        relative[atoms], wrap[atoms] = Frame(cells[b], pbcs[b]).relative(positions[atoms])
    i, j = edges.edge_index
    edge_batch = batch[i]
    shifts = edges.shifts + wrap[j] - wrap[i]
    vectors = relative[j] - relative[i]
    periodic_edges = np.flatnonzero(periodic[edge_batch])
    if len(periodic_edges):
        s, c = shifts[periodic_edges], cells[edge_batch[periodic_edges]]
        vectors[periodic_edges] += s[:, 0, None] * c[:, 0] + s[:, 1, None] * c[:, 1] + s[:, 2, None] * c[:, 2]
    d2 = _squared_norms(vectors)
    keep = d2 < cutoff * cutoff
    if not keep.all():
        edges = edges.select(keep)
        vectors, shifts, d2, edge_batch = vectors[keep], shifts[keep], d2[keep], edge_batch[keep]
    if check_overlap and len(d2) and d2.min() < MIN_DISTANCE**2:
        closest = int(np.argmin(d2))
        b = int(edge_batch[closest])
        local = edges.edge_index[:, closest] - offsets[b]
        raise InputError(f"structure {b}: " + _overlap_message(
            numbers[offsets[b]:offsets[b + 1]], local, edges.shifts[closest], float(np.sqrt(d2[closest]))))
    if raw_shifts is not None:
        raw_shifts.append(edges.shifts)
    return Graph(
        numbers=_tensor(numbers, device), positions=_float(relative, dtype, device),
        vectors=_float(vectors, dtype, device), cell=_float(cells, dtype, device), pbc=_tensor(pbcs, device),
        batch=_tensor(batch, device), edge_index=_tensor(edges.edge_index, device),
        cell_shifts=_float(shifts, dtype, device), reverse=_tensor(edges.reverse, device),
        rowptr=_tensor(edges.rowptr, device), half=_tensor(edges.half, device), pairs=_tensor(edges.pairs, device),
        n_pairs=len(edges.pairs), n_structures=len(cells),
    )


def _open_starts(n_atoms: np.ndarray, periodic: np.ndarray) -> np.ndarray:
    """Start of each open structure within the array of the open structures' atoms only."""
    sizes = n_atoms[~periodic]
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)


def assemble(
    numbers: np.ndarray, part: StructureEdges, cell: np.ndarray, pbc: np.ndarray, dtype: torch.dtype,
    device: torch.device,
) -> Graph:
    """The :class:`Graph` of one structure from its edges (no cache; the converter keeps its own)."""
    e = part.edges
    return Graph(
        numbers=_tensor(numbers, device), positions=_float(part.relative, dtype, device),
        vectors=_float(part.vectors, dtype, device), cell=_float(cell.reshape(1, 3, 3), dtype, device),
        pbc=_tensor(pbc.reshape(1, 3), device), batch=torch.zeros(len(numbers), dtype=torch.long, device=device),
        edge_index=_tensor(e.edge_index, device), cell_shifts=_float(part.shifts, dtype, device),
        reverse=_tensor(e.reverse, device), rowptr=_tensor(e.rowptr, device), half=_tensor(e.half, device),
        pairs=_tensor(e.pairs, device), n_pairs=len(e.pairs), n_structures=1,
    )


def graph_from_tensors(data: dict, cutoff: float, dtype: torch.dtype, device: torch.device) -> Graph:
    """Convenience for callers holding raw inputs (keys of :mod:`mlff_calc._keys`; ``batch``, ``cell`` and
    ``pbc`` default to one open structure): the same builder as everywhere else."""
    from . import _keys as K

    def array(value, np_dtype):
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        return np.asarray(value, dtype=np_dtype)

    numbers = array(data[K.ATOMIC_NUMBERS], np.int64).reshape(-1)
    positions = array(data[K.POSITIONS], np.float64).reshape(-1, 3)
    batch = data.get(K.BATCH)
    batch = np.zeros(len(numbers), dtype=np.int64) if batch is None else array(batch, np.int64)
    if len(batch) and np.any(np.diff(batch) < 0):
        raise InputError("batch must be sorted: the atoms of each structure must be consecutive")
    n_structures = int(batch.max()) + 1 if len(batch) else 1
    cell = data.get(K.CELL)
    cell = np.zeros((n_structures, 3, 3)) if cell is None else array(cell, np.float64).reshape(-1, 3, 3)
    pbc = data.get(K.PBC)
    pbc = np.zeros((n_structures, 3), dtype=bool) if pbc is None else array(pbc, bool).reshape(-1, 3)
    n_atoms = np.bincount(batch, minlength=len(cell))
    return build_graph(numbers, positions, cell, pbc, n_atoms, cutoff, dtype, device)
