"""``mlff-calc calibrate``: add an uncertainty calibration to an existing student checkpoint."""

from __future__ import annotations

import argparse

HELP = "add an uncertainty calibration to a student checkpoint (students trained now already have one)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="student.pt", help="student checkpoint")
    parser.add_argument("--data", required=True, metavar="DATA.h5",
                        help="labelled frames: its training frames give the feature covariance (the training "
                             "file itself is best)")
    parser.add_argument("--calibration-data", default=None, metavar="HELD.h5",
                        help="held-out labelled frames for the scales (default: the training run's validation "
                             "split of --data, or 20%% of it)")
    parser.add_argument("--out", default=None, metavar="OUT.pt", help="calibrated checkpoint (a new file)")
    parser.add_argument("--in-place", action="store_true", help="replace --model itself (atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT.pt if it exists")


def run(args: argparse.Namespace) -> int:
    from ..training.calibrate import calibrate_checkpoint

    cal = calibrate_checkpoint(args.model, args.data, args.out, args.calibration_data, in_place=args.in_place,
                               overwrite=args.overwrite)
    info = cal.info
    print(f"calibrated {args.out or args.model}: covariance over {info['fit_frames']} frames "
          f"({info['fit_atoms']} atoms), scales over {info['calibration_frames']} held-out frames "
          f"(their force RMSE {info['calibration_force_rmse_ev_per_ang']:.4f} eV/Å)")
    return 0
