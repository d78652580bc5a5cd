"""``mlff-calc sample``: diverse configurations around seed structures (teacher MD, rattles, strains)."""

from __future__ import annotations

import argparse
import sys
import time

from ._common import add_teacher_arguments, teacher_options

HELP = "sample configurations around seed structures (teacher-driven MD, rattles, strains) -> extxyz"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_teacher_arguments(parser)
    parser.add_argument("--structures", nargs="+", required=True, metavar="FILE",
                        help="seed structures, any ASE-readable files; every frame is a seed")
    parser.add_argument("--out", required=True, metavar="FILE", help="output extended XYZ file")
    parser.add_argument("--temperatures", nargs="+", type=float, default=[300.0], metavar="K",
                        help="Langevin MD temperatures in K, one trajectory each (default: 300)")
    parser.add_argument("--frames", type=int, default=100, metavar="N",
                        help="frames per seed structure, split over MD temperatures, rattle and strain "
                             "(default: 100)")
    parser.add_argument("--interval", type=int, default=10, metavar="STEPS",
                        help="MD steps between kept frames (default: 10)")
    parser.add_argument("--timestep", type=float, default=1.0, metavar="FS",
                        help="MD time step in fs (default: 1)")
    parser.add_argument("--friction", type=float, default=0.01, metavar="1/FS",
                        help="Langevin friction in 1/fs (default: 0.01)")
    parser.add_argument("--warmup", type=int, default=0, metavar="STEPS",
                        help="MD steps before the first kept frame, to reach the target temperature "
                             "(default: 0)")
    parser.add_argument("--rattle", type=float, default=0.05, metavar="STD",
                        help="Gaussian displacement std in Å for rattled frames; 0 disables them "
                             "(default: 0.05)")
    parser.add_argument("--strain", type=float, default=0.02, metavar="MAX",
                        help="largest strain component for strained cells (fully periodic seeds only); "
                             "0 disables them (default: 0.02)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed; same seed, same frames (default: 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..data.sampling import SamplingConfig, read_structures, sample_structures, write_frames
    from ..teachers import load_teacher

    config = SamplingConfig(
        temperatures=tuple(args.temperatures), frames=args.frames, interval=args.interval,
        timestep=args.timestep, friction=args.friction, warmup=args.warmup,
        rattle=args.rattle, strain=args.strain, seed=args.seed,
    )
    seeds = read_structures(args.structures)  # read before loading a (slow) teacher: fail fast on bad input
    calc = load_teacher(args.teacher, **teacher_options(args))

    start = time.perf_counter()
    counts: dict[str, int] = {}
    total = sum(n for _, atoms in seeds for *_, n in config.plan(atoms))
    with tqdm(total=total, unit="frame", desc="sample", disable=args.quiet, file=sys.stderr) as bar:
        def on_frame(frame) -> None:
            counts[frame.info["mode"]] = counts.get(frame.info["mode"], 0) + 1
            bar.update(1)

        try:
            written = write_frames(args.out, sample_structures(seeds, calc, config, on_frame=on_frame))
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
