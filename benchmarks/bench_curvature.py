"""Curvature distillation at equal teacher calls (issue 11): forces only vs forces + Hessian-vector products.

    python benchmarks/bench_curvature.py [--out runs/bench_curvature] [--hvp-weights 0.1] [--fraction 0.2]
                                         [--probes 2] [--max-time 260] [--no-write]
    python benchmarks/bench_curvature.py --at-minima [--variants modes:10:1 ...] [--epochs N | --max-time S]

``--at-minima`` measures the recipe option ``labelling.hessian_at_minima`` (forces only, then each variant
``probes:copies:hvp_weight`` on the same frames; section ``bench_curvature_at_minima``); the rest of this
docstring describes the default mode.

The quickstart (``make demo``: GFN2-xTB; ethanol, methylamine, acetaldehyde; the ``quick`` preset) is
distilled once with forces only (F frames per molecule, F labelling calls) and once per ``--hvp-weights``
value with curvature: f = ``--fraction`` of n frames get k = ``--probes`` probes (2 calls each), with
n + 2 k f n = F, so **labelling costs the same teacher calls**; the sampling interval grows by F/n so the
teacher MD is as long too (equal sampling calls) and the same training time budget is used. Reported per
run: held-out force MAE (90 frames of independent trajectories), harmonic-frequency MAE and max error vs
GFN2-xTB at each model's own minimum (the distill ``vibrations`` stage), 2,000-step NVE stability and
drift. Also measured: the cost of one training step with one probe vs without, and the FD error of the
teacher's HVP against ε (GFN2-xTB, Richardson reference). Results go to the ``bench_curvature`` section
of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _results import RESULTS, cpu_name, write_section  # noqa: E402

TEACHER = "gfn2-xtb"


def distill_run(out: Path, frames: int, interval: int, fraction: float, probes: int, weight: float,
                max_time: float | None, epochs: int | None = None) -> dict:
    from mlff_calc.demo import seed_structures
    from mlff_calc.data.hdf5 import DatasetReader
    from mlff_calc.pipeline import distill

    overrides = {"sampling.frames": frames, "sampling.interval": interval,
                 "labelling.hvp_fraction": fraction, "labelling.hvp_probes": probes,
                 "training.loss.hvp_weight": weight, "training.run.max_time": None if epochs else max_time}
    if epochs:
        overrides["training.run.epochs"] = epochs
    start = time.monotonic()
    result = distill(TEACHER, seed_structures(), out, preset="quick", overrides=overrides, quiet=True)
    reader = DatasetReader(out / "data/train.h5")
    s = result.summary
    return {"frames_per_seed": frames, "interval": interval, "hvp_fraction": fraction, "hvp_probes": probes,
            "hvp_weight": weight, "frames": len(reader), "probes": len(reader.hvp_structure),
            "labelling_calls": len(reader) + 2 * len(reader.hvp_structure),
            "force_mae": s["force_mae_ev_per_ang"], "energy_mae": s["energy_mae_ev_per_atom"],
            "epochs": s["training"]["epochs"], "frequencies": s.get("frequencies"),
            "per_seed": json.loads((out / "vibrations/vibrations.json").read_text())["per_seed"],
            "nve": s["nve"], "wall_s": time.monotonic() - start, "run_dir": str(out)}


def minima_hessians(copies: int) -> tuple[list[dict], int]:
    """Each seed relaxed by the teacher, with its full Hessian as 3N Cartesian probes (6N calls), as
    ``copies`` dataset frames (oversampled, so that each epoch fits it several times and the random split
    cannot leave it out). Returns (frames, teacher calls spent once)."""
    from mlff_calc.demo import seed_structures
    from mlff_calc.evaluation.vibrations import relax
    from mlff_calc.teachers import compute_labels, load_teacher
    from mlff_calc.teachers.hvp import fd_hvp

    calc, frames, calls = load_teacher(TEACHER), [], 0
    for j, atoms in enumerate(seed_structures()):
        relaxed, steps = relax(atoms, calc)
        probes = np.eye(3 * len(atoms)).reshape(-1, len(atoms), 3)
        labels = compute_labels(calc, relaxed)
        values = fd_hvp(calc, relaxed, probes)
        calls += steps + 1 + 1 + 2 * len(probes)  # BFGS steps (+ first call), the labels, 2 per probe
        frame = {"atomic_numbers": relaxed.numbers, "positions": relaxed.positions, "cell": np.zeros((3, 3)),
                 "pbc": relaxed.pbc, **labels,
                 "hvp": {"probes": probes, "values": values, "epsilon": np.full(len(probes), 0.01)}}
        frames += [dict(frame, input_index=-1 - j * copies - c) for c in range(copies)]
    return frames, calls


def minima_run(out: Path, budget: int, base_interval: int, weight: float, max_time: float,
               copies: int = 10) -> dict:
    """Forces on fewer MD frames + the teacher Hessian at each seed's minimum, at ``budget`` labelling calls."""
    import shutil

    from mlff_calc.data.hdf5 import DatasetWriter
    from mlff_calc.pipeline import distill, load_recipe
    from mlff_calc.training import train
    from mlff_calc.training.config import config_from_dict

    minima, calls = minima_hessians(copies)
    n = round((budget - calls) / 3)
    interval = round(base_interval * budget / 3 / n)
    overrides = {"sampling.frames": n, "sampling.interval": interval, "training.run.epochs": 1,
                 "training.run.max_time": None}
    from mlff_calc.demo import seed_structures

    distill(TEACHER, seed_structures(), out, preset="quick", overrides=overrides, quiet=True)  # frames, labels
    data = out / "data/train.h5"
    if not (out / "minima.done").exists():
        with DatasetWriter(data) as w:
            for frame in minima:
                w.add(frame)
        (out / "minima.done").write_text("")
    raw = load_recipe("quick")["training"]
    raw["data"]["path"], raw["run"]["out"] = str(data), str(out / "train_minima")
    raw["loss"]["hvp_weight"], raw["run"]["max_time"], raw["run"]["quiet"] = weight, max_time, True
    result = train(config_from_dict(raw))
    shutil.copyfile(result.checkpoint, out / "student.pt")  # distill re-evaluates a replaced student
    s = distill(TEACHER, seed_structures(), out, preset="quick", overrides=overrides, quiet=True).summary
    return {"frames_per_seed": n, "interval": interval, "hvp_fraction": 0.0, "hvp_probes": "3N at minima",
            "hvp_weight": weight, "frames": 3 * n + len(minima), "probes": sum(3 * len(f["positions"])
                                                                              for f in minima) // copies,
            "labelling_calls": 3 * n + calls, "force_mae": s["force_mae_ev_per_ang"],
            "energy_mae": s["energy_mae_ev_per_atom"], "epochs": result.epochs, "frequencies": s["frequencies"],
            "per_seed": json.loads((out / "vibrations/vibrations.json").read_text())["per_seed"],
            "nve": s["nve"], "run_dir": str(out), "minima_calls": calls}


