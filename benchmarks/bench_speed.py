"""Speed of the student (``StudentCalculator``) next to Orb-v2, energy + forces per MD-like step.

    python benchmarks/bench_speed.py                      # full default set (~15 min on 2 CPU cores)
    python benchmarks/bench_speed.py --quick              # small systems only (~2 min)
    python benchmarks/bench_speed.py --systems water_81,si_64 --models student
    python benchmarks/bench_speed.py --sizes small,medium --device cuda
    python benchmarks/bench_speed.py --orb-sweep          # Orb-v2 precision x compile settings on water_81

Every (system, model) pair runs in its own subprocess, so peak RSS is that model's alone, global
torch state set by one model (Orb sets the default dtype and matmul precision) cannot reach the other,
and a run over its time or memory budget is killed and reported as ``skipped (> N s)`` / ``(> N GiB)``.

An *MD-like step* advances time by dt = 1 fs and moves every atom along its own thermal oscillation,
``x_i(t) = x_i(0) + (v_i / w) [sin(w t + p_i) - sin p_i]`` (``v_i`` Maxwell-Boltzmann at 300 K, random
phase ``p_i``, period 2 pi / w = 40 fs: H moves ~0.03 Å per step and up to ~0.5 Å in all), then times
``atoms.get_forces()`` (energy and forces in one call). It is not real dynamics (random weights would
make real dynamics explode, and free flight would break bonds within tens of steps) but atoms move as
in a few tens of femtoseconds of MD, so the student's Verlet-skin neighbour list is reused and
rebuilt as in MD (about every 10 steps in water); Orb-v2 builds its graph at every call, as its
calculator does in MD. The median over the timed steps is reported; the mean (which includes the
list rebuilds) is printed under the table and every step time is in ``--json``.

Both models use random weights (speed does not depend on them): the student is ``StudentForceField()``
with its defaults, Orb-v2 is its real architecture (``pretrained.orb_v2_architecture``), saved with random
weights and loaded back through ``pretrained.orb_v2(weights_path=...)`` (no download).

Results go to ``benchmarks/RESULTS.md`` between ``<!-- bench_speed:start -->`` and
``<!-- bench_speed:end -->`` (other sections are left alone). A full default run writes there;
filtered runs (--quick, --systems, --sizes, --models) print only, unless ``--write`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _harness import BUSY_CORES, emit, fmt_s, peak_rss_mib, probe_gflops, rss_mib, run_one  # noqa: E402
from _results import machine_info, versions, write_section  # noqa: E402
from _systems import SYSTEMS, build  # noqa: E402

MODELS = ("student", "orb-v2")
DEFAULT_SIZES = ("small", "medium", "large")
RESULTS = HERE / "RESULTS.md"


# ==== worker: one model on one system, in its own process ===========================================


def _thermal_velocities(atoms, temperature_k: float, seed: int) -> np.ndarray:
    """``(n, 3)`` Å/fs, Maxwell-Boltzmann at ``temperature_k``, zero total momentum."""
    from ase import units

    rng = np.random.default_rng(seed)
    masses = atoms.get_masses()[:, None]
    momenta = rng.standard_normal((len(atoms), 3)) * np.sqrt(masses * units.kB * temperature_k)
    momenta -= momenta.sum(axis=0) / len(atoms)
    return momenta / masses * units.fs  # ASE velocity units -> Å/fs


def _make_calculator(opts: dict):
    import torch

    device = opts["device"]
    if opts["model"].startswith("student"):
        from mlff_calc import StudentCalculator, StudentForceField

        torch.manual_seed(0)
        model = StudentForceField()  # defaults: hidden 128, 3 interactions, 20 RBF, 5 Å
        calc = StudentCalculator(model, device=device, dtype="float32", skin=opts["skin"])
        info = {"config": model.config, "parameters": model.num_parameters(), "dtype": "float32",
                "skin": opts["skin"], "fused": _student_fused(calc.model)}
        return calc, info

    import warnings

    from orb_models.forcefield import pretrained
    from orb_models.forcefield.calculator import ORBCalculator

    weights = Path(opts["orb_weights"])
    if not weights.exists():  # real architecture, random weights, loaded through the real path
        torch.manual_seed(0)
        tmp = weights.with_suffix(".tmp")
        torch.save(pretrained.orb_v2_architecture().state_dict(), tmp)
        tmp.replace(weights)
    # auto = Orb's own default (compile everywhere but MPS); on this project's 2-core CPU it measured
    # ~15-20 % faster per step than eager after a 15-20 s compile (see --orb-sweep in RESULTS.md).
    compile_ = {"on": True, "off": False, "auto": None}[opts["orb_compile"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Setting global torch default dtype ..."
        model = pretrained.orb_v2(weights_path=str(weights), device=device,
                                  precision=opts["orb_precision"], compile=compile_)
    calc = ORBCalculator(model, device=device)
    # Orb compiles its GNS submodule only (DirectForcefieldRegressor.compile / is_compiled).
    compiled = bool(model.is_compiled()) if hasattr(model, "is_compiled") else bool(compile_)
    info = {"precision": opts["orb_precision"], "compile": compile_, "compiled": bool(compiled),
            "parameters": sum(p.numel() for p in model.parameters())}
    return calc, info


def _student_fused(model) -> bool | None:
    """Whether the student's fused CPU kernels are on and built (``None`` if this version has none)."""
    if not hasattr(model, "fused"):
        return None
    try:
        from mlff_calc.model import fused

        return bool(model.fused and fused.available())
    except Exception:
        return False


