"""Small deterministic structures for physics tests: a molecule, a triclinic cell smaller than the
cutoff (many periodic images), a slab."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import molecule


def organic_molecule(seed: int = 0, rattle: float = 0.05) -> Atoms:
    """Ethanol, rattled so that no symmetry hides an error."""
    atoms = molecule("CH3CH2OH")
    atoms.rattle(rattle, seed=seed)
    return atoms


def small_triclinic_cell(seed: int = 0) -> Atoms:
    """4 atoms in a skewed cell whose heights (~2.6-3.0 Å) are far below a 5 Å cutoff."""
    rng = np.random.default_rng(seed)
    cell = np.array([[3.1, 0.0, 0.0], [0.9, 2.9, 0.0], [0.6, -0.7, 3.2]])
    frac = np.array([[0.0, 0.0, 0.0], [0.5, 0.45, 0.1], [0.2, 0.7, 0.55], [0.75, 0.2, 0.6]])
    frac = frac + rng.normal(0.0, 0.02, frac.shape)
    return Atoms(numbers=[6, 8, 1, 14], scaled_positions=frac, cell=cell, pbc=True)


def slab(vacuum: float = 8.0, seed: int = 0) -> Atoms:
    """Two-layer slab periodic in x and y, open along z, with ``vacuum`` Å of cell along z."""
    rng = np.random.default_rng(seed)
    a = 2.6
    positions = []
    for layer, z in enumerate((0.0, 2.0)):
        for ix in range(2):
            for iy in range(2):
                positions.append([(ix + 0.5 * layer) * a, (iy + 0.5 * layer) * a, z])
    positions = np.array(positions) + rng.normal(0.0, 0.03, (len(positions), 3))
    cell = [[2 * a, 0.0, 0.0], [0.4, 2 * a, 0.0], [0.0, 0.0, 2.0 + vacuum]]
    numbers = [29, 29, 8, 29, 29, 8, 29, 29]
    return Atoms(numbers=numbers, positions=positions, cell=cell, pbc=[True, True, False])


def random_rotation(seed: int = 0) -> np.ndarray:
    """A proper rotation matrix (det = +1) from a seeded QR decomposition."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _cycle(elements, n: int) -> list[int]:
    return [int(elements[i % len(elements)]) for i in range(n)]


def cluster(numbers, seed: int = 0, rattle: float = 0.05) -> Atoms:
    """A compact open cluster: the first ``len(numbers)`` sites of an fcc lattice (2.55 Å apart)
    closest to a site, rattled. For models that know no organic elements (e.g. a Cu-only student)."""
    from ase.build import bulk

    lattice = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)
    centre = lattice.positions[len(lattice) // 2]
    order = np.argsort(np.linalg.norm(lattice.positions - centre, axis=1), kind="stable")
    atoms = Atoms(numbers=list(numbers), positions=lattice.positions[order[: len(numbers)]] - centre)
    atoms.rattle(rattle, seed=seed)
    return atoms


class StructureSet:
    """The structures the physics checks run on, built from the elements a model knows.

    ``elements=None`` (a random-weight model: any element) gives the historical set: ethanol, a C/O/H/Si
    triclinic cell, a Cu/O slab, fcc Cu. Otherwise every structure uses only ``elements``: ethanol if
    they hold H, C and O, else a cluster; the cell and slab cycle through the elements; the crystal is
    fcc of the heaviest element (at Cu's lattice constant).
    """

    def __init__(self, elements=None):
        self.elements = None if elements is None else sorted(int(z) for z in elements)

    def _organic(self) -> bool:
        return self.elements is None or {1, 6, 8} <= set(self.elements)

    def molecule(self, seed: int = 0) -> Atoms:
        if self._organic():
            return organic_molecule(seed=seed)
        return cluster(_cycle(self.elements, 7), seed=seed)

    def fragment(self) -> Atoms:
        """A second small molecule (a water or a 3-atom cluster) for the additivity check."""
        if self._organic():
            return Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
        return cluster(_cycle(self.elements[::-1], 3), seed=7)

    def cell(self, seed: int = 0) -> Atoms:
        atoms = small_triclinic_cell(seed)
        if self.elements is not None:
            atoms.numbers = _cycle(self.elements, len(atoms))
        return atoms

    def slab(self, vacuum: float = 8.0) -> Atoms:
        atoms = slab(vacuum)
        if self.elements is not None:
            atoms.numbers = _cycle(self.elements[::-1], len(atoms))
        return atoms

    def crystal(self) -> Atoms:
        from ase.build import bulk

        from ase.data import chemical_symbols

        symbol = "Cu" if self.elements is None else chemical_symbols[max(self.elements)]
        return bulk(symbol, "fcc", a=3.6, cubic=True).repeat(2)

    def dimer(self, r: float) -> Atoms:
        z = (6, 8) if self.elements is None else (self.elements[0], self.elements[-1])
        return Atoms(numbers=list(z), positions=[[0, 0, 0], [r, 0, 0]])
