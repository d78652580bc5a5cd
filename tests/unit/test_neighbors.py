"""vesin neighbour lists against ASE's own, for the cases that break naive implementations."""

import numpy as np
import pytest
from ase import Atoms
from ase.neighborlist import primitive_neighbor_list

from mlff_calc.neighbors import check_cell, neighbor_list
from mlff_calc.testing.structures import organic_molecule, slab, small_triclinic_cell


def as_set(i, j, shifts):
    return {(int(a), int(b), *map(int, s)) for a, b, s in zip(i, j, shifts)}


def wire() -> Atoms:
    atoms = Atoms("C3", positions=[[0, 0, 0], [1.2, 0.3, 0.1], [2.3, -0.2, 0.4]], cell=[3.5, 0, 0], pbc=[True, False, False])
    return atoms


@pytest.mark.parametrize("build", [organic_molecule, small_triclinic_cell, slab, wire])
@pytest.mark.parametrize("outside", [False, True])
def test_matches_ase(build, outside):
    atoms = build()
    if outside:  # atoms far outside the cell along periodic directions
        atoms.positions += np.array([2, -3, 1]) * atoms.pbc @ (atoms.cell.array if atoms.pbc.any() else np.eye(3))
    cutoff = 5.0
    edge_index, shifts = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
    i, j, S = primitive_neighbor_list("ijS", atoms.pbc, atoms.cell.array, atoms.positions, cutoff, self_interaction=False)
    assert as_set(*edge_index, shifts) == as_set(i, j, S)
    assert len(edge_index[0]) == len(i) > 0
    # Sorted by (receiver, sender, shift): the skin logic relies on it.
    keys = np.column_stack([edge_index[0], edge_index[1], shifts])
    assert (np.lexsort(keys.T[::-1]) == np.arange(len(keys))).all()


def test_many_images_of_tiny_cell():
    atoms = Atoms("H", positions=[[0, 0, 0]], cell=np.eye(3) * 1.0, pbc=True)
    edge_index, shifts = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 2.5)
    # Lattice points of the simple cubic lattice within 2.5 Å, excluding the origin.
    grid = np.stack(np.meshgrid(*[np.arange(-3, 4)] * 3, indexing="ij"), -1).reshape(-1, 3)
    expected = int(((np.linalg.norm(grid, axis=1) < 2.5) & (np.abs(grid).sum(1) > 0)).sum())
    assert edge_index.shape[1] == expected == 80


def test_degenerate_periodic_cell_refused():
    with pytest.raises(ValueError, match="degenerate"):
        check_cell(np.diag([3.0, 3.0, 0.0]), np.array([True, True, True]))
    with pytest.raises(ValueError, match="degenerate"):
        check_cell(np.array([[3.0, 0, 0], [6.0, 0, 0], [0, 0, 3.0]]), np.array([True, True, True]))
    check_cell(np.diag([3.0, 3.0, 0.0]), np.array([True, True, False]))  # slab with no z vector: fine
    with pytest.raises(ValueError, match="not finite"):
        check_cell(np.diag([3.0, np.nan, 3.0]), np.array([False] * 3))
