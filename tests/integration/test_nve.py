"""NVE with the (random, smooth) student in float64: velocity Verlet conserves the total energy."""

import numpy as np
from ase import units
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase.md.verlet import VelocityVerlet

from mlff_calc import StudentCalculator, StudentForceField
from mlff_calc.model.student import randomize_parameters
from mlff_calc.testing.structures import organic_molecule, small_triclinic_cell

# Measured with these settings (float64, 0.25 fs, 400 steps = 100 fs): max |E(t) - E(0)| = 1.4e-6 eV
# for ethanol and 2.9e-7 eV for a 32-atom triclinic cell. The bound leaves a 10x margin for platform
# round-off and still catches a non-conservative force (a stress/force sign or envelope error gives
# deviations above 1e-3 eV).
BOUND_EV = 2e-5


def _nve_deviation(atoms, model, steps=400, dt_fs=0.25):
    atoms.calc = StudentCalculator(model, device="cpu", dtype="float64", skin=0.5)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    Stationary(atoms)
    dyn = VelocityVerlet(atoms, timestep=dt_fs * units.fs)
    energies = []
    dyn.attach(lambda: energies.append(atoms.get_total_energy()), interval=1)
    dyn.run(steps)
    energies = np.array(energies)
    return np.abs(energies - energies[0]).max(), atoms.calc.converter.n_builds


def test_nve_energy_conservation():
    model = randomize_parameters(StudentForceField(hidden_dim=16, num_interactions=2, num_rbf=8), std=0.3, seed=2)
    for atoms in (organic_molecule(), small_triclinic_cell().repeat(2)):
        deviation, builds = _nve_deviation(atoms, model)
        print(f"{atoms.get_chemical_formula()}: max |dE| = {deviation:.2e} eV over 100 fs, {builds} list builds")
        assert deviation < BOUND_EV
        assert builds >= 1
