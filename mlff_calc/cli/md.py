"""``mlff-calc md``: molecular dynamics with a trained student (``mlff_calc.md.run_md``)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "run NVE / NVT / NPT molecular dynamics with a trained student (ASE integrators)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="student.pt",
                        help="student checkpoint (mlff-calc train)")
    parser.add_argument("--structure", required=True, metavar="FILE", action="append",
                        help="starting structure, any ASE-readable file (its last frame); repeat it to run "
                             "several structures as one torch-sim batch (nvt Langevin or nve)")
    parser.add_argument("--all-frames", action="store_true",
                        help="every frame of the --structure file(s), as one torch-sim batch")
    parser.add_argument("--ensemble", choices=("nve", "nvt", "npt"), default="nvt",
                        help="nve: velocity Verlet; nvt: Langevin or Nose-Hoover chain; npt: isotropic "
                             "barostat, fully periodic cells only (default: nvt)")
    parser.add_argument("--temperature", type=float, default=300.0, metavar="K",
                        help="target temperature, and that of the initial velocities (default: 300)")
    parser.add_argument("--timestep", type=float, default=0.5, metavar="FS",
                        help="time step in fs (default: 0.5)")
    parser.add_argument("--steps", type=int, default=1000, metavar="N", help="MD steps (default: 1000)")
    parser.add_argument("--traj", default=None, metavar="OUT.traj",
                        help="ASE trajectory, a frame every --interval")
    parser.add_argument("--log", default=None, metavar="MD.log",
                        help="ASE MDLogger text log (time, energies, temperature), every --interval")
    parser.add_argument("--interval", type=int, default=10, metavar="N",
                        help="steps between trajectory frames and log lines (default: 10)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of velocities and Langevin noise (default: 0)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="student precision (default: float32)")
    parser.add_argument("--thermostat", choices=("langevin", "nose-hoover"), default="langevin",
                        help="NVT/NPT thermostat (default: langevin)")
    parser.add_argument("--pressure", type=float, default=1.01325, metavar="BAR",
                        help="NPT external pressure in bar (default: 1.01325)")
    parser.add_argument("--friction", type=float, default=0.01, metavar="1/FS",
                        help="Langevin friction in 1/fs (default: 0.01)")
    parser.add_argument("--keep-velocities", action="store_true",
                        help="start from the momenta stored in FILE instead of Maxwell-Boltzmann ones")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ase.io import read

    from ..calculator import StudentCalculator
    from ..md import run_md

    if len(args.structure) > 1 or args.all_frames:  # several structures: one batch, one model call per step
        from ..integrations.batched_md import run_cli

        return run_cli(args)
    args.structure = args.structure[0]
    model, structure = Path(args.model), Path(args.structure)
    for what, path in (("model", model), ("structure", structure)):
        if not path.is_file():
            raise FileNotFoundError(f"{what} file not found: {path}")
    try:  # read before loading the model: fail fast on bad input
        atoms = read(structure)
    except Exception as exc:  # ASE raises many types for unreadable files; one clear line for all
        raise ValueError(f"cannot read structure {structure}: {type(exc).__name__}: {exc}") from exc
    if args.ensemble == "npt" and not atoms.pbc.all():  # before the (slower) model load
        raise ValueError(f"--ensemble npt needs a fully periodic cell; {structure} has "
                         f"pbc={atoms.pbc.tolist()} (use nvt or nve for molecules, slabs and wires)")
    calc = StudentCalculator.from_checkpoint(model, device=args.device, dtype=args.dtype)
    result = run_md(atoms, calc, ensemble=args.ensemble, temperature=args.temperature, timestep=args.timestep,
                    steps=args.steps, traj=args.traj, log=args.log, interval=args.interval, seed=args.seed,
                    friction=args.friction, thermostat=args.thermostat, pressure=args.pressure,
                    progress=not args.quiet, init_velocities=not args.keep_velocities)
    print(result.summary())
    for what, path in (("trajectory", args.traj), ("log", args.log)):
        if path:
            print(f"{what}: {path}")
    return 0