def at_minima_runs(out: Path, variants: list[str], max_time: float | None, epochs: int | None) -> list[dict]:
    """``labelling.hessian_at_minima`` as shipped (the recipe option, not the --minima experiment): one
    forces-only distill of the quick preset (option off), then one per variant
    ``probes:copies:hvp_weight[:max_time]`` (or ``forces:max_time``) on the very same sampled and labelled
    frames (copied with their stage records, so only the minima labels, the training and what follows run
    again). ``max_time`` of a variant replaces the common budget (the option's time cost, repaid)."""
    import shutil

    from mlff_calc.demo import seed_structures
    from mlff_calc.pipeline import distill

    runs = []
    for spec in ["forces", *variants]:
        run_dir = out / spec.replace(":", "_")
        fields = spec.split(":")
        own_time = float(fields.pop()) if len(fields) in (2, 4) else None
        budget = {"training.run.max_time": None, "training.run.epochs": epochs} if epochs and not own_time \
            else {"training.run.max_time": own_time or max_time}
        overrides = {**budget, "labelling.hessian_at_minima.enabled": False, "training.loss.hvp_weight": 0.0}
        if spec != "forces" and not (run_dir / "state.json").exists():  # the forces-only run's frames, labels
            run_dir.mkdir(parents=True)
            for rel in ("frames", "data", "seeds.extxyz", "state.json"):
                src = out / "forces" / rel
                (shutil.copytree if src.is_dir() else shutil.copyfile)(src, run_dir / rel)
        if fields[0] != "forces":
            probes, copies, weight = fields
            overrides.update({"labelling.hessian_at_minima.enabled": True,
                              "labelling.hessian_at_minima.probes": probes,
                              "labelling.hessian_at_minima.copies": int(copies),
                              "training.loss.hvp_weight": float(weight)})
        start = time.monotonic()
        s = distill(TEACHER, seed_structures(), run_dir, preset="quick", overrides=overrides, quiet=True).summary
        minima = json.loads((run_dir / "state.json").read_text())["stages"].get("label_minima", {})
        runs.append({"variant": spec if spec != "forces" else "forces only", "force_mae": s["force_mae_ev_per_ang"],
                     "energy_mae": s["energy_mae_ev_per_atom"], "epochs": s["training"]["epochs"],
                     "train_s": s["training"]["train_time_s"], "frequencies": s["frequencies"],
                     "per_seed": json.loads((run_dir / "vibrations/vibrations.json").read_text())["per_seed"],
                     "nve": s["nve"], "wall_s": time.monotonic() - start, "stage_seconds": s["stage_seconds"],
                     "minima_calls": (minima.get("info") or {}).get("teacher_calls_now"), "run_dir": str(run_dir)})
        print(json.dumps(runs[-1], default=str), flush=True)
    return runs