def _graph_edges(atoms, opts: dict, calc) -> int | None:
    """Edges of the graph the model sees at the starting positions."""
    try:
        if opts["model"].startswith("student"):
            import vesin

            (i,) = vesin.ase_neighbor_list("i", atoms, calc.model.cutoff)
            return int(len(i))
        from orb_models.forcefield.atomic_system import ase_atoms_to_atom_graphs

        graph = ase_atoms_to_atom_graphs(atoms, system_config=calc.system_config, device="cpu")
        return int(graph.n_edge.sum())
    except Exception:  # diagnostics only: never fail a timing because of it
        return None


def run_worker(opts: dict) -> None:
    import torch

    torch.set_num_threads(opts["threads"])
    device = opts["device"]
    cuda = device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    atoms = build(opts["system"])
    calc, model_info = _make_calculator(opts)
    emit(event="info", model_info=model_info, threads=torch.get_num_threads(), torch=torch.__version__,
          edges=_graph_edges(atoms, opts, calc), versions=versions())
    atoms.calc = calc
    velocities = _thermal_velocities(atoms, 300.0, seed=1)
    phases = np.random.default_rng(2).uniform(0.0, 2 * np.pi, size=(len(atoms), 1))
    omega = 2 * np.pi / 40.0  # rad/fs
    origin = atoms.positions.copy()
    clock = {"t": 0.0, "dt": 1.0}  # fs
    base_rss = rss_mib()
    probe_before = None if cuda else probe_gflops()
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def step() -> float:
        clock["t"] += clock["dt"]
        atoms.positions = origin + velocities / omega * (np.sin(omega * clock["t"] + phases) - np.sin(phases))
        sync()
        t0 = time.perf_counter()
        atoms.get_forces()
        sync()
        return time.perf_counter() - t0

    # Warm-up: two calls, or one when a call is long (its one-off costs are then negligible, and that
    # call is kept as a timed step instead of spending minutes on warm-up) -- unless the model is
    # torch.compiled, whose first call is mostly compilation.
    first = step()
    emit(event="first_call", seconds=first)
    times = []
    keep_first = first > opts["long_call_s"] and not model_info.get("compiled")
    if keep_first:
        times.append(first)
        n_steps = opts["min_steps_long"]
    else:
        warm = step()
        n_steps = int(np.clip(opts["time_budget_s"] / max(warm, 1e-6), opts["min_steps"], opts["max_steps"]))
    while len(times) < n_steps:
        times.append(step())
        emit(event="step", seconds=times[-1])

    builds = getattr(getattr(calc, "converter", None), "n_builds", None)  # diagnostics, student only
    probe_after = None if cuda else probe_gflops()
    emit(
        event="result",
        times_s=times,
        median_ms=1e3 * float(np.median(times)),
        mean_ms=1e3 * float(np.mean(times)),
        min_ms=1e3 * float(np.min(times)),
        first_call_ms=1e3 * first,
        neighbor_list_builds=builds,
        steps_total=len(times) + (0 if keep_first else 2),
        base_rss_mib=base_rss,
        peak_rss_mib=peak_rss_mib(),
        cuda_peak_mib=(torch.cuda.max_memory_allocated() / 2**20) if cuda else None,
        probe_gflops=[probe_before, probe_after],
    )


