"""``mlff-calc compare``: a student against its teacher -> REPORT_DIR/report.md, metrics.json, figures."""

from __future__ import annotations

import argparse

from ._common import (add_teacher_arguments, default_of, finite_float, given, refuse_file_as_directory,
                      teacher_options)

HELP = "compare a student with its teacher: errors, speed, NVE stability, RDFs -> REPORT_DIR/report.md"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..evaluation import compare

    def default(name: str, unit: str = "") -> str:
        return f"default: {default_of(compare, name)}{unit}"

    parser.add_argument("--student", required=True, metavar="STUDENT.pt", help="student checkpoint")
    add_teacher_arguments(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", metavar="DATA.h5",
                        help="labelled dataset: its stored teacher labels are the reference "
                             "(no teacher calls)")
    source.add_argument("--structures", metavar="FILE",
                        help="any ASE-readable structure file: the teacher labels its frames now")
    parser.add_argument("--out", required=True, metavar="REPORT_DIR",
                        help="report directory: report.md, metrics.json, PNG figures, NVE trajectories")
    parser.add_argument("--max-frames", type=int, default=None, metavar="N",
                        help="evaluate at most N frames, evenly spaced over the input; 0 = all "
                             f"({default('max_frames')})")
    parser.add_argument("--nve-steps", type=int, default=None, metavar="N",
                        help=f"NVE steps for the stability check; 0 = no MD ({default('nve_steps')})")
    parser.add_argument("--timestep", type=finite_float, default=None, metavar="FS",
                        help=f"MD time step in fs ({default('timestep', ' fs')})")
    parser.add_argument("--temperature", type=finite_float, default=None, metavar="K",
                        help="initial velocities drawn at this temperature in K "
                             f"({default('temperature', ' K')})")
    parser.add_argument("--teacher-md", action="store_true",
                        help="run the same NVE with the teacher too and compare radial distributions")
    parser.add_argument("--md-structure", default=None, metavar="FILE",
                        help="first frame of FILE starts the NVE runs (default: the first evaluated frame)")
    parser.add_argument("--device", default=None,
                        help=f"student device: auto | cpu | cuda | cuda:N ({default('device')})")
    parser.add_argument("--gate", default=None, metavar="GATES.yaml",
                        help="acceptance bars (force_mae_ev_per_ang, force_cosine_mean, drift_mev_per_atom_ps, "
                             "md_stable, speed_ratio): exit 1 naming each missed bar; outcome in "
                             "REPORT_DIR/gates.json (default: no gates)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or summary")


def run(args: argparse.Namespace) -> int:
    refuse_file_as_directory(args.out)
    from ..evaluation import compare
    from ..evaluation import gates as G

    gates = G.load_gates(args.gate) if args.gate else None  # a bad gates file fails before any work
    m = compare(args.student, args.teacher, teacher_options=teacher_options(args), data=args.data,
                structures=args.structures, out=args.out, teacher_md=args.teacher_md,
                md_structure=args.md_structure, progress=not args.quiet,
                **given(args, max_frames="max_frames", nve_steps="nve_steps", timestep="timestep",
                        temperature="temperature", device="device"))
    if not args.quiet:
        e, s = m["errors"], m["speed"]
        print(f"{e['n_frames']} frames: force MAE {e['force_mae_ev_per_ang']:.4g} eV/Å, energy MAE "
              f"{1e3 * e['energy_mae_ev_per_atom']:.4g} meV/atom; student {s['student_ms_per_call']:.3g} ms, "
              f"teacher {s['teacher_ms_per_call']:.3g} ms per call ({s['speed_ratio']:.3g}x)")
        for name in ("student", "teacher"):
            r = m["nve"].get(name)
            if r:
                print(f"NVE {name}: " + (f"drift {r['drift_mev_per_atom_ps']:+.3g} meV/atom/ps, max |dE| "
                                         f"{r['max_deviation_mev_per_atom']:.3g} meV/atom" if r["ok"]
                                         else f"UNSTABLE ({r['error']})"))
        print(f"report: {args.out}/report.md")
    if gates is not None:
        from pathlib import Path

        from ..io import write_json

        outcome = G.check(gates, G.values_from_compare(m))
        write_json(Path(args.out) / "gates.json", outcome)
        if not args.quiet:
            print("\n".join(G.report_lines(outcome)))
        if not outcome["passed"]:
            raise G.GateFailed(outcome["failures"])
    return 0
