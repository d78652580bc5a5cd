"""Atoms -> :class:`~mlff_calc.graph.Graph`: validation of the input and a Verlet-skin neighbour list.

The list is built with radius ``cutoff + skin`` and rebuilt only when an atom moved more than
``skin / 2`` since the last build (two atoms approaching each other then closed the gap by at most
``skin``, so no pair inside the cutoff can be missing), or when the cell, pbc or atoms changed. A build
also derives everything else the model needs from the list (reverse edges, CSR row pointers, pair
indices) and caches it as tensors. Every call filters the cached list down to pairs inside the cutoff
and renumbers those indices; since the list is sorted and filtering keeps the order, the graph is
exactly that of a fresh list, and so are the results. The filtered indices are cached too: while no pair
crosses the cutoff a call makes only the positions and edge vectors anew.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from ase import Atoms
from ase.data import chemical_symbols

from .errors import InputError
from .graph import MIN_DISTANCE, EdgeList, Frame, Graph, StructureEdges, _float, _tensor, structure_edges
from .neighbors import check_cell
from .utils import bitwise_equal, element_list

__all__ = ["AtomsConverter", "MIN_DISTANCE"]


class _Build:
    """What one neighbour-list build caches: the structure it was built for, the list, the tensors."""

    def __init__(self, atoms: Atoms, edges: EdgeList, device: torch.device, dtype: torch.dtype):
        self.numbers = atoms.numbers.copy()
        self.cell = atoms.cell.array.copy()
        self.pbc = atoms.pbc.copy()
        self.positions = atoms.positions.copy()
        self.edges = edges
        self.frame = Frame(self.cell, self.pbc)
        self.numbers_t = _tensor(self.numbers.astype(np.int64), device)
        self.cell_t = _float(self.cell.reshape(1, 3, 3), dtype, device)
        self.pbc_t = _tensor(self.pbc.reshape(1, 3), device)
        self.batch_t = torch.zeros(len(self.numbers), dtype=torch.long, device=device)
        self.keep: np.ndarray | None = None  # filter of the last call (None: every edge)
        self.indices: dict[str, torch.Tensor] | None = None  # its index tensors
        self.shifts: tuple[np.ndarray, torch.Tensor] | None = None  # last S' and its tensor


class AtomsConverter:
    """Validate an ``ase.Atoms`` and turn it into the :class:`Graph` the model takes."""

    def __init__(
        self,
        cutoff: float,
        skin: float,
        dtype: torch.dtype,
        device: torch.device,
        max_z: int = 118,
        elements: list[int] | None = None,
    ):
        if not skin >= 0:
            raise InputError(f"skin must be >= 0 Å, got {skin}")
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.dtype = dtype
        self.device = torch.device(device)
        self.max_z = int(max_z)
        self.elements = None if elements is None else sorted(int(z) for z in elements)
        self._allowed = None if elements is None else np.zeros(self.max_z + 1, dtype=bool)
        if self._allowed is not None:
            self._allowed[[z for z in self.elements if 0 <= z <= self.max_z]] = True
        # Squared displacement since the last build beyond which the list is rebuilt: (skin / 2)², so at
        # zero skin any move rebuilds.
        self._rebuild_beyond = 0.25 * self.skin * self.skin
        self.n_builds = 0  # number of neighbour-list builds (for tests and diagnostics)
        self._cache: _Build | None = None

    # ---- validation ----------------------------------------------------------------------------------
    def validate(self, atoms: Atoms, where: str = "") -> None:
        """Raise :class:`InputError` naming what is wrong and where (the atom index, the element, the axis).

        ``where`` prefixes the message (e.g. ``"structure 17: "``).
        """
        try:
            self._validate(atoms)
        except InputError as exc:
            if not where:
                raise
            raise InputError(f"{where}{exc}") from None

    def _validate(self, atoms: Atoms) -> None:
        if len(atoms) == 0:
            raise InputError("the structure has no atoms")
        positions = atoms.positions
        if not np.isfinite(positions).all():
            bad = ~np.isfinite(positions).all(axis=1)
            idx = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"positions are not finite for {int(bad.sum())} atom(s); first is atom {idx} "
                f"({_symbol(atoms.numbers[idx])}) at {positions[idx].tolist()}"
            )
        numbers = atoms.numbers
        out_of_range = (numbers < 1) | (numbers > self.max_z)
        if out_of_range.any():
            idx = int(np.flatnonzero(out_of_range)[0])
            raise InputError(
                f"atom {idx} has atomic number {int(numbers[idx])}, outside the range 1..{self.max_z} "
                "this model supports"
            )
        if self._allowed is not None:
            unseen = ~self._allowed[numbers]
            if unseen.any():
                idx = int(np.flatnonzero(unseen)[0])
                z = int(numbers[idx])
                raise InputError(
                    f"atom {idx} is {chemical_symbols[z]} (Z={z}), an element this model never saw in "
                    f"training (it knows {element_list(self.elements)}); its predictions there would be "
                    "meaningless"
                )
        check_cell(atoms.cell.array, atoms.pbc)

    # ---- the graph -----------------------------------------------------------------------------------
    def __call__(self, atoms: Atoms) -> Graph:
        """The graph of one structure, edges inside the cutoff only (see the module docstring)."""
        arrays = atoms.arrays
        positions, numbers = arrays["positions"], arrays["numbers"]
        c = self._cache
        if c is None or not (
            bitwise_equal(numbers, c.numbers) and bitwise_equal(atoms.cell.array, c.cell) and bitwise_equal(atoms.pbc, c.pbc)
        ):
            self._validate(atoms)
            c = self._build(atoms)
        else:  # numbers, cell and pbc as at the last build: only the positions to check
            d = positions - c.positions
            largest = float((d * d).sum(axis=1).max())
            # NaN or inf positions fail this test too (validation then names the atom).
            if not largest <= self._rebuild_beyond:
                if not math.isfinite(largest):
                    self._validate(atoms)
                c = self._build(atoms)
        part = structure_edges(c.edges, c.frame, positions, self.cutoff, numbers)
        return self._graph(c, part)

    def _build(self, atoms: Atoms) -> _Build:
        edges = EdgeList.build(atoms.positions, atoms.cell.array, atoms.pbc, self.cutoff + self.skin)
        self._cache = _Build(atoms, edges, self.device, self.dtype)
        self.n_builds += 1
        return self._cache

    def _graph(self, c: _Build, part: StructureEdges) -> Graph:
        device, dtype = self.device, self.dtype
        keep = part.keep
        if c.indices is None or not (
            (keep is None and c.keep is None) or (keep is not None and c.keep is not None and (keep == c.keep).all())
        ):
            e = part.edges
            c.keep = keep
            c.indices = {
                "edge_index": _tensor(e.edge_index, device), "reverse": _tensor(e.reverse, device),
                "rowptr": _tensor(e.rowptr, device), "half": _tensor(e.half, device), "pairs": _tensor(e.pairs, device),
            }
            c.shifts = None
        if c.shifts is None or not (c.shifts[0] is part.shifts or np.array_equal(c.shifts[0], part.shifts)):
            c.shifts = (part.shifts, _float(part.shifts, dtype, device))
        idx = c.indices
        return Graph(
            numbers=c.numbers_t, positions=_float(part.relative, dtype, device),
            vectors=_float(part.vectors, dtype, device), cell=c.cell_t, pbc=c.pbc_t, batch=c.batch_t,
            edge_index=idx["edge_index"], cell_shifts=c.shifts[1], reverse=idx["reverse"], rowptr=idx["rowptr"],
            half=idx["half"], pairs=idx["pairs"], n_pairs=idx["pairs"].shape[0], n_structures=1,
        )


def _symbol(z) -> str:
    z = int(z)
    return chemical_symbols[z] if 0 <= z < len(chemical_symbols) else f"Z={z}"
