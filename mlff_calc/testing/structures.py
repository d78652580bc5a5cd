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
