"""The refit of per-element reference energies at the end of ``train`` (mlff_calc/training/references.py).

Regression of issue 10: warm-started on-policy rounds left per-molecule energy offsets of 3-15 meV/atom
(energy MAE 5.1 meV/atom against 0.33 offline) because only the weak energy term pins a constant per
composition, and the far-from-equilibrium frames of a round dragged it off during a short warm start.
"""

import numpy as np
import pytest
import torch
from ase import Atoms
from test_training import config, make_file, synthetic_frames

from mlff_calc import StudentCalculator, StudentForceField
from mlff_calc.training import train
from mlff_calc.training.references import fit_correction


def _offsets_problem(seed=0, outliers=0.05):
    """Three molecules of four elements (collinear: 3 compositions, 4 unknowns), each with its own
    energy offset, per-frame scatter of 0.5 meV/atom, and a few frames off by ~1 eV/atom."""
    rng = np.random.default_rng(seed)
    compositions = np.array([[6, 2, 0, 1], [5, 1, 1, 0], [4, 2, 0, 1]], float)  # H C N O: ethanol, ...
    bias = np.array([0.015, -0.008, 0.006])  # eV/atom, per molecule
    which = rng.integers(0, 3, 300)
    counts = compositions[which]
    n_atoms = counts.sum(1)
    per_atom = bias[which] + 5e-4 * rng.normal(size=300)
    bad = rng.random(300) < outliers
    per_atom[bad] += rng.uniform(0.3, 1.0, bad.sum()) * rng.choice([-1, 1], bad.sum())
    return counts, per_atom * n_atoms, n_atoms, which, bad


def test_fit_correction_removes_per_composition_offsets_and_discounts_outlier_frames():
    counts, residual, n_atoms, which, bad = _offsets_problem()
    delta, weights = fit_correction(counts, residual, n_atoms)
    assert weights[bad].max() < 0.05 and weights[~bad].min() > 0.1
    after = (residual - counts @ delta) / n_atoms
    for m in range(3):
        assert abs(after[(which == m) & ~bad].mean()) < 2e-4  # eV/atom: the offsets are gone
    # Untrimmed least squares would leave offsets of the outliers' size: the robust weights are what matter.
    plain, *_ = np.linalg.lstsq(counts, residual, rcond=None)
    left = (residual - counts @ plain) / n_atoms
    assert max(abs(left[(which == m) & ~bad].mean()) for m in range(3)) > 1e-3


def test_fit_correction_of_one_composition_moves_its_mean_and_weighs_a_clean_set_alike():
    counts = np.tile([[2.0, 1.0]], (50, 1))
    n_atoms = counts.sum(1)
    residual = n_atoms * (0.01 + 1e-4 * np.random.default_rng(1).normal(size=50))
    delta, weights = fit_correction(counts, residual, n_atoms)
    assert weights.min() > 0.2
    assert counts[0] @ delta / 3 == pytest.approx(np.mean(residual / n_atoms), abs=2e-5)  # spread: 1e-4


def test_warm_start_on_shifted_energies_refits_the_references_without_touching_forces(tmp_path):
    """The previous student meets data whose per-element energies moved by +-0.5 eV (what a per-molecule
    offset looks like to it); with training frozen (lr ~ 0) only the refit can remove that offset."""
    first = train(config(make_file(tmp_path / "a.h5", n=40), tmp_path / "first", run={"epochs": 4}))
    previous = StudentForceField.load(first.checkpoint)
    shifted = make_file(tmp_path / "b.h5", n=40, seed=1, refs={29: -3.0, 13: -2.5})  # was -3.5, -2.0
    frozen = {"optim": {"lr": 1e-12, "ema_decay": 0.0, "warmup_epochs": 0.0}, "run": {"epochs": 1}}
    warm = StudentForceField.load(train(config(shifted, tmp_path / "warm", **frozen),
                                        init_from=first.checkpoint).checkpoint)
    refit = warm.metadata["reference_refit"]
    assert refit["delta_ev"][29] == pytest.approx(0.5, abs=0.1)
    assert refit["delta_ev"][13] == pytest.approx(-0.5, abs=0.1)
    assert refit["energy_mae_ev_per_atom_after"] < 0.2 * refit["energy_mae_ev_per_atom_before"]
    for z in (13, 29):
        assert float(warm.atom_ref[z] - previous.atom_ref[z]) == pytest.approx(refit["delta_ev"][z], abs=1e-5)
        assert warm.metadata["reference_energies"][z] == pytest.approx(float(warm.atom_ref[z]), abs=1e-6)
    # Forces: a constant per element changes none of them.
    f = synthetic_frames(1, seed=5)[0]
    atoms = Atoms(numbers=f["atomic_numbers"], positions=f["positions"])
    fa = StudentCalculator(model=previous, dtype="float64").get_forces(atoms.copy())
    fb = StudentCalculator(model=warm, dtype="float64").get_forces(atoms.copy())
    assert np.allclose(fa, fb, atol=1e-6)
    ea = StudentCalculator(model=previous, dtype="float64").get_potential_energy(atoms.copy())
    eb = StudentCalculator(model=warm, dtype="float64").get_potential_energy(atoms.copy())
    expected = sum(refit["delta_ev"][int(z)] for z in atoms.numbers)
    assert eb - ea == pytest.approx(expected, abs=1e-4)
    assert torch.equal(warm.scale, previous.scale) and torch.equal(warm.shift, previous.shift)
