"""``mlff-calc dataset``: inspect, convert and merge HDF5 datasets."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any

import numpy as np

HELP = "inspect (info), convert (to-xyz, from-xyz) and merge (shards) HDF5 datasets"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("info", help="counts, elements, sizes, label statistics, teacher, failures")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    overwrite = "replace an existing OUT (never one of the inputs)"
    p = sub.add_parser("to-xyz", help="write every structure with its labels as extended XYZ")
    p.add_argument("file")
    p.add_argument("out")
    p.add_argument("--overwrite", action="store_true", help=overwrite)
    p = sub.add_parser("from-xyz", help="your own labelled frames (energy, forces, optional stress) -> HDF5")
    p.add_argument("file")
    p.add_argument("out")
    p.add_argument("--overwrite", action="store_true", help=overwrite)
    p = sub.add_parser("merge", help="join shard files of one `mlff-calc label` job, in input order")
    p.add_argument("out")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--overwrite", action="store_true", help=overwrite)
    for p in sub.choices.values():  # --debug after the action too
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def summarize(path) -> dict[str, Any]:
    """Counts and label statistics of a dataset file (units: eV, Å, eV/Å, eV/Å³)."""
    from ase.data import chemical_symbols

    from ..data.hdf5 import DatasetReader, pending_frames

    with DatasetReader(path) as r:
        a = r.arrays() if len(r) else {}
        out: dict[str, Any] = {
            "file": str(path),
            "format_version": r.header["format_version"],
            "teacher": r.teacher,
            "input": (r.provenance or {}).get("input"),
            "created": (r.provenance or {}).get("created"),
            "structures": len(r),
            "atoms": int(r.n_atoms.sum()),
            "failures": len(r.failed_index),
            "failure_reasons": dict(Counter(r.failed_reason).most_common()),
            "hvp_frames": int((r.n_probes > 0).sum()),
            "hvp_probes": len(r.hvp_structure),
            "hvp_settings": ((r.provenance or {}).get("input") or {}).get("hvp"),
        }
    out["pending_frames"], out["pending_failures"] = pending_frames(path)
    if not a:
        return out
    n = a["structures/n_atoms"]
    z, count = np.unique(a["structures/atomic_numbers"], return_counts=True)
    e_per_atom = a["labels/energy"] / n
    f = a["labels/forces"]
    stress = a["labels/stress"]
    has_stress = np.isfinite(stress).all(axis=(1, 2))
    out.update(
        {
            "n_atoms_min": int(n.min()),
            "n_atoms_max": int(n.max()),
            "elements": {chemical_symbols[int(k)]: int(c) for k, c in zip(z, count)},
            "energy_per_atom_mean": float(e_per_atom.mean()),
            "energy_per_atom_std": float(e_per_atom.std()),
            "force_rms": float(np.sqrt(np.mean(f**2))),
            "force_max": float(np.linalg.norm(f, axis=1).max()),
            "with_stress": int(has_stress.sum()),
            "stress_rms": float(np.sqrt(np.mean(stress[has_stress] ** 2))) if has_stress.any() else None,
        }
    )
    if out["hvp_probes"]:
        out["hvp_rms"] = float(np.sqrt(np.mean(a["labels/hvp"] ** 2)))
        out["hvp_epsilon"] = sorted(set(np.round(a["labels/hvp_epsilon"], 12).tolist()))
    return out


def _print_info(s: dict[str, Any]) -> None:
    teacher = s["teacher"] or {}
    options = ", ".join(f"{k}={v}" for k, v in (teacher.get("options") or {}).items())
    rows = [("file", s["file"]), ("teacher", f"{teacher.get('name')}" + (f" ({options})" if options else ""))]
    src = s.get("input") or {}
    if src:
        shard = (
            f", shard {'/'.join(map(str, src['shard']))}" if src.get("shard") and src["shard"][1] > 1 else ""
        )
        rows.append(
            (
                "input",
                f"{src.get('path')} ({src.get('n_frames')} frames{shard}, "
                f"sha256 {str(src.get('sha256'))[:12]})",
            )
        )
    rows.append(
        (
            "structures",
            f"{s['structures']} ({s['atoms']} atoms"
            + (f", {s['n_atoms_min']}..{s['n_atoms_max']} per structure)" if s["structures"] else ")"),
        )
    )
    if s["structures"]:
        rows += [
            ("elements", ", ".join(f"{el} {c}" for el, c in s["elements"].items()) + "  (atoms)"),
            (
                "energy/atom",
                f"mean {s['energy_per_atom_mean']:.6g} eV, std {s['energy_per_atom_std']:.4g} eV",
            ),
            ("forces", f"RMS component {s['force_rms']:.4g} eV/Å, max |F| {s['force_max']:.4g} eV/Å"),
            (
                "stress",
                f"{s['with_stress']} of {s['structures']} structures"
                + (f", RMS component {s['stress_rms']:.4g} eV/Å³" if s["with_stress"] else ""),
            ),
        ]
        if s["hvp_probes"]:
            rows.append(("curvature", f"{s['hvp_probes']} Hessian-vector products on {s['hvp_frames']} "
                         f"structures, RMS component {s['hvp_rms']:.4g} eV/Å², epsilon "
                         f"{', '.join(f'{e:g}' for e in s['hvp_epsilon'])} Å"))
        else:
            rows.append(("curvature", "none (label with --hvp-fraction to add Hessian-vector products)"))
    rows.append(("failures", str(s["failures"])))
    for reason, count in list(s["failure_reasons"].items())[:5]:
        rows.append(("", f"{count} x {reason}"))
    if s["pending_frames"] or s["pending_failures"]:
        rows.append(
            (
                "pending",
                f"{s['pending_frames']} frames, {s['pending_failures']} failures committed by a "
                "killed run, not yet in the file: re-run its `mlff-calc label` command",
            )
        )
    for key, value in rows:
        print(f"{key:<12} {value}")


def run(args: argparse.Namespace) -> int:
    from ..data import convert

    if args.action == "info":
        s = summarize(args.file)
        print(json.dumps(s, indent=2)) if args.json else _print_info(s)
    elif args.action == "to-xyz":
        print(f"wrote {convert.to_extxyz(args.file, args.out, args.overwrite)} structures to {args.out}")
    elif args.action == "from-xyz":
        print(f"wrote {convert.from_extxyz(args.file, args.out, args.overwrite)} structures to {args.out}")
    elif args.action == "merge":
        n, warnings = convert.merge_datasets(args.out, args.inputs, overwrite=args.overwrite)
        for w in warnings:
            print(f"warning: {w}")
        print(f"merged {len(args.inputs)} files, {n} structures, into {args.out}")
    return 0
