"""01 - NVT molecular dynamics with a trained student, in plain ASE.

The student is an ordinary ASE calculator: everything below is standard ASE (read, a thermostat,
a logger, a trajectory). ``mlff_calc.md.run_md`` (and ``mlff-calc md``) wrap the same steps and add
blow-up detection and a progress bar; the one-line equivalent is printed at the end.

    python md_examples/01_student_nvt.py --model runs/my_system/student.pt --structure my_system.xyz \
        --temperature 300 --steps 2000
    python md_examples/01_student_nvt.py ... --smoke        # a few steps (also when $CI is set)
"""

import argparse
import os
import time

import numpy as np
from ase import units
from ase.io import Trajectory, read
from ase.md.langevin import Langevin
from ase.md.logger import MDLogger
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta

from mlff_calc import StudentCalculator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="student checkpoint (student.pt)")
    parser.add_argument("--structure", required=True, help="starting structure, any ASE-readable file")
    parser.add_argument("--temperature", type=float, default=300.0, help="K (default 300)")
    parser.add_argument("--timestep", type=float, default=0.5, help="fs (default 0.5)")
    parser.add_argument("--steps", type=int, default=2000, help="MD steps (default 2000)")
    parser.add_argument("--interval", type=int, default=20, help="steps between log lines and frames")
    parser.add_argument("--traj", default="nvt.traj", help="output trajectory (default nvt.traj)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a few steps only (also when $CI is set)")
    args = parser.parse_args()
    if args.smoke or os.environ.get("CI"):
        args.steps, args.interval = 20, 5

    # 1. The structure and the student calculator.
    atoms = read(args.structure)
    atoms.calc = StudentCalculator.from_checkpoint(args.model, device=args.device, dtype=args.dtype)

    # 2. Maxwell-Boltzmann velocities; no net momentum (and no net rotation for a free molecule).
    rng = np.random.default_rng(args.seed)
    thermalize_momenta(atoms, args.temperature, rng=rng)
    Stationary(atoms)
    if not atoms.pbc.any():
        ZeroRotation(atoms)

    # 3. Langevin thermostat (friction 0.01/fs, i.e. a ~100 fs coupling time). fixcm=False: the noise acts
    #    on all 3N degrees of freedom, which samples the canonical ensemble exactly.
    dyn = Langevin(atoms, timestep=args.timestep * units.fs, temperature_K=args.temperature,
                   friction=0.01 / units.fs, fixcm=False, rng=rng)
    dyn.attach(MDLogger(dyn, atoms, "-", header=True), interval=args.interval)  # "-" = stdout
    traj = Trajectory(args.traj, "w", atoms)
    dyn.attach(traj.write, interval=args.interval)
    temperatures = []
    dyn.attach(lambda: temperatures.append(atoms.get_temperature()), interval=args.interval)

    start = time.perf_counter()
    dyn.run(args.steps)
    elapsed = time.perf_counter() - start
    traj.close()

    ns_per_day = args.steps * args.timestep * 1e-6 / elapsed * 86400
    half = temperatures[len(temperatures) // 2:]  # the second half: after the thermostat has equilibrated
    print(f"{args.steps} steps of {args.timestep} fs in {elapsed:.2f} s: {ns_per_day:.3g} ns/day, "
          f"{elapsed / args.steps * 1e3:.2f} ms/step")
    print(f"mean temperature (second half): {np.mean(half):.1f} K (target {args.temperature:g} K)")
    print(f"trajectory: {args.traj} ({len(temperatures)} frames)")
    print("the same with blow-up detection and a progress bar:\n"
          f"  mlff-calc md --model {args.model} --structure {args.structure} --ensemble nvt "
          f"--temperature {args.temperature:g} --timestep {args.timestep:g} --steps {args.steps} "
          f"--traj {args.traj}")


if __name__ == "__main__":
    main()
