"""``mlff-calc sample``: diverse configurations around seed structures (teacher MD, rattles, strains)."""

from __future__ import annotations

import argparse
import sys
import time

from ._common import add_teacher_arguments, default_of, finite_float, given, teacher_options

HELP = "sample configurations around seed structures (teacher-driven MD, rattles, strains) -> extxyz"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..workflow.sampling import SamplingConfig

    def default(name: str, unit: str = "") -> str:
        value = default_of(SamplingConfig, name)
        value = " ".join(f"{v:g}" for v in value) if isinstance(value, tuple) else f"{value:g}"
        return f"default: {value}{unit}"

    add_teacher_arguments(parser)
    parser.add_argument("--structures", nargs="+", required=True, metavar="FILE",
                        help="seed structures, any ASE-readable files; every frame is a seed")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="output extended XYZ file (an existing file is refused unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out (never one of the --structures)")
    parser.add_argument("--temperatures", nargs="+", type=finite_float, default=None, metavar="K",
                        help="Langevin MD temperatures in K, one trajectory each "
                             f"({default('temperatures', ' K')})")
    parser.add_argument("--frames", type=int, default=None, metavar="N",
                        help="frames per seed structure, split over MD temperatures, rattle and strain "
                             f"({default('frames')})")
    parser.add_argument("--interval", type=int, default=None, metavar="STEPS",
                        help=f"MD steps between kept frames ({default('interval')})")
    parser.add_argument("--timestep", type=finite_float, default=None, metavar="FS",
                        help=f"MD time step in fs ({default('timestep', ' fs')})")
    parser.add_argument("--friction", type=finite_float, default=None, metavar="1/FS",
                        help=f"Langevin friction in 1/fs ({default('friction', ' 1/fs')})")
    parser.add_argument("--warmup", type=int, default=None, metavar="STEPS",
                        help="MD steps before the first kept frame, to reach the target temperature "
                             f"({default('warmup')})")
    parser.add_argument("--rattle", type=finite_float, default=None, metavar="STD",
                        help="Gaussian displacement std in Å for rattled frames; 0 disables them "
                             f"({default('rattle', ' Å')})")
    parser.add_argument("--strain", type=finite_float, default=None, metavar="MAX",
                        help="largest strain component for strained cells (fully periodic seeds only); "
                             f"0 disables them ({default('strain')})")
    parser.add_argument("--seed", type=int, default=None,
                        help=f"random seed; same seed, same frames ({default('seed')})")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..data.structures import write_extxyz
    from ..io import check_output
    from ..teachers import load_teacher
    from ..workflow.sampling import SamplingConfig, read_seed_files, sample_structures

    options = given(args, temperatures="temperatures", frames="frames", interval="interval",
                    timestep="timestep", friction="friction", warmup="warmup", rattle="rattle",
                    strain="strain", seed="seed")
    if "temperatures" in options:
        options["temperatures"] = tuple(options["temperatures"])
    config = SamplingConfig(**options)
    # Before anything is read or written: the output must not be an input, nor replace a file unasked.
    check_output(args.out, overwrite=args.overwrite, inputs=args.structures, what="output")
    seeds = read_seed_files(args.structures)  # read before loading a (slow) teacher: fail fast on bad input
    calc = load_teacher(args.teacher, **teacher_options(args))

    start = time.perf_counter()
    counts: dict[str, int] = {}
    total = sum(n for _, atoms in seeds for *_, n in config.plan(atoms))
    with tqdm(total=total, unit="frame", desc="sample", disable=args.quiet, file=sys.stderr) as bar:
        def on_frame(frame) -> None:
            counts[frame.info["mode"]] = counts.get(frame.info["mode"], 0) + 1
            bar.update(1)

        try:
            written = write_extxyz(args.out, sample_structures(seeds, calc, config, on_frame=on_frame))
        except BaseException as exc:
            for note in getattr(exc, "__notes__", []):  # where the frames made so far were kept
                print(f"mlff-calc sample: {note}", file=sys.stderr)
            raise
    if not args.quiet:
        elapsed = time.perf_counter() - start
        detail = ", ".join(f"{mode} {n}" for mode, n in counts.items())
        print(f"wrote {written} frames ({detail}) from {len(seeds)} seed structures to {args.out} "
              f"in {elapsed:.1f} s", file=sys.stderr)
        if written < total:
            print(f"{total - written} frames fewer than requested: MD trajectories stopped early "
                  "(see the warnings above)", file=sys.stderr)
    return 0
