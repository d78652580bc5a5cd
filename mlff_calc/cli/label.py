"""``mlff-calc label``: label a structure file with a teacher into an HDF5 dataset; re-running resumes."""

from __future__ import annotations

import argparse
from collections import Counter

from ._common import add_teacher_arguments, default_of, finite_float, given, teacher_options

HELP = "label structures with a teacher into an HDF5 dataset (re-running the same command resumes)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..workflow.labelling import label_file

    def default(name: str) -> str:
        return f"default: {default_of(label_file, name)}"

    add_teacher_arguments(parser)
    parser.add_argument(
        "--structures", required=True, metavar="FILE", help="any ASE-readable file; all frames"
    )
    parser.add_argument("--out", required=True, metavar="DATA.h5",
                        help="dataset file: created, or resumed when it holds this job's labels (the same "
                             "teacher, input and shard); any other existing file is refused, never replaced")
    parser.add_argument("--batch-size", type=int, default=None, metavar="K",
                        help=f"commit after at most K frames ({default('batch_size')}) ...")
    parser.add_argument("--commit-interval", type=finite_float, default=None, metavar="SECONDS",
                        help="... or after this many seconds, whichever comes first "
                             f"({default('commit_interval')})")
    parser.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="label only frames with index %% N == I (join shards with `mlff-calc dataset merge`)",
    )
    parser.add_argument(
        "--retry-failures",
        action="store_true",
        help="try again the frames the teacher failed on in an earlier run",
    )
    parser.add_argument("--hvp-fraction", type=finite_float, default=None, metavar="F",
                        help="also label this fraction of the frames (a fixed, seeded choice) with "
                             "curvature: "
                             "Hessian-vector products by central differences of forces, 2 teacher calls per "
                             f"probe ({default('hvp_fraction')}: off)")
    parser.add_argument("--hvp-probes", type=int, default=None, metavar="K",
                        help="random orthonormal probe directions per chosen frame "
                             f"({default('hvp_probes')})")
    parser.add_argument("--hvp-epsilon", type=finite_float, default=None, metavar="ANGSTROM",
                        help="central-difference step (default: 0.01 Å, chosen from a measured scan)")
    parser.add_argument("--compact-interval", type=finite_float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..workflow.labelling import label_file

    report = label_file(
        args.structures,
        args.out,
        args.teacher,
        teacher_options(args),
        shard=args.shard,
        retry_failures=args.retry_failures,
        progress=not args.quiet,
        **given(args, batch_size="batch_size", commit_interval="commit_interval",
                compact_interval="compact_interval", hvp_fraction="hvp_fraction", hvp_probes="hvp_probes",
                hvp_epsilon="hvp_epsilon"),
    )
    shard = f" of shard {args.shard}" if args.shard else ""
    tried = report.labelled_now + len(report.failed_now)
    rate = f"{tried / report.seconds:.2f} frames/s" if report.seconds > 0 else ""
    detail = (
        f"{report.labelled_before} before; {report.seconds:.1f} s, {rate}" if tried else "nothing left to do"
    )
    done = f"{report.done}/{report.shard_frames} frames{shard} labelled"
    print(f"{args.out}: {done} ({report.labelled_now} now, {detail})")
    if report.hvp_frames_now or report.hvp_failed_now:
        failed = f"; {report.hvp_failed_now} kept without (teacher failed)" if report.hvp_failed_now else ""
        print(f"curvature labels on {report.hvp_frames_now} frames now{failed}; "
              f"{report.teacher_calls} teacher calls in this run")
    if report.failed_total:
        print(
            f"{len(report.failed_total)} frames failed and were skipped "
            f"({len(report.failed_now)} in this run; re-run with --retry-failures to try them again):"
        )
        for reason, count in Counter(report.failed_total.values()).most_common(5):
            frames = sorted(i for i, r in report.failed_total.items() if r == reason)
            shown = ", ".join(map(str, frames[:8])) + (", ..." if len(frames) > 8 else "")
            print(f"  {count} x {reason}  (frames {shown})")
    return 0
