"""Python overhead of ``StudentCalculator.calculate`` and the throughput of ``batch_calculate``.

    python benchmarks/bench_calc_overhead.py [--repeats 2000] [--dtype float32]

1. *Overhead*: an MD-like loop on ethanol (every call moves the atoms by ~0.01 Å, so ASE sees a change
   and the skin list is reused) timing ``atoms.get_forces()`` -- the whole ASE round trip: base-class
   bookkeeping, validation, skin check, graph, results -- with the model call replaced by a stub that
   returns a precomputed output. The model call alone is timed separately. Medians over the calls.
2. *Batch*: 64 rattled ethanols, ``batch_calculate`` (one call) against 64 one-by-one ``get_forces``
   on one calculator; throughput in atoms*calls/s, median of a few interleaved repeats.

Times are CPU times of the calling thread (one torch thread), so other processes on a shared machine
disturb them less than wall-clock times.

Works on the code before and after the graph refactor (it detects which API it talks to).
"""

from __future__ import annotations

import argparse
import statistics
import time

clock = time.thread_time  # CPU time of this thread: robust to other processes on a shared machine

import numpy as np
import torch

from mlff_calc import StudentCalculator, StudentForceField
from mlff_calc.model.student import randomize_parameters
from mlff_calc.testing.structures import organic_molecule


def _calculator(dtype: str) -> StudentCalculator:
    model = randomize_parameters(StudentForceField(), std=0.3, seed=0)  # production size: 128/3/20
    return StudentCalculator(model, device="cpu", dtype=dtype, skin=1.0)


def _stub_model(calc: StudentCalculator, atoms) -> None:
    """Replace the model call by one returning a fixed, precomputed output."""
    if hasattr(calc.model, "inference"):  # after: calculate -> model.inference(graph, want_stress)
        graph = calc.converter(atoms)
        fixed = calc.model.inference(graph, False)
        calc.model.inference = lambda graph, want_stress=False: fixed
    else:  # before: calculate -> model(data, compute_forces=..., compute_stress=...)
        data = calc.converter(atoms)
        fixed = calc.model(data, compute_forces=True, compute_stress=False)
        model = calc.model
        calc.model = lambda data, **kw: fixed
        calc.model.metadata = model.metadata


def _model_only(calc: StudentCalculator, atoms, repeats: int) -> float:
    times = []
    if hasattr(calc.model, "inference"):
        graph = calc.converter(atoms)
        for _ in range(repeats):
            t = clock()
            calc.model.inference(graph, False)
            times.append(clock() - t)
    else:
        data = calc.converter(atoms)
        for _ in range(repeats):
            t = clock()
            calc.model(data, compute_forces=True, compute_stress=False)
            times.append(clock() - t)
    return statistics.median(times)


def _md_loop(calc: StudentCalculator, repeats: int) -> float:
    atoms = organic_molecule()
    atoms.calc = calc
    rng = np.random.default_rng(0)
    origin = atoms.positions.copy()
    times = []
    for step in range(repeats):
        atoms.positions = origin + 0.01 * np.sin(0.1 * step + rng.uniform(0, 6.3, origin.shape))
        t = clock()
        atoms.get_forces()
        times.append(clock() - t)
    return statistics.median(times)


def overhead(dtype: str, repeats: int) -> dict:
    atoms = organic_molecule()
    real = _calculator(dtype)
    model_time = _model_only(real, atoms, repeats // 4)
    total = _md_loop(real, repeats // 4)
    stubbed = _calculator(dtype)
    _stub_model(stubbed, atoms)
    over = _md_loop(stubbed, repeats)
    return {"overhead_ms": 1e3 * over, "model_ms": 1e3 * model_time, "total_ms": 1e3 * total}


def batch_ratio(dtype: str, n: int = 64, repeats: int = 5) -> dict:
    images = [organic_molecule(seed=k) for k in range(n)]
    n_atoms = sum(len(a) for a in images)
    calc = _calculator(dtype)
    calc.batch_calculate(images[:2])  # warm-up
    one, many = [], []
    for _ in range(repeats):  # interleaved
        t = clock()
        for atoms in images:
            calc.get_forces(atoms)
            calc.reset()
        one.append(clock() - t)
        t = clock()
        calc.batch_calculate(images)
        many.append(clock() - t)
    t_one, t_many = statistics.median(one), statistics.median(many)
    return {"one_by_one_atoms_per_s": n_atoms / t_one, "batch_atoms_per_s": n_atoms / t_many,
            "ratio": t_one / t_many, "one_by_one_ms": 1e3 * t_one, "batch_ms": 1e3 * t_many}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    o = overhead(args.dtype, args.repeats)
    print(f"ethanol {args.dtype}: calculate overhead (model stubbed) {o['overhead_ms']:.4f} ms, "
          f"model call {o['model_ms']:.3f} ms, whole get_forces {o['total_ms']:.3f} ms (medians)")
    b = batch_ratio(args.dtype)
    print(f"64 ethanols: one-by-one {b['one_by_one_ms']:.1f} ms ({b['one_by_one_atoms_per_s']:.0f} atoms/s), "
          f"batch_calculate {b['batch_ms']:.1f} ms ({b['batch_atoms_per_s']:.0f} atoms/s): "
          f"ratio {b['ratio']:.1f}x")


if __name__ == "__main__":
    main()
