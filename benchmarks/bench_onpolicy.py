"""Offline vs on-policy ``distill`` at matched teacher calls (issue 10).

    python benchmarks/bench_onpolicy.py [--write]                # GFN2-xTB, the quickstart molecules
    python benchmarks/bench_onpolicy.py --md-ps 20 --train-time 260 --round-time 60 --rounds 6 --write
    python benchmarks/bench_onpolicy.py --teacher sevennet-0 --structures si64.extxyz nacl64.extxyz \
        --temperatures 300 600 900 1200 --write                   # a periodic teacher/system

Three distill runs into ``--out`` (resumable: re-running skips what is done):

* ``offline_full``: the quick preset (teacher MD at 500 K, ``--offline-frames`` frames per seed);
* ``offline_small``: the same with fewer frames, so its teacher calls match the on-policy run's budget;
* ``onpolicy``: a first student from ``--initial-frames`` (half rattles, half short teacher MD), then
  on-policy rounds (student MD at 500 K x ``--factors``) until the teacher-call budget
  ``--fraction`` x offline_full's calls.

Each student is then measured on the same footing: force MAE on frames of independent teacher Langevin
trajectories at every ``--temperatures`` (own seed, ``--test-frames`` per seed and temperature), and
student Langevin MD (ASE, ``fixcm=False``, 0.5 fs, friction 0.01/fs) for ``--md-ps`` ps at every
temperature from every seed (``--md-seeds`` velocity seeds); a run is *physical* while no blow-up fires
and (for molecules) the bonds of the seed stay as they are (checked every ``CHUNK`` steps).
Teacher calls count the training side only (teacher MD steps + labels); the held-out sets are not counted.
The table also gives each student's per-atom energy MAE on the same frames and each distill run's stage
seconds (sampling, labels, training, rounds, evaluation), on a shared CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
CHECK = 100  # steps (50 fs) between bond checks of the stability MD


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="gfn2-xtb")
    p.add_argument("--structures", nargs="*", default=None,
                   help="seed files (default: the quickstart molecules)")
    p.add_argument("--out", default=str(HERE / "_work" / "onpolicy"))
    p.add_argument("--offline-frames", type=int, default=250,
                   help="offline_full frames per seed (quick: 250)")
    p.add_argument("--initial-frames", type=int, default=40, help="on-policy first student's frames per seed")
    p.add_argument("--fraction", type=float, default=1 / 3, help="on-policy budget / offline_full calls")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--round-frames", type=int, default=100, help="frames labelled per round")
    p.add_argument("--round-md-steps", type=int, default=2000)
    p.add_argument("--candidates", type=int, default=40, help="candidate frames per student trajectory")
    p.add_argument("--tag", default="", help="suffix of the on-policy and offline_small run directories "
                   "(variants share offline_full and the test set)")
    p.add_argument("--factors", type=float, nargs="+", default=[1.0, 1.4, 1.8])
    p.add_argument("--train-time", type=float, default=140.0,
                   help="s, the on-policy run's first student; the offline runs train for this + "
                   "every round's round-time (the same total)")
    p.add_argument("--round-time", type=float, nargs="+", default=[30.0],
                   help="s of warm-start training per round; several: round 1, 2, ... (the last repeats)")
    p.add_argument("--failure-score", type=float, default=None,
                   help="eV/Å, onpolicy.failure_score of the on-policy run (default: none)")
    p.add_argument("--force-huber", type=_huber, default="preset", metavar="EV_PER_ANG|none|preset",
                   help="training.loss.force_huber of every run (default: the quick preset's; 'none' = the "
                        "squared force error, as in the runs made before the option)")
    p.add_argument("--temperatures", type=float, nargs="+", default=[300.0, 500.0, 700.0, 900.0])
    p.add_argument("--test-frames", type=int, default=20, help="held-out frames per seed and temperature")
    p.add_argument("--heldout-frames", type=int, default=12,
                   help="frames per seed of each distill run's own held-out set (the rounds table)")
    p.add_argument("--md-ps", type=float, default=20.0)
    p.add_argument("--md-seeds", type=int, default=1)
    p.add_argument("--no-teacher-md", dest="teacher_md", action="store_false",
                   help="skip the teacher's own MD (the stability reference)")
    p.add_argument("--write", action="store_true", help="write the section of benchmarks/RESULTS.md")
    p.add_argument("--section", default="bench_onpolicy",
                   help="its name (e.g. bench_onpolicy_sevennet for a periodic teacher's run)")
    p.add_argument("--from-result", metavar="JSON",
                   help="only write the report of an earlier run's result.json")
    return p.parse_args(argv)


def seeds(args):
    from mlff_calc.demo import seed_structures
    from mlff_calc.pipeline.distill import read_seeds

    if args.structures:
        return [a for _, a in read_seeds(args.structures)]
    return seed_structures()


# The offline runs: the quick preset's offline sampling (teacher MD at 500 K, 10 fs between frames, no
# rattles), stated here so they stay offline whatever the preset's on-policy settings are.
OFFLINE = {"sampling.interval": 20, "sampling.warmup": 200, "sampling.rattle": 0.0, "onpolicy.rounds": 0}


def _huber(text: str):
    return text if text == "preset" else None if text == "none" else float(text)


def common(args) -> dict:
    """Recipe overrides every run shares: no report extras, a short distill MD check (and the force loss)."""
    out = {"evaluation.nve_steps": 0, "md.steps": 200, "md.dtypes": ["float32"],
           "heldout.frames": args.heldout_frames, "training.run.num_threads": 1}
    if args.force_huber != "preset":
        out["training.loss.force_huber"] = args.force_huber
    return out


def run_distill(args, name: str, overrides: dict) -> dict:
    from mlff_calc.pipeline import distill

    t = time.monotonic()
    res = distill(args.teacher, seeds(args), Path(args.out) / name, preset="quick",
                  overrides={**common(args), **overrides}, quiet=True)
    state = json.loads((res.run_dir / "state.json").read_text())["stages"]
    train_s = sum(((rec.get("info") or {}).get("train") or rec.get("info") or {}).get("train_time_s") or 0
                  for rec in state.values())  # the first training and every round's warm start
    # the run's own stage times (a resumed call takes none); "onpolicy.round_XX" are parts of "onpolicy"
    stages_s = sum(rec.get("seconds") or 0.0 for n, rec in state.items() if "." not in n)
    return {"name": name, "dir": str(res.run_dir), "wall_s": time.monotonic() - t, "state": state,
            "train_s": train_s, "stages_s": stages_s}


def offline_calls(args, run_dir: Path) -> int:
    """Teacher calls of an offline run (the same count the on-policy budget uses)."""
    from mlff_calc.pipeline.distill import resolve_recipe
    from mlff_calc.pipeline.rounds import initial_teacher_calls
    from mlff_calc.pipeline.stages import Context
    from mlff_calc.pipeline.state import RunState

    state = RunState(run_dir)
    state.stages = json.loads((run_dir / "state.json").read_text())["stages"]
    ctx = Context(run_dir, resolve_recipe(run_dir, None, None, None), args.teacher, {},
                  [(str(k), a) for k, a in enumerate(seeds(args))], "", state=state)
    return initial_teacher_calls(ctx)


def test_set(args) -> list:
    """Labelled frames of independent teacher trajectories at every temperature (cached)."""
    import ase.io

    from mlff_calc.teachers import compute_labels, load_teacher
    from mlff_calc.workflow.sampling import SamplingConfig, sample_structures

    path = Path(args.out) / "test_frames.extxyz"
    if path.is_file():
        frames = ase.io.read(path, ":")
        if all("ref_energy" in f.info for f in frames):  # a cache from before energies were kept: redo
            return frames
    calc = load_teacher(args.teacher)
    config = SamplingConfig(temperatures=tuple(args.temperatures),
                            frames=args.test_frames * len(args.temperatures), interval=20, timestep=0.5,
                            friction=0.01, warmup=200, rattle=0.0, strain=0.0, seed=99)
    frames = []
    for frame in sample_structures([(str(k), a) for k, a in enumerate(seeds(args))], calc, config):
        labels = compute_labels(calc, frame)
        frame.arrays["ref_forces"] = labels["forces"]
        frame.info["ref_energy"] = float(labels["energy"])
        frames.append(frame)
    from mlff_calc import io

    with io.atomic_path(path) as tmp:
        ase.io.write(tmp, frames, format="extxyz")
    return frames


def force_mae(student: Path, frames) -> dict:
    """Force MAE (eV/Å) per temperature and over all frames, and ``energy_all``: per-atom energy MAE (eV)."""
    import numpy as np

    from mlff_calc import StudentCalculator

    calc = StudentCalculator.from_checkpoint(student, device="cpu")
    out = {}
    for t in sorted({f.info["temperature"] for f in frames}):
        sub = [f for f in frames if f.info["temperature"] == t]
        pred = np.concatenate([r["forces"] for r in calc.batch_calculate(sub)])
        ref = np.concatenate([f.arrays["ref_forces"] for f in sub])
        out[f"{t:g}"] = float(np.mean(np.abs(pred - ref)))
    results = calc.batch_calculate(frames)
    pred = np.concatenate([r["forces"] for r in results])
    out["all"] = float(np.mean(np.abs(pred - np.concatenate([f.arrays["ref_forces"] for f in frames]))))
    out["energy_all"] = float(np.mean([abs(r["energy"] - f.info["ref_energy"]) / len(f)
                                       for r, f in zip(results, frames)]))
    return out


def stability(args, make_calc, first_seed: int = 0) -> list[dict]:
    """Langevin MD (``make_calc()``'s calculator) from every seed at every temperature and velocity seed
    ``first_seed .. md_seeds - 1``: ps until unphysical.

    Unphysical: a blow-up (:class:`MDBlowUp`), or bonds that differ from the seed's at two checks in a row
    (``CHECK`` steps apart: a stretched bond is back within 50 fs, a dissociation or H transfer is not);
    the time reported is the first of the two.
    """
    from mlff_calc.errors import MDBlowUp
    from mlff_calc.md import run_md
    from mlff_calc.workflow.onpolicy import bonds

    steps = int(round(args.md_ps * 2000))
    rows = []
    for seed_atoms in seeds(args):
        for t in args.temperatures:
            for s in range(first_seed, args.md_seeds):
                calc = make_calc()
                atoms, done, why, changed_at = seed_atoms.copy(), 0, None, None
                ref = None if atoms.pbc.any() else bonds(atoms)
                while done < steps + (CHECK if changed_at is not None else 0) and why is None:
                    try:
                        run_md(atoms, calc, ensemble="nvt", temperature=t, timestep=0.5, steps=CHECK,
                               interval=CHECK, seed=1000 * s + done, friction=0.01, progress=False,
                               init_velocities=done == 0)
                    except MDBlowUp as exc:
                        why = exc.reason or "blow-up"
                        done += max(0, exc.step)
                        break
                    done += CHECK
                    if ref is not None and bonds(atoms) != ref:
                        if changed_at is not None:
                            why, done = "bonds changed", changed_at
                        else:
                            changed_at = done
                    else:
                        changed_at = None
                rows.append({"formula": seed_atoms.get_chemical_formula(), "temperature_k": t, "seed": s,
                             "ps": min(done, steps) / 2000, "physical": why is None, "reason": why})
    return rows


def cached_stability(args, name: str, make_calc) -> list[dict]:
    """:func:`stability`, cached in ``--out`` per run, length, temperatures and seeds; a cache with fewer
    velocity seeds gives its runs (seeds 0..k-1 are the same trajectories), only the others are run."""
    from mlff_calc import io

    def path(n_seeds):
        key = f"{args.md_ps:g}ps_{'-'.join(f'{t:g}' for t in args.temperatures)}_{n_seeds}seeds"
        return Path(args.out) / f"stability_{name}_{key}.json"

    if path(args.md_seeds).is_file():
        return json.loads(path(args.md_seeds).read_text())
    have = next((k for k in range(args.md_seeds - 1, 0, -1) if path(k).is_file()), 0)
    rows = json.loads(path(have).read_text()) if have else []
    rows += stability(args, make_calc, first_seed=have)
    order = {(f, t): i for i, (f, t) in enumerate(dict.fromkeys((r["formula"], r["temperature_k"])
                                                                for r in rows))}
    rows.sort(key=lambda r: (order[r["formula"], r["temperature_k"]], r["seed"]))
    io.write_json(path(args.md_seeds), rows)
    return rows


def main(argv=None) -> int:
    import torch

    from mlff_calc.pipeline.rounds import round_max_time

    torch.set_num_threads(1)
    args = parse(argv)
    if args.from_result:
        res = json.loads(Path(args.from_result).read_text())
        text = report(res, res["argv"], res.get("date"))
        print(text)
        if args.write:
            from _results import write_section

            write_section(HERE / "RESULTS.md", args.section, text)
        return 0
    t0 = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = {}
    offline_time = args.train_time + sum(round_max_time(args.round_time, r) for r in range(1, args.rounds + 1))
    # one value stays a number in the recipe, so runs made before --round-time took lists keep their key
    round_time = args.round_time if len(args.round_time) > 1 else args.round_time[0]
    runs["offline_full"] = run_distill(args, "offline_full", {
        **OFFLINE, "sampling.frames": args.offline_frames, "training.run.max_time": offline_time})
    full_calls = offline_calls(args, Path(runs["offline_full"]["dir"]))
    budget = int(full_calls * args.fraction)
    op, small_name = "onpolicy" + args.tag, "offline_small" + args.tag
    runs[op] = run_distill(args, op, {
        "sampling.frames": args.initial_frames, "sampling.rattle": 0.03, "sampling.interval": 10,
        "sampling.warmup": 100, "training.run.max_time": args.train_time, "onpolicy.rounds": args.rounds,
        "onpolicy.frames": args.round_frames, "onpolicy.md_steps": args.round_md_steps,
        "onpolicy.candidates": args.candidates,
        "onpolicy.temperature_factors": args.factors, "onpolicy.teacher_budget": budget,
        "onpolicy.train_max_time": round_time, "onpolicy.failure_score": args.failure_score})
    op_info = runs[op]["state"]["onpolicy"]["info"]
    # offline_small: as many frames as fit in the calls the on-policy run used (teacher MD frames cost
    # interval + 1 label each; the warm-up and start are fixed).
    per_frame, fixed = OFFLINE["sampling.interval"] + 1, (OFFLINE["sampling.warmup"] + 1) * len(seeds(args))
    small = max(3, int((op_info["teacher_calls"] - fixed) / per_frame / len(seeds(args))))
    runs[small_name] = run_distill(args, small_name, {
        **OFFLINE, "sampling.frames": small, "training.run.max_time": offline_time})
    from mlff_calc import StudentCalculator

    frames = test_set(args)
    rows = []
    for name in ("offline_full", small_name, op):
        r = runs[name]
        calls = op_info["teacher_calls"] if name == op else offline_calls(args, Path(r["dir"]))
        student = Path(r["dir"]) / "student.pt"
        md = cached_stability(args, name, lambda: StudentCalculator.from_checkpoint(student, device="cpu"))
        rows.append({"run": name, "teacher_calls": calls, "train_s": r["train_s"], "stages_s": r["stages_s"],
                     "mae": force_mae(student, frames), "md": md})
        print(json.dumps(rows[-1]), flush=True)
    if args.teacher_md:  # the reference: does the teacher itself keep the molecules intact?
        from mlff_calc.teachers import load_teacher

        rows.append({"run": f"teacher ({args.teacher})", "teacher_calls": None, "train_s": None, "mae": None,
                     "md": cached_stability(args, "teacher", lambda: load_teacher(args.teacher))})
    result = {"args": vars(args), "rows": rows, "rounds": op_info["rounds"], "stop": op_info["stop_reason"],
              "wall_s": time.monotonic() - t0, "test_frames": len(frames),
              "argv": list(argv if argv is not None else sys.argv[1:]),
              "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M}"}
    from mlff_calc import io

    io.write_json(out / "result.json", result)
    text = report(result, result["argv"], result["date"])
    print(text)
    if args.write:
        from _results import write_section

        write_section(HERE / "RESULTS.md", args.section, text)
    return 0


def report(res: dict, argv: list[str], date: str | None) -> str:
    import platform
    import subprocess

    a = res["args"]
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("Model name")), "?")
    cmd = "python benchmarks/bench_onpolicy.py " + shlex.join(argv)
    temps = [f"{t:g}" for t in a["temperatures"]]
    lines = ["## On-policy vs offline distill at matched teacher calls (`bench_onpolicy.py`)", "",
             f"- Machine: {model} (lscpu), {os.cpu_count()} CPUs (shared), torch 1 thread, "
             f"Python {platform.python_version()}; teacher {a['teacher']}",
             f"- Command: `{cmd}` ({date or '?'} UTC, "
             f"{res['wall_s'] / 60:.1f} min)",
             f"- Held-out: {res['test_frames']} frames of independent teacher Langevin trajectories "
             f"(seed 99) at {', '.join(temps)} K. MD: student Langevin (ASE, fixcm=False, 0.5 fs) "
             f"{a['md_ps']:g} ps x {a['md_seeds']} seed(s) per molecule and temperature; physical = no "
             "blow-up and the seed's bonds intact (1.3 x covalent radii; checked every 50 fs, a change must "
             "persist over two checks; periodic seeds: no blow-up, bonds not checked).",
             f"- On-policy: first student from {a['initial_frames']} frames/seed (rattles + short "
             "teacher MD), "
             f"budget {a['fraction']:.3f} x offline_full's calls; stop: {res['stop']}.", "",
             "| run | teacher calls | training s | distill s | energy MAE (meV/atom) "
             "| force MAE all (eV/Å) | "
             + " | ".join(f"MAE {t} K" for t in temps) + " | MD physical | "
             + " | ".join(f"{t} K" for t in temps) + " |",
             "|---|---:|---:|---:|---:|---:|" + "---:|" * len(temps) + "---|" + "---|" * len(temps)]
    for r in res["rows"]:
        md = r["md"]
        ok = sum(m["physical"] for m in md)
        per_t = []
        for t in a["temperatures"]:
            sub = [m for m in md if m["temperature_k"] == t]
            ok_t = sum(m["physical"] for m in sub)
            per_t.append(f"{ok_t}/{len(sub)} (min {min(m['ps'] for m in sub):g} ps)")
        if r["mae"] is None:  # the teacher's own MD: the stability reference
            lines.append(f"| {r['run']} | - | - | - | - | - | " + " | ".join("-" for _ in temps)
                         + f" | {ok}/{len(md)} | " + " | ".join(per_t) + " |")
            continue
        energy = r["mae"].get("energy_all")
        stages = r.get("stages_s")
        lines.append(f"| {r['run']} | {r['teacher_calls']} | {r['train_s']:.0f} | "
                     f"{'-' if stages is None else format(stages, '.0f')} | "
                     f"{'-' if energy is None else format(1e3 * energy, '.2f')} | {r['mae']['all']:.4f} | "
                     + " | ".join(f"{r['mae'].get(t, float('nan')):.4f}" for t in temps)
                     + f" | {ok}/{len(md)} | " + " | ".join(per_t) + " |")
    lines += ["", "On-policy rounds (held-out = the distill run's own held-out set, 500 K):", "",
              "| round | teacher calls (total) | held-out force MAE | student MD stable | scorer "
              "| max score |",
              "|---|---|---|---|---|---|"]
    for row in res["rounds"]:
        mae = (row.get("heldout") or {}).get("force_mae_ev_per_ang")
        md = f"{row['md_stable']}/{row['md_runs']}" if "md_runs" in row else "n/a"
        score = "n/a" if row.get("max_score") is None else f"{row['max_score']:.3f}"
        lines.append(f"| {row['round']} | {row['teacher_calls']} ({row['teacher_calls_total']}) | "
                     f"{'n/a' if mae is None else format(mae, '.4f')} | {md} | {row.get('scorer') or 'n/a'} "
                     f"| {score} |")
    failures = [f"{r['run']}: {m['formula']} {m['temperature_k']:g} K at {m['ps']:g} ps ({m['reason']})"
                for r in res["rows"] for m in r["md"] if not m["physical"]]
    if failures:
        lines += ["", "MD failures: " + "; ".join(failures)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
