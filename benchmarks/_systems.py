"""Deterministic benchmark structures: molecules, liquid water boxes and bulk crystals.

Every builder is a pure function of its arguments (and a fixed seed), so two runs of a benchmark time
exactly the same atoms. ``SYSTEMS`` maps a short name to ``(builder, size_class)``; ``build(name)``
returns a fresh ``ase.Atoms``.

Size classes drive the benchmark's defaults: ``small`` (<= ~100 atoms, the ``--quick`` set),
``medium`` (~500-1,000 atoms) and ``large`` (~8,000-10,000 atoms).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from ase import Atoms
from ase.build import bulk, molecule

WATER_DENSITY = 0.997  # g/cm^3 at 298 K
_AMU_PER_G = 6.02214076e23
WATER_MASS = 18.015  # g/mol
O_H = 0.9572  # Å, TIP3P geometry
H_O_H = np.deg2rad(104.52)


def _random_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    """``(n, 3, 3)`` uniformly distributed rotation matrices (QR of Gaussian matrices, sign-fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((n, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    det = np.linalg.det(q)
    q[det < 0, :, 0] *= -1.0
    return q


def water_box(n_molecules: int, seed: int = 0, density: float = WATER_DENSITY) -> Atoms:
    """Periodic cubic box of ``n_molecules`` rigid waters at ``density`` g/cm³ (liquid-like, unequilibrated).

    Oxygens sit on a jittered simple-cubic grid (``k**3 >= n_molecules`` sites, a random subset used)
    and each molecule gets a random orientation; an orientation is re-drawn while any of its atoms is
    closer than 1.4 Å (H-H / O-H) or 2.5 Å (O-O) to an atom of another molecule, minimum image.
    Result: O-O nearest neighbours around 2.7-3.1 Å, roughly the first peak of liquid water.
    """
    rng = np.random.default_rng(seed)
    volume = n_molecules * WATER_MASS / _AMU_PER_G / density * 1e24  # Å^3
    length = volume ** (1.0 / 3.0)
    k = int(np.ceil(n_molecules ** (1.0 / 3.0) - 1e-9))
    spacing = length / k
    grid = np.stack(np.meshgrid(*[np.arange(k)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    sites = grid[np.sort(rng.choice(len(grid), n_molecules, replace=False))]
    oxygens = (sites + 0.5) * spacing + rng.uniform(-0.1, 0.1, size=(n_molecules, 3)) * spacing

    half = 0.5 * H_O_H
    local = np.array([[0.0, 0.0, 0.0], [O_H * np.sin(half), O_H * np.cos(half), 0.0],
                      [-O_H * np.sin(half), O_H * np.cos(half), 0.0]])
    placed = np.zeros((0, 3))
    placed_is_o = np.zeros(0, dtype=bool)
    is_o = np.array([True, False, False])
    for m in range(n_molecules):
        for _attempt in range(200):
            rot = _random_rotations(rng, 1)[0]
            mol = oxygens[m] + local @ rot.T
            if len(placed) == 0:
                break
            d = mol[:, None, :] - placed[None, :, :]
            d -= length * np.round(d / length)
            dist = np.linalg.norm(d, axis=-1)  # (3, n_placed)
            both_o = is_o[:, None] & placed_is_o[None, :]
            if (dist[~both_o] > 1.4).all() and (dist[both_o] > 2.5).all():
                break
        placed = np.concatenate([placed, mol])
        placed_is_o = np.concatenate([placed_is_o, is_o])
    atoms = Atoms("OH2" * n_molecules, positions=placed, cell=[length] * 3, pbc=True)
    atoms.wrap()
    return atoms


def alkane(n_carbons: int) -> Atoms:
    """All-trans n-alkane C_nH_(2n+2), ideal tetrahedral geometry (C-C 1.54 Å, C-H 1.09 Å), no cell."""
    cc, ch = 1.54, 1.09
    theta = np.deg2rad(109.47)
    dx = cc * np.sin(theta / 2)  # advance along the chain axis x
    dy = cc * np.cos(theta / 2)  # zigzag amplitude in y
    carbons = np.array([[i * dx, (i % 2) * dy, 0.0] for i in range(n_carbons)])
    hydrogens = []
    for i, c in enumerate(carbons):
        # Bisector of the two C-H bonds points away from the zigzag (±y); the bonds open up in ±z.
        out = np.array([0.0, -1.0 if i % 2 == 0 else 1.0, 0.0])
        half = np.deg2rad(109.47) / 2
        for sz in (1.0, -1.0):
            hydrogens.append(c + ch * (np.cos(half) * out + np.sin(half) * np.array([0.0, 0.0, sz])))
        # Terminal methyls: a third H where the next carbon of the zigzag would be.
        for end, ghost in ((0, -1), (n_carbons - 1, n_carbons)):
            if i == end:
                bond = np.array([ghost * dx, (ghost % 2) * dy, 0.0]) - c
                hydrogens.append(c + ch * bond / np.linalg.norm(bond))
    positions = np.concatenate([carbons, np.array(hydrogens)])
    atoms = Atoms(f"C{n_carbons}H{len(hydrogens)}", positions=positions)
    atoms.center(vacuum=5.0)
    return atoms


def silicon(repeat: int) -> Atoms:
    """Diamond-cubic Si (a = 5.431 Å), ``repeat**3`` conventional 8-atom cells."""
    return bulk("Si", "diamond", a=5.431, cubic=True).repeat(repeat)


def benzene() -> Atoms:
    atoms = molecule("C6H6")
    atoms.center(vacuum=5.0)
    return atoms


SYSTEMS: dict[str, tuple[Callable[[], Atoms], str]] = {
    # name: (builder, size class)
    "benzene": (benzene, "small"),  # 12 atoms, molecule
    "alkane_C32": (lambda: alkane(32), "small"),  # 98 atoms, molecule
    "si_64": (lambda: silicon(2), "small"),  # 64 atoms, bulk
    "water_81": (lambda: water_box(27, seed=0), "small"),  # THE reference system
    "si_512": (lambda: silicon(4), "medium"),
    "water_1k": (lambda: water_box(343, seed=1), "medium"),  # 1,029 atoms
    "si_8k": (lambda: silicon(10), "large"),  # 8,000 atoms
    "water_10k": (lambda: water_box(3375, seed=2), "large"),  # 10,125 atoms
}


def build(name: str) -> Atoms:
    """A fresh copy of the named structure (``KeyError`` names the known ones)."""
    try:
        builder, _ = SYSTEMS[name]
    except KeyError:
        raise KeyError(f"unknown system {name!r}; known: {', '.join(SYSTEMS)}") from None
    return builder()
