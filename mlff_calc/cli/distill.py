"""``mlff-calc distill``: seeds + teacher -> a sampled, labelled, trained, evaluated, MD-checked student.

A thin shell over :func:`mlff_calc.pipeline.distill`; re-running the same command resumes.
"""

from __future__ import annotations

import argparse

from ._common import add_teacher_arguments, finite_float, refuse_file_as_directory, teacher_options

HELP = ("sample -> label -> train -> evaluate -> MD-check a student in one resumable command "
        "(re-running skips finished stages)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_teacher_arguments(parser)
    parser.add_argument("--structures", nargs="+", required=True, metavar="FILE",
                        help="seed structures, any ASE-readable files; every frame is a seed")
    parser.add_argument("--out", required=True, metavar="RUN_DIR",
                        help="run directory: student.pt, report/, state.json, recipe.yaml, summary.json, "
                             "...; an existing one is resumed")
    parser.add_argument("--preset", choices=("quick", "standard"), default=None,
                        help="recipe preset (default: RUN_DIR/recipe.yaml of an earlier run, else standard)")
    parser.add_argument("--recipe", default=None, metavar="RECIPE.yaml",
                        help="YAML merged over the preset key by key: sampling, heldout, labelling, training "
                             "(model/data/loss/optim/run), evaluation, md; unknown keys are refused")
    parser.add_argument("--max-time", type=finite_float, default=None, metavar="SECONDS",
                        help="training budget (= training.run.max_time); raising it later continues training")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or stage lines; summary only")


def run(args: argparse.Namespace) -> int:
    refuse_file_as_directory(args.out)
    from ..pipeline import distill, print_summary

    result = distill(args.teacher, args.structures, args.out, teacher_options=teacher_options(args),
                     preset=args.preset, recipe=args.recipe, max_time=args.max_time, device=args.device,
                     quiet=args.quiet)
    print_summary(result)
    gates = result.summary.get("gates")
    if gates and not gates["passed"]:  # the summary above shows every bar; the error names the missed ones
        from ..evaluation.gates import GateFailed

        raise GateFailed(gates["failures"], where=f"{args.out}: ")
    return 0
