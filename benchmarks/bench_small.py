"""Per-call cost on small molecules: the student against its teachers and against an earlier version.

    python benchmarks/bench_small.py                                   # writes the bench_small section
    python benchmarks/bench_small.py --baseline-src ../old-checkout    # adds the student of another checkout
    python benchmarks/bench_small.py --rounds 1 --seconds 1 --no-write # quick look

What is timed (one thread, CPU, float32, `StudentCalculator(skin=1.0)`, random weights — speed does not
depend on them):
- **per call**: ethanol (9 atoms); before every call the positions are the equilibrium ones plus fresh
  Gaussian noise of 0.01 Å (as in MD: a real recomputation each call, the skin list is kept); then
  ``atoms.get_forces()`` (energy and forces) is timed. Students with 64 and 128 features (the default),
  3 blocks, and the quickstart's (64 features, 2 blocks), 5 Å; GFN2-xTB (tblite) on the same inputs.
- **batch**: 64 different ethanol geometries; one ``batch_calculate`` against 64 one-by-one calls on one
  calculator, atoms·calls/s of each (``bench_calc_overhead.batch_ratio``).
- **overhead**: the whole ASE round trip of ``calculate`` with the model call replaced by a stub
  (``bench_calc_overhead.overhead``): base class, validation, skin check, graph, results.

Each contender runs in its own process (``--baseline-src`` puts another checkout's ``mlff_calc`` first on
the path for its rows), and the contenders take turns round by round, so a load spike on the shared
machine hits all of them; the table gives the median over rounds of each round's median.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _harness import emit, fmt_s, run_one  # noqa: E402
from _results import machine_info, publish, versions  # noqa: E402


# ==== worker ===========================================================================================
def _ethanol():
    from ase.build import molecule

    return molecule("CH3CH2OH")


def _student(hidden: int, blocks: int = 3):
    import torch

    from mlff_calc import StudentCalculator, StudentForceField

    torch.manual_seed(0)
    model = StudentForceField(hidden_dim=hidden, num_interactions=blocks)
    return StudentCalculator(model, device="cpu", dtype="float32", skin=1.0)


def _calculator(opts: dict):
    if opts["model"] == "gfn2-xtb":
        from mlff_calc import load_teacher

        return load_teacher("gfn2-xtb")
    return _student(opts["hidden"], opts.get("blocks", 3))


def _per_call(opts: dict) -> dict:
    atoms = _ethanol()
    base = atoms.positions.copy()
    atoms.calc = _calculator(opts)
    rng = np.random.default_rng(0)
    times = []
    deadline = None
    for i in range(opts["warmup"] + opts["max_calls"]):
        atoms.positions = base + rng.normal(0.0, 0.01, base.shape)
        t0 = time.perf_counter()
        atoms.get_forces()
        dt = time.perf_counter() - t0
        if i >= opts["warmup"]:
            deadline = deadline or time.perf_counter() + opts["seconds"]
            times.append(dt)
            if time.perf_counter() > deadline and len(times) >= 5:
                break
    return {"median_ms": 1e3 * float(np.median(times)), "min_ms": 1e3 * float(np.min(times)), "calls": len(times)}


def _batch(opts: dict) -> dict:
    from bench_calc_overhead import batch_ratio  # 64 ethanols (one calculator) vs one batch_calculate

    b = batch_ratio("float32", n=opts["replicas"], repeats=opts["rounds_inner"])
    return {"one_by_one_atoms_calls_per_s": b["one_by_one_atoms_per_s"],
            "batch_atoms_calls_per_s": b["batch_atoms_per_s"], "one_by_one_ms": b["one_by_one_ms"],
            "batch_ms": b["batch_ms"]}


def _overhead(opts: dict) -> dict:
    from bench_calc_overhead import overhead  # the ASE round trip with the model call stubbed out

    o = overhead("float32", opts["overhead_repeats"])
    return {"overhead_ms": o["overhead_ms"], "model_ms": o["model_ms"], "total_ms": o["total_ms"]}


def run_worker(opts: dict) -> None:
    import torch

    torch.set_num_threads(1)
    import mlff_calc

    emit(event="info", versions=versions(), threads=1, src=str(Path(mlff_calc.__file__).parent.parent))
    result = {"batch": _batch, "overhead": _overhead, "call": _per_call}[opts["mode"]](opts)
    emit(event="result", median_ms=result.get("median_ms", 0.0), **{k: v for k, v in result.items() if k != "median_ms"})


# ==== parent ===========================================================================================
def contenders(baseline_src: str | None) -> list[dict]:
    rows = []
    for src, label in ((str(ROOT), "student"), (baseline_src, "student (baseline)")):
        if src is None:
            continue
        for hidden in (64, 128):
            rows.append({"label": f"{label}, hidden {hidden}", "model": "student", "hidden": hidden, "src": src,
                         "mode": "call"})
        if src == str(ROOT):  # the quickstart's student (recipes/quick.yaml): 64 features, 2 blocks
            rows.append({"label": f"{label}, hidden 64, 2 blocks (quick preset)", "model": "student", "hidden": 64,
                         "blocks": 2, "src": src, "mode": "call"})
    rows.append({"label": "GFN2-xTB (tblite)", "model": "gfn2-xtb", "hidden": None, "src": str(ROOT), "mode": "call"})
    for src, label in ((str(ROOT), "student"), (baseline_src, "student (baseline)")):
        if src is not None:
            rows.append({"label": f"{label}, hidden 128, 64 ethanols", "model": "student", "hidden": 128,
                         "src": src, "mode": "batch"})
            rows.append({"label": f"{label}, hidden 128, model stubbed", "model": "student", "hidden": 128,
                         "src": src, "mode": "overhead"})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-src", help="a checkout whose mlff_calc is timed as the baseline")
    parser.add_argument("--baseline-label", default=None, help="how to name the baseline (e.g. a commit)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per contender and round")
    parser.add_argument("--write", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(json.loads(args.worker))
        return 0

    command = "python benchmarks/bench_small.py" + "".join(
        f" {shlex.quote(a)}" for a in (argv if argv is not None else sys.argv[1:]))
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    started = time.monotonic()
    rows = contenders(args.baseline_src)
    records: dict[str, list[dict]] = {r["label"]: [] for r in rows}
    for rnd in range(args.rounds):
        for row in rows:
            opts = dict(row, threads=1, warmup=20, max_calls=20000, seconds=args.seconds, replicas=64, rounds_inner=5,
                        overhead_repeats=2000)
            rec = run_one(__file__, opts, timeout_s=600, max_mem_gib=8, src=row["src"])
            if "skipped" in rec:
                print(f"[round {rnd + 1}] {row['label']}: {rec['skipped']}", flush=True)
                continue
            records[row["label"]].append(rec)
            what = {"call": lambda: f"{rec['median_ms']:.3f} ms/call",
                    "batch": lambda: f"batch {rec['batch_ms']:.1f} ms vs one-by-one {rec['one_by_one_ms']:.1f} ms",
                    "overhead": lambda: f"overhead {rec['overhead_ms']:.4f} ms (model {rec['model_ms']:.3f} ms)"}
            what = what[row["mode"]]()
            print(f"[round {rnd + 1}] {row['label']}: {what}", flush=True)

    info = machine_info([r for recs in records.values() for r in recs])
    med = lambda recs, key: statistics.median(r[key] for r in recs) if recs else float("nan")  # noqa: E731
    xtb = med(records["GFN2-xTB (tblite)"], "median_ms")
    lines = [
        "## Small molecules: per-call cost (`bench_small.py`)",
        "",
        f"- Machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']:.0f} GiB RAM; CPU, **1 thread**",
        f"- Software: torch {info['versions'].get('torch')}, mlff_calc {info['versions'].get('mlff_calc')}, "
        f"ase {info['versions'].get('ase')}, Python {info['python']}",
        f"- Command: `{command}` ({date}, {fmt_s(time.monotonic() - started)})"
        + (f"; baseline = {args.baseline_label or args.baseline_src}" if args.baseline_src else ""),
        "- Ethanol (9 atoms, 72 edges), positions + 0.01 Å noise before every call, `atoms.get_forces()` timed; "
        "students with random weights, float32, skin 1 Å. Median over rounds of each round's median "
        f"({args.rounds} rounds, contenders interleaved).",
        "",
        "| contender | ms per energy+forces call | min ms | GFN2-xTB / contender |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        recs = records[row["label"]]
        if row["mode"] != "call":
            continue
        m = med(recs, "median_ms")
        lo = min((r["min_ms"] for r in recs), default=float("nan"))
        lines.append(f"| {row['label']} | {m:.3f} | {lo:.3f} | {xtb / m:.2f}x |")
    lines += ["", "| batch of 64 ethanols | one-by-one atoms·calls/s | `batch_calculate` atoms·calls/s | ratio |",
              "|---|---:|---:|---:|"]
    for row in rows:
        recs = records[row["label"]]
        if row["mode"] != "batch" or not recs:
            continue
        one, bat = med(recs, "one_by_one_atoms_calls_per_s"), med(recs, "batch_atoms_calls_per_s")
        lines.append(f"| {row['label']} | {one:,.0f} | {bat:,.0f} | **{bat / one:.1f}x** |")
    lines += ["", "| Python overhead of `calculate` (ethanol, model call stubbed, thread CPU time) | overhead ms | "
              "model call alone ms | whole `get_forces` ms |", "|---|---:|---:|---:|"]
    for row in rows:
        recs = records[row["label"]]
        if row["mode"] == "overhead" and recs:
            lines.append(f"| {row['label']} | **{med(recs, 'overhead_ms'):.4f}** | {med(recs, 'model_ms'):.3f} | "
                         f"{med(recs, 'total_ms'):.3f} |")
    publish("bench_small", "\n".join(lines) + "\n", args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
