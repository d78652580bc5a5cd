"""``mlff-calc md``: molecular dynamics with a trained student (``mlff_calc.md.run_md``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import default_of, finite_float, given

HELP = "run NVE / NVT / NPT molecular dynamics with a trained student (ASE integrators)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..md import run_md

    def default(name: str, unit: str = "") -> str:
        return f"default: {default_of(run_md, name)}{unit}"

    parser.add_argument("--model", required=True, metavar="student.pt",
                        help="student checkpoint (mlff-calc train)")
    parser.add_argument("--structure", required=True, metavar="FILE", action="append",
                        help="starting structure, any ASE-readable file (its last frame); repeat it to run "
                             "several structures as one torch-sim batch (nvt Langevin or nve)")
    parser.add_argument("--all-frames", action="store_true",
                        help="every frame of the --structure file(s), as one torch-sim batch")
    parser.add_argument("--ensemble", choices=("nve", "nvt", "npt"), default=None,
                        help="nve: velocity Verlet; nvt: Langevin or Nose-Hoover chain; npt: isotropic "
                             f"barostat, fully periodic cells only ({default('ensemble')})")
    parser.add_argument("--temperature", type=finite_float, default=None, metavar="K",
                        help="target temperature, and that of the initial velocities "
                             f"({default('temperature', ' K')})")
    parser.add_argument("--timestep", type=finite_float, default=None, metavar="FS",
                        help=f"time step in fs ({default('timestep', ' fs')})")
    parser.add_argument("--steps", type=int, default=None, metavar="N", help=f"MD steps ({default('steps')})")
    parser.add_argument("--traj", default=None, metavar="OUT.traj",
                        help="trajectory, a frame every --interval: OUT.traj is an ASE trajectory, "
                             "OUT.xyz or OUT.extxyz extended XYZ (other names are refused); an existing file "
                             "is refused unless --overwrite")
    parser.add_argument("--log", default=None, metavar="MD.log",
                        help="ASE MDLogger text log (time, energies, temperature), every --interval; an "
                             "existing file is refused unless --overwrite")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --traj / --log (never the --model or --structure)")
    parser.add_argument("--interval", type=int, default=None, metavar="N",
                        help=f"steps between trajectory frames and log lines ({default('interval')})")
    parser.add_argument("--seed", type=int, default=None,
                        help=f"seed of velocities and Langevin noise ({default('seed')})")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="student precision (default: float32)")
    parser.add_argument("--thermostat", choices=("langevin", "nose-hoover"), default=None,
                        help=f"NVT/NPT thermostat ({default('thermostat')})")
    parser.add_argument("--pressure", type=finite_float, default=None, metavar="BAR",
                        help=f"NPT external pressure in bar ({default('pressure', ' bar')})")
    parser.add_argument("--friction", type=finite_float, default=None, metavar="1/FS",
                        help=f"Langevin friction in 1/fs ({default('friction', ' 1/fs')})")
    parser.add_argument("--keep-velocities", action="store_true",
                        help="start from the momenta stored in FILE instead of Maxwell-Boltzmann ones "
                             "(refused when FILE has none)")
    parser.add_argument("--max-uncertainty", type=finite_float, default=None, metavar="EV_PER_ANG",
                        help="stop when the student's per-atom force uncertainty exceeds this (eV/Å), keeping "
                             "the trajectory so far (needs a calibrated student: mlff-calc calibrate)")
    parser.add_argument("--warn-uncertainty", type=finite_float, default=None, metavar="EV_PER_ANG",
                        help="count the steps whose force uncertainty exceeds this and warn once at the end "
                             f"({default('warn_uncertainty', ' eV/Å')}); a calibrated student's largest "
                             "uncertainty is always reported")
    parser.add_argument("--no-uncertainty", action="store_true",
                        help="do not watch the student's uncertainty (it costs ~10%% per step on small molecules)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..calculator import StudentCalculator
    from ..data.structures import read_structures
    from ..errors import InputError
    from ..io import check_output
    from ..md import TRAJECTORY_FORMATS, run_md
    from ..uncertainty import METADATA_KEY

    if len(args.structure) > 1 or args.all_frames:  # several structures: one batch, one model call per step
        from ..integrations.batched_md import run_cli

        if args.max_uncertainty is not None or args.warn_uncertainty is not None:
            raise InputError("--max-uncertainty / --warn-uncertainty work with one --structure (ASE MD), not "
                             "with batched runs")

        return run_cli(args)
    args.structure = args.structure[0]
    if args.no_uncertainty and args.max_uncertainty is not None:
        raise InputError("--no-uncertainty and --max-uncertainty contradict each other; drop one")
    model, structure = Path(args.model), Path(args.structure)
    if model.is_dir():
        raise InputError(f"model {model} is a directory; give the checkpoint file "
                         f"(e.g. {model / 'student.pt'})")
    if not model.is_file():
        raise FileNotFoundError(f"model file not found: {model}")
    if not structure.is_file() and not structure.is_dir():
        raise FileNotFoundError(f"structure file not found: {structure}")
    # Outputs before anything is read: never an input, never an existing file unless --overwrite.
    outputs = [(what, path) for what, path in (("trajectory", args.traj), ("log", args.log)) if path]
    for what, path in outputs:
        check_output(path, overwrite=args.overwrite, inputs=[model, structure], what=what)
    if args.traj and args.log and Path(args.traj).resolve() == Path(args.log).resolve():
        raise InputError(f"--traj and --log are the same file {args.traj}; give two names")
    if args.traj and Path(args.traj).suffix.lower() not in TRAJECTORY_FORMATS:
        raise InputError(f"--traj {args.traj}: the name must end in .traj (ASE trajectory) or .xyz/.extxyz "
                         "(extended XYZ)")
    try:  # read before loading the model: fail fast on bad input (no atoms, NaN positions, a bad cell)
        atoms = read_structures(structure)[-1]
    except InputError as exc:
        message = str(exc).replace("cannot read structures from", "cannot read structure")
        raise InputError(message) from None
    ensemble = args.ensemble or default_of(run_md, "ensemble")
    if ensemble == "npt" and not atoms.pbc.all():  # before the (slower) model load
        raise InputError(f"--ensemble npt needs a fully periodic cell; {structure} has "
                         f"pbc={atoms.pbc.tolist()} (use nvt or nve for molecules, slabs and wires)")
    if args.keep_velocities and (not atoms.has("momenta") or not atoms.get_momenta().any()):
        raise InputError(f"--keep-velocities: {structure} stores no velocities (momenta); drop the flag to "
                         "draw Maxwell-Boltzmann velocities, or give a file with them (.traj, extxyz)")
    calc = StudentCalculator.from_checkpoint(model, device=args.device, dtype=args.dtype,
                                             uncertainty=args.max_uncertainty is not None)
    if calc.uncertainty is None and METADATA_KEY in calc.model.metadata and not args.no_uncertainty:
        calc = StudentCalculator(calc.model, device=args.device, dtype=args.dtype, uncertainty=True)
    options = given(args, ensemble="ensemble", temperature="temperature", timestep="timestep", steps="steps",
                    interval="interval", seed="seed", friction="friction", thermostat="thermostat",
                    pressure="pressure", max_uncertainty="max_uncertainty", warn_uncertainty="warn_uncertainty")
    result = run_md(atoms, calc, traj=args.traj, log=args.log, progress=not args.quiet,
                    init_velocities=not args.keep_velocities, **options)
    print(result.summary())
    for what, path in outputs:
        print(f"{what}: {path}")
    return 0
