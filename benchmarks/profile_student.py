"""Where a student call spends its time: phases of ``atoms.get_forces()`` and the kernel's own functions.

    python benchmarks/profile_student.py              # phases for ethanol (h64 with 3 and 2 blocks, h128) and water_81; writes RESULTS.md

*Phases* (one thread, MD-like calls: positions + 0.01 Å noise each call, skin list kept): wrappers time the
converter (validation, skin check, graph), ``model.inference`` and, inside it, the network itself
(``energies_and_gradients``: the whole-model kernel); the rest of ``get_forces`` is ASE's bookkeeping and
the calculator's results. Medians over the calls; the wrappers themselves add ~1 µs per phase.

Inside the kernel no finer profile is given: valgrind (callgrind) stops with SIGILL on the kernel's AVX-512
instructions, and ``perf`` is not available here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _results import machine_info, publish  # noqa: E402
from _systems import build  # noqa: E402

CASES = (("ethanol", 64, 3), ("ethanol", 64, 2), ("ethanol", 128, 3), ("water_81", 128, 3))  # (system, hidden, blocks)


def _atoms(name: str):
    if name == "ethanol":
        from ase.build import molecule

        return molecule("CH3CH2OH")
    return build(name)


def _calculator(hidden: int, blocks: int = 3):
    import torch

    from mlff_calc import StudentCalculator, StudentForceField

    torch.manual_seed(0)
    return StudentCalculator(StudentForceField(hidden_dim=hidden, num_interactions=blocks), device="cpu", dtype="float32", skin=1.0)


def _timed(fn, bucket: list):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        bucket.append(time.perf_counter() - t)
        return out

    return wrapper


def phases(name: str, hidden: int, calls: int, blocks: int = 3) -> dict:
    atoms = _atoms(name)
    calc = _calculator(hidden, blocks)
    times = {"graph": [], "inference": [], "network": [], "total": []}
    calc.converter = _timed(calc.converter, times["graph"])
    model = calc.model
    model.energies_and_gradients = _timed(model.energies_and_gradients, times["network"])
    model.inference = _timed(model.inference, times["inference"])
    atoms.calc = calc
    base = atoms.positions.copy()
    rng = np.random.default_rng(0)
    warm = 20
    for _ in range(warm + calls):
        atoms.positions = base + rng.normal(0.0, 0.01, base.shape)
        t = time.perf_counter()
        atoms.get_forces()
        times["total"].append(time.perf_counter() - t)
    med = {k: 1e3 * float(np.median(v[warm:])) for k, v in times.items()}
    return {
        "system": name, "atoms": len(atoms), "hidden": hidden, "blocks": blocks, "total_ms": med["total"],
        "network_ms": med["network"], "graph_ms": med["graph"],
        "inference_rest_ms": med["inference"] - med["network"],
        "ase_and_results_ms": med["total"] - med["inference"] - med["graph"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="timed calls per case (water_81: a tenth)")
    parser.add_argument("--write", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    rows = [phases(n, h, args.calls if n == "ethanol" else max(20, args.calls // 10), b) for n, h, b in CASES]
    info = machine_info([{"versions": {}}])
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## Where a student call spends its time (`profile_student.py`)",
        "",
        f"- Machine: {info['cpu']}, {info['cores']} cores; **1 thread**; float32; random weights; skin 1 Å",
        f"- Command: `python benchmarks/profile_student.py` ({date})",
        "- Phases of `atoms.get_forces()` (medians over MD-like calls): *network* = the whole-model kernel "
        "(forward + analytic gradient); *graph* = the converter (validation, skin check, graph); *inference "
        "rest* = virial/bookkeeping around the kernel; *ASE + results* = the rest of the call.",
        "",
        "| system | atoms | hidden | blocks | total ms | network ms | graph ms | inference rest ms | ASE + results ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['system']} | {r['atoms']} | {r['hidden']} | {r['blocks']} | {r['total_ms']:.3f} | {r['network_ms']:.3f} | "
                     f"{r['graph_ms']:.3f} | {r['inference_rest_ms']:.3f} | {r['ase_and_results_ms']:.3f} |")
    print(json.dumps(rows))
    publish("profile_student", "\n".join(lines) + "\n", args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
