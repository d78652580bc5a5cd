"""Shared integration fixtures: a tiny EMT-distilled Cu student, trained once per test session (~2 s).

    def test_something(tiny_student, tiny_student_structure):
        calc = StudentCalculator.from_checkpoint(tiny_student, device="cpu")
        atoms = tiny_student_structure          # a fresh copy for every test
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

# Small enough that training takes ~2 s on one thread; big enough that the student follows EMT closely
# for short, stable MD of fcc Cu near 300 K (force MAE ~0.1 eV/Å against EMT).
TINY_CONFIG = {
    "model": {"hidden_dim": 16, "num_interactions": 2, "num_rbf": 8, "cutoff": 3.5},
    "data": {"batch_size": 4, "val_size": 4, "test_size": 4},
    "optim": {"lr": 5e-3, "warmup_epochs": 0.5, "ema_decay": 0.9},
    "run": {"epochs": 12, "num_threads": 1, "quiet": True, "seed": 0},
}


def emt_cu_frames(n: int = 40, seed: int = 0) -> list[dict]:
    """Rattled, slightly strained 4-atom fcc Cu cells labelled by EMT (energy, forces, stress)."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.6 + 0.05 * rng.normal(), cubic=True)
        atoms.positions += rng.normal(0.0, 0.1, atoms.positions.shape)  # ~ thermal displacements at 300 K
        atoms.calc = EMT()
        frames.append({"atomic_numbers": atoms.numbers, "positions": atoms.positions,
                       "cell": atoms.cell.array, "pbc": atoms.pbc, "energy": atoms.get_potential_energy(),
                       "forces": atoms.get_forces(), "stress": atoms.get_stress(voigt=False),
                       "input_index": i})
    return frames


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory) -> Path:
    """Path to ``student.pt`` of a tiny PaiNN student distilled from EMT on fcc Cu (elements: Cu only).

    Trained once per session (~2 s); treat the file as read-only.
    """
    from mlff_calc.data.hdf5 import write_frames
    from mlff_calc.training import train

    root = tmp_path_factory.mktemp("tiny_student")
    data = root / "cu.h5"
    write_frames(data, emt_cu_frames(), {"name": "emt", "options": {}}, {"command": "tests conftest"})
    config = {section: dict(values) for section, values in TINY_CONFIG.items()}
    config["data"]["path"], config["run"]["out"] = str(data), str(root / "run")
    result = train(config)
    return Path(result.checkpoint)


@pytest.fixture
def tiny_student_structure() -> Atoms:
    """A fresh 32-atom periodic fcc Cu cell (a = 3.6 Å) the tiny student was trained for."""
    return bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
