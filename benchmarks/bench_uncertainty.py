"""The student's uncertainty (``StudentCalculator(uncertainty=True)``): does it rank errors, what does it cost?

    python benchmarks/bench_uncertainty.py --model runs/demo/student.pt      # writes the bench_uncertainty section
    python benchmarks/bench_uncertainty.py --model ... --frames 5 --rounds 3 --no-write    # quick look

The student must be a quickstart student (GFN2-xTB on ethanol, methylamine, acetaldehyde: ``make demo``)
with an uncertainty calibration (every student trained by this version has one; ``mlff-calc calibrate``
adds one to an older checkpoint). Two measurements, one thread:

- **ranking**: held-out frames the student never saw, from Langevin MD (0.5 fs, friction 0.01/fs,
  ``fixcm=False``, 200 warm-up steps then a frame every 20 steps) at 300, 600, 900 and 1200 K of each
  molecule, driven once by the teacher and once by the student (the frames on-policy rounds label), all
  labelled by GFN2-xTB. Per structure: predicted = RMS over atoms of ``forces_uncertainty``, observed =
  RMS over atoms of ``|F_student - F_teacher|``; Spearman rank correlation over all frames, per source and
  per temperature, plus per atom and for ``energy_uncertainty`` vs ``|ΔE|``. A reliability figure (binned
  predicted vs observed) goes to ``benchmarks/uncertainty_reliability.png``.
- **overhead**: ethanol, ``atoms.get_forces()`` with fresh 0.01 Å noise before every call, calculators with
  uncertainty off and on on the same weights, taking turns round by round; median over rounds of each
  round's median.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before tblite and torch load

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _results import cpu_name, publish  # noqa: E402

MOLECULES = {"ethanol": "CH3CH2OH", "methylamine": "H3CNH2", "acetaldehyde": "CH3CHO"}
TEMPERATURES = (300, 600, 900, 1200)
FIGURE = HERE / "uncertainty_reliability.png"


def held_out_frames(student, teacher, frames: int, seed: int = 0) -> list:
    """Frames of teacher-driven and student-driven Langevin MD, labelled by the teacher (``atoms.info``:
    source, molecule, temperature; forces and energy in ``atoms.info``)."""
    from ase import units
    from ase.build import molecule
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    out = []
    for source, calc in (("teacher MD", teacher), ("student MD", student)):
        for m, (name, g2) in enumerate(MOLECULES.items()):
            for t, temperature in enumerate(TEMPERATURES):
                atoms = molecule(g2)
                atoms.calc = calc
                rng = np.random.default_rng([seed, m, t, source == "student MD"])
                MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
                dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=temperature, friction=0.01, rng=rng,
                               fixcm=False)
                try:
                    dyn.run(200)
                    for _ in range(frames):
                        dyn.run(20)
                        frame = atoms.copy()
                        frame.info.update(source=source, molecule=name, temperature=temperature)
                        out.append(frame)
                except Exception as exc:  # a student trajectory that breaks: keep the frames before it
                    print(f"  {source} {name} {temperature} K stopped: {exc}", flush=True)
    for frame in out:
        frame.calc = teacher
        frame.info["ref_energy"] = frame.get_potential_energy()
        frame.info["ref_forces"] = frame.get_forces().copy()
        frame.calc = None
    return out


def ranking(calc, frames: list) -> dict:
    from mlff_calc import uncertainty as U

    preds = calc.batch_calculate(frames)
    n_atoms = [len(a) for a in frames]
    forces = np.concatenate([p["forces"] for p in preds])
    ref = np.concatenate([a.info["ref_forces"] for a in frames])
    unc = np.concatenate([p["forces_uncertainty"] for p in preds])
    predicted, observed = U.structure_force_errors(forces, ref, unc, n_atoms)
    maxima = np.array([p["forces_uncertainty"].max() for p in preds])
    atom_err = np.linalg.norm(forces - ref, axis=1)
    e_unc = np.array([p["energy_uncertainty"] for p in preds])
    e_err = np.abs(np.array([p["energy"] - a.info["ref_energy"] for p, a in zip(preds, frames)]))
    sources = np.array([a.info["source"] for a in frames])
    temps = np.array([a.info["temperature"] for a in frames])
    rho = U.rank_correlation
    return {
        "n_frames": len(frames), "n_atoms": int(sum(n_atoms)),
        "observed_min": float(observed.min()), "observed_median": float(np.median(observed)),
        "observed_max": float(observed.max()),
        "rho_structure_rms": rho(predicted, observed), "rho_structure_max": rho(maxima, observed),
        "rho_atom": rho(unc, atom_err), "rho_energy": rho(e_unc, e_err),
        "by_source": {s: rho(predicted[sources == s], observed[sources == s]) for s in np.unique(sources)},
        "by_temperature": {int(t): rho(predicted[temps == t], observed[temps == t]) for t in TEMPERATURES
                           if (temps == t).sum() >= 3},
        "mean_ratio": float(np.sqrt(np.mean(predicted**2)) / np.sqrt(np.mean(observed**2))),
        "reliability_atoms": U.reliability(unc, atom_err),
        "reliability_structures": U.reliability(predicted, observed),
    }


def overhead(model_path: str, rounds: int, calls: int) -> dict:
    import torch
    from ase.build import molecule

    from mlff_calc import StudentCalculator

    torch.set_num_threads(1)
    calcs = {"off": StudentCalculator.from_checkpoint(model_path, device="cpu"),
             "on": StudentCalculator.from_checkpoint(model_path, device="cpu", uncertainty=True)}
    per_round: dict[str, list] = {k: [] for k in calcs}
    for r in range(rounds + 1):  # round 0 warms up
        for name, calc in calcs.items():
            atoms = molecule("CH3CH2OH")
            base = atoms.positions.copy()
            atoms.calc = calc
            rng = np.random.default_rng(r)
            times = []
            for _ in range(calls):
                atoms.positions = base + rng.normal(0.0, 0.01, base.shape)
                t0 = time.perf_counter()
                atoms.get_forces()
                times.append(time.perf_counter() - t0)
            if r:
                per_round[name].append(statistics.median(times) * 1e3)
    off, on = statistics.median(per_round["off"]), statistics.median(per_round["on"])
    return {"off_ms": off, "on_ms": on, "overhead_pct": 100.0 * (on / off - 1.0), "rounds": rounds, "calls": calls}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/demo/student.pt", help="calibrated quickstart student.pt")
    parser.add_argument("--frames", type=int, default=15, help="frames per (source, molecule, temperature)")
    parser.add_argument("--rounds", type=int, default=15, help="overhead rounds (on/off interleaved)")
    parser.add_argument("--calls", type=int, default=300, help="calls per round")
    parser.add_argument("--label", default="", help="how the student was made (printed with the numbers)")
    parser.add_argument("--no-write", dest="write", action="store_false", help="print only")
    args = parser.parse_args(argv)

    import torch

    from mlff_calc import StudentCalculator, load_teacher
    from mlff_calc.evaluation import plots

    torch.set_num_threads(1)
    calc = StudentCalculator.from_checkpoint(args.model, device="cpu", uncertainty=True)
    t0 = time.monotonic()
    frames = held_out_frames(StudentCalculator.from_checkpoint(args.model, device="cpu"),
                             load_teacher("gfn2-xtb"), args.frames)
    rank = ranking(calc, frames)
    cost = overhead(args.model, args.rounds, args.calls)
    info = calc.uncertainty.info
    lines = [
        "## Uncertainty: ranking of errors and cost (`bench_uncertainty.py`)",
        "",
        f"- Machine: {cpu_name()}, {len(os.sched_getaffinity(0))} cores (1 thread used); "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {time.monotonic() - t0:.0f} s.",
        f"- Command: `python benchmarks/bench_uncertainty.py {shlex.join(argv if argv is not None else sys.argv[1:])}`",
        f"- Student: `{args.model}` (hidden {calc.model.hidden_dim}{'; ' + args.label if args.label else ''}), "
        "LLPR calibration over "
        f"{info.get('fit_frames')} training frames, scales from {info.get('calibration_frames')} validation frames.",
        f"- Held-out: {rank['n_frames']} frames ({rank['n_atoms']} atoms), teacher- and student-driven Langevin MD "
        f"at {', '.join(map(str, TEMPERATURES))} K, labelled by GFN2-xTB; per-structure force error "
        f"{rank['observed_min']:.3f} .. {rank['observed_median']:.3f} (median) .. {rank['observed_max']:.3f} eV/Å.",
        "",
        "| Spearman rank correlation with the true error | value |",
        "|---|---:|",
        f"| per structure: RMS of `forces_uncertainty` vs force error (all frames) | **{rank['rho_structure_rms']:.3f}** |",
        f"| per structure: max of `forces_uncertainty` vs force error | {rank['rho_structure_max']:.3f} |",
        *[f"| per structure, {s} frames only | {v:.3f} |" for s, v in rank["by_source"].items()],
        *[f"| per structure, {t} K frames only | {v:.3f} |" for t, v in rank["by_temperature"].items()],
        f"| per atom: `forces_uncertainty` vs \\|ΔF_i\\| | {rank['rho_atom']:.3f} |",
        f"| per structure: `energy_uncertainty` vs \\|ΔE\\| | {rank['rho_energy']:.3f} |",
        "",
        f"Calibration: RMS predicted / RMS observed per-structure force error = {rank['mean_ratio']:.2f} on these "
        f"(hotter than training) frames; figure `benchmarks/{FIGURE.name}`.",
        "",
        "| ethanol, 1 thread, `get_forces` | ms per call (median of round medians) |",
        "|---|---:|",
        f"| uncertainty off | {cost['off_ms']:.3f} |",
        f"| uncertainty on | {cost['on_ms']:.3f} |",
        f"| overhead | **{cost['overhead_pct']:+.1f}%** ({cost['rounds']} rounds x {cost['calls']} calls, interleaved) |",
    ]
    if args.write:
        plots.reliability(FIGURE, rank["reliability_atoms"], rank["reliability_structures"])
    publish("bench_uncertainty", "\n".join(lines) + "\n", args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
