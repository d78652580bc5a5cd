"""Atoms -> model inputs: validation of the input and a Verlet-skin neighbour list.

The list is built with radius ``cutoff + skin`` and rebuilt only when an atom moved more than
``skin / 2`` since the last build (two atoms approaching each other then closed the gap by at most
``skin``, so no pair inside the cutoff can be missing), or when the cell, pbc or atoms changed. Every
call filters the cached list down to pairs inside the cutoff; since the list is sorted and filtering
keeps the order, the edges are exactly those of a fresh list, and so are the results.
"""

from __future__ import annotations

import numpy as np
import torch
from ase import Atoms
from ase.data import chemical_symbols

from . import _keys as K
from .neighbors import check_cell, edge_vectors, neighbor_list, reverse_edges
from .utils import element_list

MIN_DISTANCE = 0.1  # Å; closer atoms are refused as overlapping


class AtomsConverter:
    """Validate an ``ase.Atoms`` and turn it into the tensor dict the model takes."""

    def __init__(
        self,
        cutoff: float,
        skin: float,
        dtype: torch.dtype,
        device: torch.device,
        max_z: int = 118,
        elements: list[int] | None = None,
    ):
        if skin < 0:
            raise ValueError(f"skin must be >= 0 Å, got {skin}")
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.dtype = dtype
        self.device = device
        self.max_z = int(max_z)
        self.elements = None if elements is None else sorted(int(z) for z in elements)
        self.n_builds = 0  # number of neighbour-list builds (for tests and diagnostics)
        self._cache: dict | None = None

    # ---- validation ----------------------------------------------------------------------------------
    def validate(self, atoms: Atoms) -> None:
        """Raise ``ValueError`` naming what is wrong and where (the atom index, the element, the axis)."""
        if len(atoms) == 0:
            raise ValueError("the structure has no atoms")
        positions = atoms.positions
        bad = ~np.isfinite(positions).all(axis=1)
        if bad.any():
            idx = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"positions are not finite for {int(bad.sum())} atom(s); first is atom {idx} "
                f"({atoms.get_chemical_symbols()[idx]}) at {positions[idx].tolist()}"
            )
        numbers = atoms.numbers
        out_of_range = (numbers < 1) | (numbers > self.max_z)
        if out_of_range.any():
            idx = int(np.flatnonzero(out_of_range)[0])
            raise ValueError(
                f"atom {idx} has atomic number {int(numbers[idx])}, outside the range 1..{self.max_z} "
                "this model supports"
            )
        if self.elements is not None:
            unseen = ~np.isin(numbers, self.elements)
            if unseen.any():
                idx = int(np.flatnonzero(unseen)[0])
                z = int(numbers[idx])
                raise ValueError(
                    f"atom {idx} is {chemical_symbols[z]} (Z={z}), an element this model never saw in "
                    f"training (it knows {element_list(self.elements)}); its predictions there would be "
                    "meaningless"
                )
        check_cell(atoms.cell.array, atoms.pbc)

    # ---- neighbour list with skin --------------------------------------------------------------------
    def _needs_rebuild(self, atoms: Atoms) -> bool:
        c = self._cache
        if c is None:
            return True
        if len(atoms) != len(c["numbers"]) or not np.array_equal(atoms.numbers, c["numbers"]):
            return True
        if not np.array_equal(atoms.pbc, c["pbc"]) or not np.array_equal(atoms.cell.array, c["cell"]):
            return True
        displacement = np.linalg.norm(atoms.positions - c["positions"], axis=1).max()
        # A strict '>' would keep a list built at zero skin for a moved structure.
        return bool(displacement > 0.5 * self.skin) or (self.skin == 0 and displacement > 0)

    def _build(self, atoms: Atoms) -> None:
        edge_index, shifts = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, self.cutoff + self.skin)
        edge_index, shifts = torch.as_tensor(edge_index), torch.as_tensor(shifts)
        self._cache = {
            "numbers": atoms.numbers.copy(),
            "pbc": atoms.pbc.copy(),
            "cell": atoms.cell.array.copy(),
            "positions": atoms.positions.copy(),
            "edge_index": edge_index.to(self.device),
            "shifts": shifts.to(device=self.device, dtype=self.dtype),
            "reverse": reverse_edges(edge_index, shifts, len(atoms)).to(self.device),
        }
        self.n_builds += 1

    def __call__(self, atoms: Atoms) -> dict[str, torch.Tensor]:
        """Tensor inputs for one structure (``batch`` of zeros), edges inside the cutoff only."""
        self.validate(atoms)
        if self._needs_rebuild(atoms):
            self._build(atoms)
        c = self._cache
        data = {
            K.ATOMIC_NUMBERS: torch.as_tensor(atoms.numbers, dtype=torch.long, device=self.device),
            K.POSITIONS: torch.as_tensor(atoms.positions, dtype=self.dtype, device=self.device),
            K.CELL: torch.as_tensor(atoms.cell.array, dtype=self.dtype, device=self.device).reshape(1, 3, 3),
            K.PBC: torch.as_tensor(atoms.pbc, dtype=torch.bool, device=self.device).reshape(1, 3),
            K.BATCH: torch.zeros(len(atoms), dtype=torch.long, device=self.device),
        }
        edge_index, shifts = c["edge_index"], c["shifts"]
        with torch.no_grad():
            vectors = edge_vectors({**data, K.EDGE_INDEX: edge_index, K.CELL_SHIFTS: shifts})
            distances = torch.linalg.vector_norm(vectors, dim=-1)
            keep = distances < self.cutoff
        data[K.EDGE_INDEX] = edge_index[:, keep]
        data[K.CELL_SHIFTS] = shifts[keep]
        # |r_ji| == |r_ij| bit for bit (negated sums), so the filter keeps both edges of a pair and the
        # cached reverse map only needs renumbering.
        new_index = torch.cumsum(keep, 0) - 1
        data[K.EDGE_REVERSE] = new_index[c["reverse"][keep]]
        self.check_overlap(atoms, data[K.EDGE_INDEX], data[K.CELL_SHIFTS], distances[keep])
        return data

    @staticmethod
    def check_overlap(atoms: Atoms, edge_index: torch.Tensor, shifts: torch.Tensor, distances: torch.Tensor) -> None:
        if distances.numel() == 0:
            return
        closest = int(torch.argmin(distances))
        d = float(distances[closest])
        if d < MIN_DISTANCE:
            i, j = (int(x) for x in edge_index[:, closest])
            shift = [int(round(x)) for x in shifts[closest].tolist()]
            symbols = atoms.get_chemical_symbols()
            image = "" if shift == [0, 0, 0] else f" (periodic image shifted by {shift})"
            what = f"atom {i} ({symbols[i]}) and its own periodic image{image}" if i == j else (
                f"atoms {i} ({symbols[i]}) and {j} ({symbols[j]}){image}"
            )
            raise ValueError(f"{what} are {d:.4f} Å apart, closer than {MIN_DISTANCE} Å: overlapping atoms")
