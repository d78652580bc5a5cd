"""04 - NVT in i-PI with the student as the force driver (the route to path integrals and replica exchange).

i-PI integrates; the student answers its force requests over a unix socket. The script writes an i-PI input
(``input.xml``: NVT, Langevin thermostat, one bead) and the starting structure into ``--workdir``, starts
``i-pi`` and the driver (ASE's ``SocketClient`` + ``StudentCalculator``, or with ``--driver metatomic`` i-PI's
own driver on a file from ``mlff-calc export``), waits for both to finish and prints i-PI's properties.

    python md_examples/04_ipi_nvt.py --model runs/my_system/student.pt --structure my_system.xyz --steps 2000
    mlff-calc export runs/my_system/student.pt --out student-mta.pt
    python md_examples/04_ipi_nvt.py --model student-mta.pt --driver metatomic --structure my_system.xyz
    python md_examples/04_ipi_nvt.py ... --smoke        # a few steps (also when $CI is set)

By hand, in two shells: ``i-pi input.xml`` and then
``python -m mlff_calc.integrations.ipi --model student.pt --structure init.extxyz --address <address>``.
For path-integral MD raise ``nbeads`` in ``input.xml`` (``mlff_calc.integrations.ipi.nvt_input(nbeads=...)``).
"""

import argparse
import os

import numpy as np
from ase.io import read

from mlff_calc.integrations.ipi import run_simulation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", required=True, help="student.pt (driver ase) or an exported file (metatomic)"
    )
    parser.add_argument("--structure", required=True, help="starting structure, any ASE-readable file")
    parser.add_argument("--driver", choices=("ase", "metatomic"), default="ase")
    parser.add_argument("--workdir", default="ipi_run", help="where input.xml and i-PI's outputs go")
    parser.add_argument("--temperature", type=float, default=300.0, help="K (default 300)")
    parser.add_argument("--timestep", type=float, default=0.5, help="fs (default 0.5)")
    parser.add_argument("--steps", type=int, default=2000, help="MD steps (default 2000)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--smoke", action="store_true", help="a few steps only (also when $CI is set)")
    args = parser.parse_args()
    if args.smoke or os.environ.get("CI"):
        args.steps = 20

    atoms = read(args.structure)
    run = run_simulation(
        args.model,
        atoms,
        args.workdir,
        steps=args.steps,
        temperature=args.temperature,
        timestep=args.timestep,
        seed=args.seed,
        device=args.device,
        driver=args.driver,
        timeout=max(300.0, 0.5 * args.steps),
    )
    step, _, conserved, temperature, potential = run.properties.T
    half = len(step) // 2
    print(
        f"i-PI NVT with the student ({args.driver} driver): {int(step[-1])} steps of {args.timestep:g} fs of "
        f"{len(atoms)} atoms in {run.wall_s:.1f} s"
    )
    print(
        f"potential energy: {potential[0]:.4f} -> {potential[-1]:.4f} eV; mean temperature (second half): "
        f"{np.mean(temperature[half:]):.1f} K"
    )
    print(f"i-PI and the driver exited cleanly; outputs: {run.output}, {run.trajectory}")


if __name__ == "__main__":
    main()
