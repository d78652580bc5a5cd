"""02 - Teacher vs student on one MD trajectory: energy and force errors, and the speed ratio.

Runs NVT MD with the student, then evaluates the teacher and the student on the same frames. The
errors tell you whether the student is trustworthy where its own dynamics goes; the median time per
call of each (first call excluded: model loading, compilation) gives the speed-up.

    python md_examples/02_teacher_vs_student.py --model runs/water/student.pt --structure water.xyz \
        --teacher orb-v2 --teacher-option device=cuda
    python md_examples/02_teacher_vs_student.py --model student.pt --structure mol.xyz --teacher gfn2-xtb
    python md_examples/02_teacher_vs_student.py ... --smoke        # few steps and frames (also with $CI set)
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from ase.io import read

from mlff_calc import StudentCalculator, load_teacher
from mlff_calc.md import run_md


def key_value(text: str):
    """``key=value`` -> (key, value), the value parsed as JSON when it can be (numbers, true, null)."""
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def timed_labels(calc, frames):
    """Energy (eV), forces (eV/Å) and wall time (s) of ``calc`` on each frame (a fresh copy: no caching)."""
    energies, forces, seconds = [], [], []
    for frame in frames:
        atoms = frame.copy()
        atoms.calc = calc
        start = time.perf_counter()
        forces.append(atoms.get_forces())
        energies.append(atoms.get_potential_energy())
        seconds.append(time.perf_counter() - start)
    return np.array(energies), forces, np.array(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="student checkpoint (student.pt)")
    parser.add_argument("--structure", required=True, help="starting structure, any ASE-readable file")
    parser.add_argument("--teacher", default="emt", help="orb-v2 | gfn2-xtb | sevennet-0 | emt (default emt)")
    parser.add_argument("--teacher-option", action="append", default=[], type=key_value, metavar="KEY=VALUE",
                        help="teacher option, repeatable (e.g. device=cuda, weights=orb.ckpt)")
    parser.add_argument("--temperature", type=float, default=300.0, help="K (default 300)")
    parser.add_argument("--steps", type=int, default=1000, help="student MD steps of 0.5 fs (default 1000)")
    parser.add_argument("--frames", type=int, default=50, help="frames to compare (default 50)")
    parser.add_argument("--device", default="auto", help="student device: auto | cpu | cuda")
    parser.add_argument("--smoke", action="store_true", help="few steps and frames (also when $CI is set)")
    args = parser.parse_args()
    if args.smoke or os.environ.get("CI"):
        args.steps, args.frames = 20, 5

    student = StudentCalculator.from_checkpoint(args.model, device=args.device)
    teacher = load_teacher(args.teacher, **dict(args.teacher_option))

    # 1. Student NVT MD; a frame every steps/frames steps (not the starting structure: the student's own).
    with tempfile.TemporaryDirectory() as tmp:
        traj = Path(tmp) / "md.traj"
        result = run_md(read(args.structure), student, ensemble="nvt", temperature=args.temperature,
                        steps=args.steps, traj=traj, interval=max(1, args.steps // args.frames),
                        progress=False)
        frames = read(traj, "1:")
    print(f"student MD: {result.steps_done} steps, {result.time_ps:.3g} ps, {result.ns_per_day:.3g} ns/day, "
          f"mean T {result.temperatures.mean():.0f} K; "
          f"comparing {len(frames)} frames of {len(frames[0])} atoms")

    # 2. Both calculators on the same frames.
    e_t, f_t, s_t = timed_labels(teacher, frames)
    e_s, f_s, s_s = timed_labels(student, frames)
    n = len(frames[0])
    df = np.concatenate(f_s) - np.concatenate(f_t)
    cos = [np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12) for a, b in zip(f_s, f_t)]
    de = (e_s - e_t) / n  # eV/atom
    print(f"energy MAE: {np.abs(de).mean() * 1e3:.2f} meV/atom "
          f"(after removing the mean offset: {np.abs(de - de.mean()).mean() * 1e3:.2f})")
    print(f"force MAE: {np.abs(df).mean():.4f} eV/Å, RMSE {np.sqrt((df ** 2).mean()):.4f} eV/Å, "
          f"max |dF| {np.linalg.norm(df, axis=1).max():.3f} eV/Å, mean cosine {np.mean(cos):.4f}")

    # 3. Speed: median per call, the first call (loading, compilation, neighbour-list setup) excluded.
    t_teacher, t_student = (np.median(s[1:] if len(s) > 1 else s) for s in (s_t, s_s))
    print(f"median time per call: teacher ({args.teacher}) {t_teacher * 1e3:.2f} ms, "
          f"student {t_student * 1e3:.2f} ms")
    ratio = t_teacher / t_student
    verdict = f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower"
    print(f"speed ratio (teacher time / student time): {ratio:.2f}, the student is {verdict}")


if __name__ == "__main__":
    main()
