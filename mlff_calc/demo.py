"""``make demo``: a short MD run with a student, then the measured benchmark table.

Until a distilled student is at hand this uses a randomly initialised one: it shows the mechanics
(ASE MD through ``StudentCalculator``, energy conservation, speed), not chemistry.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
from ase import units
from ase.build import molecule
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase.md.verlet import VelocityVerlet

from . import StudentCalculator, StudentForceField
from .model.student import randomize_parameters

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "RESULTS.md"


def run_md(steps: int) -> None:
    atoms = molecule("CH3CH2OH")
    model = randomize_parameters(StudentForceField(), std=0.3, seed=0)
    atoms.calc = StudentCalculator(model, device="auto", dtype="float64")
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    Stationary(atoms)
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    energies = []
    dyn.attach(lambda: energies.append(atoms.get_total_energy()), interval=10)
    start = time.perf_counter()
    dyn.run(steps)
    elapsed = time.perf_counter() - start
    drift = (energies[-1] - energies[0]) / len(atoms) / (steps * 0.5e-3) * 1e3
    print(f"NVE, ethanol, random-weight default student (float64), {steps} steps of 0.5 fs:")
    print(f"  {elapsed / steps * 1e3:.1f} ms/step; total energy {energies[0]:.5f} -> {energies[-1]:.5f} eV "
          f"(drift {drift:+.3f} meV/atom/ps, max deviation {np.ptp(energies) * 1e3:.3f} meV)")


def print_benchmark_table() -> None:
    if not RESULTS.exists():
        print("(no benchmarks/RESULTS.md yet: run `make bench`)")
        return
    text = RESULTS.read_text()
    match = re.search(r"<!-- bench_speed:start -->(.*?)<!-- bench_speed:end -->", text, re.S)
    print("\nMeasured speed, student vs Orb-v2 (benchmarks/RESULTS.md):")
    print((match.group(1) if match else text).strip())


def main() -> None:
    run_md(steps=40 if os.environ.get("CI") else 400)
    print_benchmark_table()


if __name__ == "__main__":
    main()