# ==== report: markdown section of RESULTS.md ==========================================================


def _header(info: dict, command: str, date: str, elapsed_s: float, device: str) -> list[str]:
    v = info["versions"]
    return [
        f"- Machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']:.0f} GiB RAM; device `{device}`; "
        f"torch threads {info['threads']} (both models)",
        f"- Software: torch {v.get('torch')}, orb-models {v.get('orb-models')}, "
        f"mlff_calc {v.get('mlff_calc')}, "
        f"ase {v.get('ase')}, vesin {v.get('vesin')}, Python {info['python']}",
        f"- Command: `{command}` ({date}, {elapsed_s / 60:.1f} min)",
    ]


def _cell_ms(rec: dict | None) -> str:
    if rec is None:
        return "-"
    busy = " ⚠" if rec.get("other_load_cores", 0.0) > BUSY_CORES else ""
    if "skipped" in rec:
        first = rec.get("first_call_s")
        extra = f"; 1st call {fmt_s(first)}" if first else ""
        return rec["skipped"] + extra + busy
    return f"{rec['median_ms']:.4g} ({rec['min_ms']:.4g}){busy}"


def _cell_rss(rec: dict | None) -> str:
    if rec is None or "peak_rss_mib" not in rec:
        return "-"
    cell = f"{rec['peak_rss_mib']:,.0f} (+{rec['peak_rss_mib'] - rec['base_rss_mib']:,.0f})"
    if rec.get("cuda_peak_mib") is not None:
        cell += f"; GPU {rec['cuda_peak_mib']:,.0f}"
    return cell


def _baseline_cells(s: dict | None, b: dict | None) -> str:
    ok = s is not None and "median_ms" in s and b is not None and "median_ms" in b
    return f" {_cell_ms(b)} | {b['median_ms'] / s['median_ms']:.2f} |" if ok else f" {_cell_ms(b)} | - |"


