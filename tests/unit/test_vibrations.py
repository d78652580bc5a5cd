"""Harmonic frequencies: units against an analytic diatomic, modes against ASE's Vibrations."""

import os

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import molecule
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.vibrations import Vibrations

from mlff_calc.errors import InputError
from mlff_calc.evaluation.vibrations import compare_frequencies, harmonic_frequencies


class HarmonicBond(Calculator):
    """E = k/2 (r - r0)² between atoms 0 and 1."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, k, r0):
        super().__init__()
        self.k, self.r0 = k, r0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        d = self.atoms.positions[1] - self.atoms.positions[0]
        r = np.linalg.norm(d)
        f = -self.k * (r - self.r0) * d / r
        self.results = {"energy": 0.5 * self.k * (r - self.r0) ** 2, "forces": np.array([-f, f])}


def test_diatomic_frequency_matches_the_analytic_value():
    k, r0 = 36.0, 1.1  # eV/Å², Å
    atoms = Atoms("CO", positions=[[0, 0, 0], [0, 0, 1.2]])
    result = harmonic_frequencies(atoms, HarmonicBond(k, r0), fmax=1e-6)
    assert result.frequencies.shape == (1,)  # linear: 3N - 5 = 1
    mu = np.prod(atoms.get_masses()) / atoms.get_masses().sum()  # amu
    omega = np.sqrt(k * units._e / (mu * units._amu)) * 1e10  # rad/s
    expected = units._hbar * omega / units._e / units.invcm  # cm⁻¹
    assert result.frequencies[0] == pytest.approx(expected, rel=1e-5)
    assert np.linalg.norm(result.atoms.positions[1] - result.atoms.positions[0]) == pytest.approx(r0, abs=1e-6)


def test_modes_match_ase_vibrations(tmp_path):
    calc = EMT()
    result = harmonic_frequencies(molecule("H2O"), calc)
    assert result.frequencies.shape == (3,)  # 3N - 6
    relaxed = result.atoms.copy()
    relaxed.calc = calc
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        vib = Vibrations(relaxed, delta=0.005, nfree=2)
        vib.run()
        reference = np.sort(np.real(vib.get_frequencies()))[-3:]
    finally:
        os.chdir(cwd)
    np.testing.assert_allclose(result.frequencies, reference, atol=0.1)


def test_compare_reports_zero_error_for_the_same_model():
    out = compare_frequencies([("water", molecule("H2O"))], EMT(), EMT())
    assert out["mae_cm1"] == pytest.approx(0.0, abs=1e-9)
    assert out["per_seed"][0]["formula"] == "H2O"


def test_periodic_and_single_atom_inputs_are_refused():
    with pytest.raises(InputError, match="molecules"):
        harmonic_frequencies(Atoms("Cu", cell=[3, 3, 3], pbc=True), EMT())
    with pytest.raises(InputError, match="single atom"):
        harmonic_frequencies(Atoms("Cu"), EMT())