def at_minima_section(runs: list[dict], args, started, minutes: float) -> str:
    budget = f"{args.epochs} epochs" if args.epochs else f"{args.max_time:g} s"
    lines = [
        "## Curvature: `labelling.hessian_at_minima` in distill (`bench_curvature.py --at-minima`, issue 11)", "",
        f"- Machine: {cpu_name()}, {len(os.sched_getaffinity(0))} cores (shared with other jobs), torch "
        f"{torch.__version__}, 1 thread; date {started:%Y-%m-%d %H:%M} UTC",
        f"- Command: `python benchmarks/bench_curvature.py --at-minima --variants {' '.join(args.variants)} "
        + (f"--epochs {args.epochs}" if args.epochs else f"--max-time {args.max_time:g}")
        + f"` ({len(runs)} runs, {minutes:.0f} min)",
        f"- Quickstart (`quick` preset: 750 MD frames, GFN2-xTB), {budget} of training per run; every run trains "
        "on the same sampled and labelled frames. A variant `probes:copies:w[:s]` adds the teacher's Hessian at "
        "each seed's minimum (`data/minima.h5`: relaxation + 6N force calls per seed), trained on `copies` "
        "times per epoch (never validation) with `training.loss.hvp_weight` w; `cartesian`: the 3N unit "
        "probes, `modes`: the 3N-6 normal modes weighted by the frequency error each causes; `s`: its own "
        "training seconds instead of the common budget (`forces:s` likewise).",
        "- Force and energy MAE: 90 held-out frames of independent trajectories. Frequencies: 51 internal modes "
        "of the three molecules, each model relaxed by itself; **in-sample for the curvature runs** (their "
        "training frames hold the teacher's Hessian at those very minima), unlike the force MAE. Train s and "
        "distill s are wall clock under contention: compare epochs.", "",
        "| run | epochs | train s | distill s (this call) | force MAE (eV/Å) | energy MAE (meV/atom) "
        "| freq MAE (cm⁻¹) | freq max (cm⁻¹) | worst mode (teacher → student, cm⁻¹) | NVE f32 / f64 drift "
        "(meV/atom/ps) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        f = r["frequencies"] or {}
        worst = max(((t, st) for row in r["per_seed"] for t, st in zip(row["teacher_cm1"], row["student_cm1"])),
                    key=lambda ts: abs(ts[1] - ts[0]))
        nve = " / ".join(f"{'' if d['stable'] else 'UNSTABLE '}{d['worst_drift_mev_per_atom_ps']:+.3f}"
                         for d in r["nve"].values())
        lines.append(f"| {r['variant']} | {r['epochs']} | {r['train_s']:.0f} | {r['wall_s']:.0f} "
                     f"| {r['force_mae']:.4f} | {1e3 * r['energy_mae']:.2f} | {f.get('mae_cm1', float('nan')):.2f} "
                     f"| {f.get('max_error_cm1', float('nan')):.1f} | {worst[0]:.0f} → {worst[1]:.0f} | {nve} |")
    calls = [r["minima_calls"] for r in runs if r.get("minima_calls")]
    if calls:
        lines += ["", f"Teacher calls for the three minima: {calls[0]} (relaxations + 6N per seed; the forces-only "
                  "frames take 750 + 90 labelling calls and the teacher MD)."]
    return "\n".join(lines) + "\n"


def step_cost(data: Path, steps: int = 30) -> dict:
    """ms per training step (forward, loss, backward, optimiser) of the quick student on batches of 4."""
    from mlff_calc import _keys as K
    from mlff_calc.data.torch_dataset import H5Dataset, collate
    from mlff_calc.model.student import StudentForceField
    from mlff_calc.training.loss import combined_probe

    torch.set_num_threads(1)
    ds = H5Dataset(data, dtype=torch.float32, preload=True)
    probed = [i for i in range(len(ds)) if int(ds[i][K.N_PROBES]) > 0][:4]
    batch = collate([ds[i] for i in probed], cutoff=5.0)
    model = StudentForceField(hidden_dim=64, num_interactions=3, num_rbf=20, cutoff=5.0).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    out = {}
    for name in ("forces", "forces+hvp"):
        times = []
        for n in range(steps + 5):
            t0 = time.perf_counter()
            probe = None
            if name == "forces+hvp":
                probe, target = combined_probe(batch, random=True)
            pred = model(batch[K.GRAPH], compute_forces=True, probe=probe)
            loss = (pred[K.FORCES] - batch[K.FORCES]).pow(2).mean()
            if probe is not None:
                loss = loss + 0.1 * (pred[K.HVP] - target).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if n >= 5:
                times.append(time.perf_counter() - t0)
        out[name] = 1e3 * float(np.median(times))
    out["atoms_per_batch"] = int(batch[K.ATOMIC_NUMBERS].numel())
    return out


def epsilon_rows() -> list[dict]:
    from ase.build import molecule

    from mlff_calc.teachers import load_teacher
    from mlff_calc.teachers.hvp import epsilon_scan, probe_directions

    atoms = molecule("CH3CH2OH")
    probes = probe_directions(len(atoms), 2, seed=0)
    return epsilon_scan(load_teacher(TEACHER), atoms, probes, epsilons=(0.04, 0.02, 0.01, 0.005, 0.0025, 0.00125))


def table(runs: list[dict]) -> str:
    lines = ["| run | frames (per seed) | probes | labelling calls | hvp_weight | epochs | force MAE (eV/Å) "
             "| freq MAE (cm⁻¹) | freq max (cm⁻¹) | NVE f32 / f64 (worst drift meV/atom/ps) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        f = r["frequencies"] or {}
        nve = " / ".join(f"{'stable' if d['stable'] else 'UNSTABLE'} {d['worst_drift_mev_per_atom_ps']:+.3f}"
                         for d in r["nve"].values())
        name = "forces only" if r["probes"] == 0 else f"forces + HVP ({r['hvp_fraction']:.0%} x {r['hvp_probes']})"
        if "minima_calls" in r:
            name = f"forces + Hessian at the 3 minima ({r['minima_calls']} calls)"
        lines.append(f"| {name} | {r['frames']} ({r['frames_per_seed']}) | {r['probes']} | {r['labelling_calls']} "
                     f"| {r['hvp_weight']:g} | {r['epochs']} | {r['force_mae']:.4f} | {f.get('mae_cm1', float('nan')):.2f} "
                     f"| {f.get('max_error_cm1', float('nan')):.2f} | {nve} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench_curvature")
    p.add_argument("--frames", type=int, default=250, help="forces-only frames per molecule (quick preset: 250)")
    p.add_argument("--fraction", type=float, default=0.2)
    p.add_argument("--probes", type=int, default=2)
    p.add_argument("--hvp-weights", type=float, nargs="+", default=[0.1])
    p.add_argument("--max-time", type=float, default=260.0, help="training seconds per run (quick: 260)")
    p.add_argument("--extra-calls", action="store_true",
                   help="curvature runs keep all frames and spend 2 x probes calls more (not equal cost): "
                        "does the term help at all?")
    p.add_argument("--skip-forces", action="store_true", help="no forces-only run (with --extra-calls)")
    p.add_argument("--section", default="bench_curvature", help="RESULTS.md section name")
    p.add_argument("--epochs", type=int, default=None,
                   help="train every run for this many epochs instead of --max-time seconds: information "
                        "per teacher call, whatever a step costs")
    p.add_argument("--minima", action="store_true",
                   help="curvature as the teacher's full Hessian at each seed's own minimum (relaxation + 6N "
                        "calls, oversampled 10x), fewer MD frames for equal calls; in-sample for the "
                        "frequency metric (its minima are where the frequencies are compared)")
    p.add_argument("--at-minima", action="store_true",
                   help="the recipe option labelling.hessian_at_minima: forces only, then each --variants "
                        "entry on the same frames; writes the section bench_curvature_at_minima")
    p.add_argument("--variants", nargs="+", default=["modes:10:1"],
                   help="with --at-minima: probes:copies:hvp_weight[:max_time] or forces:max_time, e.g. "
                        "modes:10:30 cartesian:10:1 modes:10:30:320 (own training seconds)")
    p.add_argument("--no-write", action="store_true", help="print, do not write RESULTS.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.at_minima:
        started, t_start = datetime.datetime.now(datetime.timezone.utc), time.monotonic()
        out = Path(args.out if args.out != "runs/bench_curvature" else "runs/bench_curvature_at_minima")
        runs = at_minima_runs(out, args.variants, args.max_time, args.epochs)
        text = at_minima_section(runs, args, started, (time.monotonic() - t_start) / 60)
        print(text)
        if not args.no_write:
            section = args.section if args.section != "bench_curvature" else "bench_curvature_at_minima"
            write_section(RESULTS, section, text)
            (out / "results.json").write_text(json.dumps({"runs": runs}, indent=1, default=str))
        return 0
    out, base_interval = Path(args.out), 20
    started, t_start = datetime.datetime.now(datetime.timezone.utc), time.monotonic()
    runs = []
    if not args.skip_forces:
        runs.append(distill_run(out / "forces", args.frames, base_interval, 0.0, args.probes, 0.0, args.max_time,
                                args.epochs))
        print(json.dumps(runs[-1], indent=1, default=str), flush=True)
    n = args.frames if args.extra_calls else round(args.frames / (1 + 2 * args.probes * args.fraction))
    interval = round(base_interval * args.frames / n)  # the same MD length: equal sampling calls
    for w in args.hvp_weights if args.minima else ():
        runs.append(minima_run(out / f"minima_w{w:g}", 3 * args.frames, base_interval, w, args.max_time))
        print(json.dumps(runs[-1], indent=1, default=str), flush=True)
    for w in args.hvp_weights if not args.minima else ():
        runs.append(distill_run(out / f"hvp_w{w:g}", n, interval, args.fraction, args.probes, w, args.max_time,
                                args.epochs))
        print(json.dumps(runs[-1], indent=1, default=str), flush=True)
    cost = step_cost(out / f"{'minima' if args.minima else 'hvp'}_w{args.hvp_weights[0]:g}" / "data/train.h5")
    eps = [] if args.extra_calls or args.minima else epsilon_rows()
    print(json.dumps({"step_cost_ms": cost, "epsilon": eps}, indent=1), flush=True)
    extra = (" --extra-calls --skip-forces" if args.extra_calls else "") + (" --minima" if args.minima else "") + \
        (f" --epochs {args.epochs}" if args.epochs else "")
    budget = f"{args.epochs} epochs" if args.epochs else f"{args.max_time:g} s"
    title = ("with the probes' calls spent on top of the forces-only frames" if args.extra_calls
             else "at equal teacher calls")
    how = ("Curvature run: the teacher's full Hessian at each seed's own minimum (relaxation + 6N calls; 10 "
           "copies of each in the dataset), fewer MD frames for equal labelling calls. The frequencies are "
           "compared at those minima: in-sample for curvature, unlike the force MAE." if args.minima else
           "Curvature runs label the same frames as forces only and spend 2 x probes calls more." if args.extra_calls
           else "Curvature runs label fewer frames so that frames + 2 x probes = the forces-only frame count (equal "
                "labelling calls), with a longer sampling interval (equal MD length).")
    body = [
        f"## Curvature distillation {title} (`bench_curvature.py`, issue 11)", "",
        f"- Machine: {cpu_name()}, {len(os.sched_getaffinity(0))} cores (shared), torch {torch.__version__}, "
        f"1 thread; date {started:%Y-%m-%d %H:%M} UTC",
        f"- Command: `python benchmarks/bench_curvature.py --frames {args.frames} --fraction {args.fraction} "
        f"--probes {args.probes} --hvp-weights {' '.join(f'{w:g}' for w in args.hvp_weights)} "
        f"--max-time {args.max_time:g}{extra}` ({len(runs)} runs, {(time.monotonic() - t_start) / 60:.0f} min)",
        "- Quickstart molecules (ethanol, methylamine, acetaldehyde), GFN2-xTB, `quick` preset; each run "
        f"{budget} of training (wall clock, on cores shared with other jobs: see the epochs). {how}",
        "- Force MAE: 90 held-out frames from independent trajectories. Frequencies: each model relaxed by "
        "itself, 3N-6 internal modes of the FD Hessian, all three molecules (51 modes).", "",
        table(runs), "",
        f"Training step cost (quick student, 1 thread, batch of 4 frames, {cost['atoms_per_batch']} atoms): "
        f"forces only **{cost['forces']:.1f} ms**, forces + one HVP probe per structure "
        f"**{cost['forces+hvp']:.1f} ms** ({cost['forces+hvp'] / cost['forces']:.2f}x).", "",
    ]
    if eps:
        body += ["FD error of the teacher's HVP on ethanol (GFN2-xTB, 2 probes; reference: Richardson "
                 "extrapolation of the two largest ε), eV/Å²:", "",
                 "| ε (Å) | max abs error | RMS error |", "|---|---|---|",
                 *[f"| {r['epsilon']:g} | {r['max_abs_error']:.2e} | {r['rms_error']:.2e} |" for r in eps]]
    text = "\n".join(body) + "\n"
    print(text)
    if not args.no_write:
        write_section(RESULTS, args.section, text)
        (out / "results.json").write_text(json.dumps({"runs": runs, "step_cost_ms": cost, "epsilon": eps},
                                                     indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
