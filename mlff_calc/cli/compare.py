"""``mlff-calc compare``: a student against its teacher -> REPORT_DIR/report.md, metrics.json, figures."""

from __future__ import annotations

import argparse

from ._common import add_teacher_arguments, teacher_options

HELP = "compare a student with its teacher: errors, speed, NVE stability, RDFs -> REPORT_DIR/report.md"


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--max-frames", type=int, default=200, metavar="N",
                        help="evaluate at most N frames, evenly spaced over the input; 0 = all (default 200)")
    parser.add_argument("--nve-steps", type=int, default=2000, metavar="N",
                        help="NVE steps for the stability check; 0 = no MD (default 2000)")
    parser.add_argument("--timestep", type=float, default=0.5, metavar="FS",
                        help="MD time step in fs (default 0.5)")
    parser.add_argument("--temperature", type=float, default=300.0, metavar="K",
                        help="initial velocities drawn at this temperature in K (default 300)")
    parser.add_argument("--teacher-md", action="store_true",
                        help="run the same NVE with the teacher too and compare radial distributions")
    parser.add_argument("--md-structure", default=None, metavar="FILE",
                        help="first frame of FILE starts the NVE runs (default: the first evaluated frame)")
    parser.add_argument("--device", default="auto",
                        help="student device: auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or summary")


def run(args: argparse.Namespace) -> int:
    from ..evaluation import compare

    m = compare(args.student, args.teacher, teacher_options=teacher_options(args), data=args.data,
                structures=args.structures, out=args.out, max_frames=args.max_frames,
                nve_steps=args.nve_steps, timestep=args.timestep, temperature=args.temperature,
                teacher_md=args.teacher_md, md_structure=args.md_structure, device=args.device,
                progress=not args.quiet)
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
    return 0
