"""``mlff-calc export``: the student as a metatomic model file (LAMMPS, i-PI, ASE, torch-sim, ...)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "export a trained student for other MD engines (metatomic: LAMMPS, i-PI, ASE, torch-sim)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="student.pt", help="student checkpoint (mlff-calc train)")
    parser.add_argument(
        "--format",
        choices=("metatomic",),
        default="metatomic",
        help="output format (default: metatomic, a TorchScript AtomisticModel)",
    )
    parser.add_argument("--out", required=True, metavar="OUT.pt", help="exported model file")
    parser.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float64",
        help="precision of the exported model (default: float64)",
    )
    parser.add_argument(
        "--devices",
        default="cuda,cpu",
        metavar="LIST",
        help="supported devices in order of preference (default: cuda,cpu)",
    )
    parser.add_argument("--name", default="", help="model name stored in the metadata")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT.pt if it exists")


def run(args: argparse.Namespace) -> int:
    from ..io import check_output

    model, out = Path(args.model), Path(args.out)
    if not model.is_file():
        raise FileNotFoundError(f"model file not found: {model}")
    check_output(out, overwrite=args.overwrite, inputs=[model], what="exported model")
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    if not devices or any(d not in ("cpu", "cuda", "mps") for d in devices):
        from ..errors import InputError

        raise InputError(f"--devices must list cpu, cuda or mps, comma-separated; got {args.devices!r}")

    from ..integrations.metatomic import export_metatomic, to_atomistic_model

    atomistic = to_atomistic_model(model, dtype=args.dtype, devices=devices, name=args.name)
    export_metatomic(atomistic, out)
    caps = atomistic.capabilities()
    print(f"exported {model} -> {out} (metatomic, {caps.dtype}, devices {devices})")
    print(
        f"atomic types {list(caps.atomic_types)}, interaction range {caps.interaction_range:g} Å, "
        f"energy in eV"
    )
    return 0