def results_markdown(results, models, info, command, date, elapsed_s, base, args) -> str:
    baseline = "student-baseline" in models
    student_cfg = next((r["student"]["model_info"] for r in results
                        if "model_info" in r.get("student", {})), None)
    orb_cfg = next((r["orb-v2"]["model_info"] for r in results if "model_info" in r.get("orb-v2", {})), None)
    lines = ["## Speed: student vs Orb-v2, energy + forces per MD-like step (`bench_speed.py`)", ""]
    lines += _header(info, command, date, elapsed_s, args.device)
    if student_cfg:
        lines.append(f"- Student: `StudentForceField()` defaults {student_cfg['config']}, "
                     f"{student_cfg['parameters']:,} parameters, random weights, float32, "
                     f"`StudentCalculator(skin={student_cfg['skin']})`, fused CPU kernels: "
                     f"{ {True: 'on', False: 'off', None: 'n/a'}[student_cfg.get('fused')] }")
    if orb_cfg:
        lines.append("- Orb-v2: real architecture, random weights via `pretrained.orb_v2(weights_path=...)`, "
                     f"precision `{orb_cfg['precision']}`, "
                     f"torch.compile {'on' if orb_cfg.get('compiled') else 'off'} "
                     "(compile time excluded), "
                     f"{orb_cfg['parameters']:,} parameters, `ORBCalculator` (graph rebuilt every call)")
    if baseline:
        lines.append(f"- Baseline: the same student and settings from the checkout `{args.baseline_src}`, "
                     "timed in the same run (its own process per system)")
    lines += [
        "- Step: dt = 1 fs along per-atom thermal oscillations (300 K velocities, random phases, 40 fs "
        "period; see the script's docstring), then "
        "`atoms.get_forces()` is timed; median over the timed steps after warm-up "
        f"(2 warm-up calls; a first call > {base['long_call_s']:.0f} s is itself timed instead, unless "
        "the model is compiled). "
        f"Budgets per (system, model): {args.timeout:.0f} s wall, "
        f"{(args.max_mem_gib or 0.85 * info['ram_gib']):.0f} GiB RSS.",
        "- Peak RSS: `ru_maxrss` of the model's own process, MiB (+ growth over the process after model "
        "and structure were built, before the first call).",
        "",
        "- ms/step: median (min) of the timed steps; Orb/student and atoms·steps/s from the medians. "
        "steps s/o: timed steps student/Orb. CPU probe: GFLOP/s of a 512² float32 matmul before/after "
        "each model's steps (student | Orb) — low or uneven values mean other tenants shared the CPU. "
        "other load: CPU cores used by other processes of this machine while the model ran (should be ~0; "
        f"⚠ marks times taken with more than {BUSY_CORES} cores busy elsewhere).",
        "",
        "| system | atoms | pbc | student edges | student ms/step | Orb-v2 ms/step | Orb/student | "
        "student atoms·steps/s | student peak RSS MiB | Orb-v2 edges | Orb-v2 peak RSS MiB | steps s/o | "
        "CPU probe GFLOP/s | other load s \\| o |" + (" baseline student ms/step | baseline/student |" if baseline else ""),
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|" + ("---:|---:|" if baseline else ""),
    ]
    for row in results:
        s, o = row.get("student"), row.get("orb-v2")
        ok_s = s is not None and "median_ms" in s
        ok_o = o is not None and "median_ms" in o
        ratio = f"{o['median_ms'] / s['median_ms']:.2f}" if ok_s and ok_o else "-"
        rate = f"{row['atoms'] / (s['median_ms'] / 1e3):,.0f}" if ok_s else "-"
        edges_s = f"{s['edges']:,}" if s and s.get("edges") is not None else "-"
        edges_o = f"{o['edges']:,}" if o and o.get("edges") is not None else "-"
        steps = "/".join(str(len(r["times_s"])) if r and "times_s" in r else "-" for r in (s, o))
        probe = " \\| ".join("/".join(f"{g:.0f}" for g in r["probe_gflops"] if g is not None)
                              if r and r.get("probe_gflops") else "-" for r in (s, o))
        other = " \\| ".join(f"{r['other_load_cores']:.1f}" if r and "other_load_cores" in r else "-"
                              for r in (s, o))
        lines.append(f"| {row['system']} | {row['atoms']:,} | {row['pbc']} | {edges_s} | {_cell_ms(s)} | "
                     f"{_cell_ms(o)} | {ratio} | {rate} | {_cell_rss(s)} | {edges_o} | {_cell_rss(o)} | "
                     f"{steps} | "
                     f"{probe} | {other} |" + (_baseline_cells(s, row.get("student-baseline")) if baseline else ""))
    notes = []
    for row in results:
        s = row.get("student") or {}
        if s.get("neighbor_list_builds") is not None and "mean_ms" in s:
            notes.append(f"{row['system']}: mean {s['mean_ms']:.4g} ms, "
                         f"{s['neighbor_list_builds']} list build(s) "
                         f"in {s['steps_total']} calls")
    if notes:
        lines += ["", "Student mean ms/step and skin-list builds (first call included): "
                  + "; ".join(notes) + "."]
    lines += ["", "Where the student's time goes (kernel, graph, Python): `profile_student.py`, its own section "
              "below (the network is one C++ call, invisible to torch.profiler)."]
    return "\n".join(lines) + "\n"


