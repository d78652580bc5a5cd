"""``mlff-calc train``: train a student on a labelled HDF5 dataset (``torchrun`` for several processes)."""

from __future__ import annotations

import argparse
import os

from ._common import finite_float, refuse_file_as_directory

HELP = "train a PaiNN student on a labelled dataset -> RUN_DIR/student.pt (re-running into RUN_DIR resumes)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="DATA.h5", help="labelled dataset (mlff-calc label)")
    parser.add_argument("--out", required=True, metavar="RUN_DIR",
                        help="run directory: student.pt, last.pt, config.yaml, metrics.csv/json, "
                             "learning_curve.png")
    parser.add_argument("--config", default=None, metavar="CFG.yaml",
                        help="YAML with sections model, data, loss, optim, run (options below override it)")
    parser.add_argument("--max-time", type=finite_float, default=None, metavar="SECONDS",
                        help="training wall-clock budget (summed over resumptions); stops cleanly")
    parser.add_argument("--epochs", type=int, default=None, metavar="N", help="maximum epochs (default 200)")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--seed", type=int, default=None, metavar="S", help="training seed (default 0)")
    parser.add_argument("--resume", action="store_true",
                        help="require RUN_DIR/last.pt and continue it (a RUN_DIR with last.pt is always "
                             "continued)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in a RUN_DIR that holds a finished student.pt (or a last.pt); "
                             "without it such a student is never replaced")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")


def run(args: argparse.Namespace) -> int:
    refuse_file_as_directory(args.out)
    from ..training import load_config, train

    overrides = {"data.path": args.data, "run.out": args.out}
    options = (("run.max_time", args.max_time), ("run.epochs", args.epochs), ("run.device", args.device),
               ("run.seed", args.seed))
    for key, value in options:
        if value is not None:
            overrides[key] = value
    if args.quiet:
        overrides["run.quiet"] = True
    result = train(load_config(args.config, overrides), resume=args.resume, overwrite=args.overwrite)
    if args.quiet and int(os.environ.get("RANK", "0")) == 0:  # otherwise train() printed the errors already
        errors = result.test_metrics or result.val_metrics
        split = "test" if result.test_metrics else "validation"
        print(f"{result.checkpoint}: {split} force MAE {errors['force_mae_ev_per_ang']:.4f} eV/Å, energy MAE "
              f"{errors['energy_mae_ev_per_atom']:.5f} eV/atom ({result.epochs} epochs, {result.stop_reason})")
    return 0
