"""03 - Energy conservation of the student in a long NVE run.

A conservative force field (forces = -dE/dx, as the student's are by construction) with a small enough
time step keeps the total energy constant up to bounded fluctuations. A steady drift means the time
step is too long for the fastest motion, or the run left the region the student was trained on.
Prints the drift (slope of a linear fit, meV/atom/ps) and the largest deviation; optionally plots it.

    python md_examples/03_nve_stability.py --model runs/my_system/student.pt --structure my_system.xyz \
        --steps 20000 --timestep 0.5 --dtype float64 --plot nve_energy.png
    python md_examples/03_nve_stability.py ... --smoke        # a few steps (also when $CI is set)
"""

import argparse
import os

import numpy as np
from ase.io import read

from mlff_calc import StudentCalculator
from mlff_calc.md import MDBlowUp, run_md


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="student checkpoint (student.pt)")
    parser.add_argument("--structure", required=True, help="starting structure, any ASE-readable file")
    parser.add_argument("--temperature", type=float, default=300.0,
                        help="temperature of the initial velocities, K (default 300)")
    parser.add_argument("--timestep", type=float, default=0.5, help="fs (default 0.5)")
    parser.add_argument("--steps", type=int, default=20000,
                        help="NVE steps (default 20000 = 10 ps at 0.5 fs)")
    parser.add_argument("--interval", type=int, default=10, help="steps between energy samples (default 10)")
    parser.add_argument("--dtype", default="float64", choices=("float32", "float64"),
                        help="float64 (default) separates the integrator's drift from float32 round-off")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--plot", default=None, metavar="PNG", help="plot total energy vs time to this file")
    parser.add_argument("--smoke", action="store_true", help="a few steps only (also when $CI is set)")
    args = parser.parse_args()
    if args.smoke or os.environ.get("CI"):
        args.steps, args.interval = 40, 2

    atoms = read(args.structure)
    calc = StudentCalculator.from_checkpoint(args.model, device=args.device, dtype=args.dtype)
    try:
        result = run_md(atoms, calc, ensemble="nve", temperature=args.temperature, timestep=args.timestep,
                        steps=args.steps, interval=args.interval, progress=not os.environ.get("CI"))
    except MDBlowUp as exc:  # exc.result holds the good part of the run, exc.step where it went wrong
        raise SystemExit(f"NVE run blew up: {exc}") from None
    print(result.summary())
    print(f"drift: {result.drift_mev_per_atom_ps:+.4f} meV/atom/ps over {result.time_ps:.3g} ps; "
          f"max deviation {result.max_deviation_mev_per_atom:.4f} meV/atom; "
          f"temperature fluctuates {result.temperatures.min():.0f}..{result.temperatures.max():.0f} K")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display needed
        import matplotlib.pyplot as plt

        deviation = (result.total_energies - result.total_energies[0]) / result.n_atoms * 1e3  # meV/atom
        slope, intercept = np.polyfit(result.times_ps, deviation, 1)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(result.times_ps, deviation, label="total energy")
        ax.plot(result.times_ps, intercept + slope * result.times_ps, "--", label="linear fit (drift)")
        ax.set_xlabel("time (ps)")
        ax.set_ylabel("E_total(t) - E_total(0)  (meV/atom)")
        ax.set_title(f"NVE, {args.timestep:g} fs, {args.dtype}: "
                     f"drift {result.drift_mev_per_atom_ps:+.3f} meV/atom/ps")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