def orb_settings_markdown(rows, info, command, date, elapsed_s) -> str:
    lines = ["## Orb-v2 settings on CPU (`bench_speed.py --orb-sweep`)", ""]
    lines += _header(info, command, date, elapsed_s, rows[0].get("device", "cpu") if rows else "cpu")
    lines += ["", "| system | precision | compile | ms/step median (min) | first call s | process s | "
              "CPU probe GFLOP/s | other load |", "|---|---|---|---:|---:|---:|---|---:|"]
    for r in rows:
        first = f"{r['first_call_ms'] / 1e3:.1f}" if "first_call_ms" in r else "-"
        probe = "/".join(f"{g:.0f}" for g in r.get("probe_gflops") or [] if g is not None) or "-"
        lines.append(f"| {r['system']} | {r['precision']} | {r['compile']} | {_cell_ms(r)} | {first} | "
                     f"{r['wall_s']:.0f} | {probe} | {r.get('other_load_cores', float('nan')):.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small systems only (~2 min)")
    parser.add_argument("--systems", help=f"comma-separated subset of: {', '.join(SYSTEMS)}")
    parser.add_argument("--sizes", help="comma-separated size classes: small, medium, large")
    parser.add_argument("--models", default=",".join(MODELS), help="student,orb-v2 (default both)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:n]")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch threads for both models (default: all cores)")
    parser.add_argument("--skin", type=float, default=1.0, help="student Verlet skin, Å")
    parser.add_argument("--orb-precision", default="float32-high",
                        help="pretrained.orb_v2 precision: float32-high (default, Orb's own) | "
                             "float32-highest | float64")
    parser.add_argument("--orb-compile", choices=("auto", "on", "off"), default="auto",
                        help="torch.compile Orb-v2; auto = Orb's own default (on, except on MPS): "
                             "fastest per step here too")
    parser.add_argument("--time-budget", type=float, default=20.0,
                        help="target seconds of timed steps per (system, model) (default 20)")
    parser.add_argument("--min-steps", type=int, default=5)
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--long-call", type=float, default=30.0,
                        help="a first call longer than this (s) is kept as a timed step, no more warm-up")
    parser.add_argument("--min-steps-long", type=int, default=2, help="timed steps for such long systems")
    parser.add_argument("--timeout", type=float, default=480.0,
                        help="per (system, model) wall-clock budget, s")
    parser.add_argument("--max-mem-gib", type=float, default=None,
                        help="per (system, model) RSS budget (default 85%% of RAM)")
    parser.add_argument("--wait-idle", type=float, default=0.0,
                        help="before each (system, model), wait up to this many seconds for other processes "
                             "to leave the CPU idle (shared machines)")
    parser.add_argument("--orb-sweep", action="store_true",
                        help="time Orb-v2 for each precision x compile setting on --systems "
                             "(default water_81)")
    parser.add_argument("--write", action=argparse.BooleanOptionalAction, default=None,
                        help="write the section of RESULTS.md (default: only for a full default run)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--json", type=Path, help="also dump every raw record here")
    parser.add_argument("--baseline-src", help="also time the student of this checkout (e.g. the previous main), "
                        "in the same run: columns 'baseline' and 'baseline/student'")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        run_worker(json.loads(args.worker))
        return 0

    import psutil

    max_mem = args.max_mem_gib or 0.85 * psutil.virtual_memory().total / 2**30
    sizes = ("small",) if args.quick else tuple(args.sizes.split(",")) if args.sizes else DEFAULT_SIZES
    if args.systems:
        names = args.systems.split(",")
        unknown = [n for n in names if n not in SYSTEMS]
        if unknown:
            parser.error(f"unknown system(s) {unknown}; known: {', '.join(SYSTEMS)}")
    elif args.orb_sweep:
        names = ["water_81"]
    else:
        names = [n for n, (_, size) in SYSTEMS.items() if size in sizes]
    models = args.models.split(",")
    if any(m not in MODELS for m in models):
        parser.error(f"--models takes a subset of {MODELS}")
    if args.baseline_src:
        models.insert(models.index("student") + 1 if "student" in models else 0, "student-baseline")
    full_run = not (args.quick or args.systems or args.sizes or args.orb_sweep) and set(MODELS) <= set(models)
    write = full_run if args.write is None else args.write

    tmpdir = tempfile.TemporaryDirectory(prefix="bench_speed_")
    base = {
        "device": args.device, "threads": args.threads, "skin": args.skin,
        "orb_precision": args.orb_precision, "orb_compile": args.orb_compile,
        "orb_weights": str(Path(tmpdir.name) / "orb_v2_random.pt"),
        "time_budget_s": args.time_budget, "min_steps": args.min_steps, "max_steps": args.max_steps,
        "long_call_s": args.long_call, "min_steps_long": args.min_steps_long,
    }
    command = "python benchmarks/bench_speed.py" + "".join(
        f" {shlex.quote(a)}" for a in (argv if argv is not None else sys.argv[1:]))
    started = time.monotonic()
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    if args.orb_sweep:
        rows = []
        for name in names:
            for precision in ("float32-high", "float32-highest"):
                for compile_ in ("off", "on"):
                    opts = dict(base, system=name, model="orb-v2", orb_precision=precision,
                                orb_compile=compile_)
                    print(f"[orb sweep] {name} precision={precision} compile={compile_} ...", flush=True)
                    rec = run_one(__file__, opts, args.timeout, max_mem, args.wait_idle)
                    rec.update(system=name, precision=precision, compile=compile_)
                    print(f"    -> {rec.get('skipped') or '%.1f ms/step' % rec['median_ms']}"
                          f"  (first call {rec.get('first_call_ms', float('nan')) / 1e3:.1f} s,"
                          f" process {fmt_s(rec['wall_s'])})", flush=True)
                    rows.append(rec)
        body = orb_settings_markdown(rows, machine_info(rows), command, date, time.monotonic() - started)
        print("\n" + body)
        if args.write:
            write_section(args.results, "bench_speed_orb_settings", body)
            print(f"wrote section 'bench_speed_orb_settings' of {args.results}")
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        return 0

    results = []
    for name in names:
        atoms = build(name)
        row = {"system": name, "atoms": len(atoms), "pbc": "".join("T" if p else "F" for p in atoms.pbc)}
        for model in models:
            opts = dict(base, system=name, model=model)
            print(f"[{name}: {len(atoms)} atoms] {model} ...", end=" ", flush=True)
            rec = run_one(__file__, opts, args.timeout, max_mem, args.wait_idle,
                          src=args.baseline_src if model == "student-baseline" else None)
            row[model] = rec
            if "skipped" in rec:
                print(rec["skipped"], flush=True)
            else:
                print(f"{rec['median_ms']:.1f} ms/step (median of {len(rec['times_s'])}), "
                      f"peak RSS {rec['peak_rss_mib']:.0f} MiB, process {fmt_s(rec['wall_s'])}", flush=True)
        results.append(row)

    elapsed = time.monotonic() - started
    records = [r[m] for r in results for m in models if m in r]
    body = results_markdown(results, models, machine_info(records), command, date, elapsed, base, args)
    print("\n" + body)
    print(f"total {elapsed / 60:.1f} min")
    if write:
        write_section(args.results, "bench_speed", body)
        print(f"wrote section 'bench_speed' of {args.results}")
    if args.json:
        args.json.write_text(json.dumps({"command": command, "date": date, "elapsed_s": elapsed,
                                         "platform": platform.platform(), "results": results}, indent=1))
    tmpdir.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
