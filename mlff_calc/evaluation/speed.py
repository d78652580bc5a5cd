"""Wall time per energy + forces call of several calculators on the same structures, MD-like."""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator


def time_calls(
    calcs: dict[str, BaseCalculator],
    structures: Sequence[Atoms],
    calls: int = 50,
    warmup: int = 2,
    displacement: float = 0.01,
    max_seconds: float = 30.0,
    seed: int = 0,
    progress: bool = True,
    block: int = 10,
) -> dict:
    """Median wall time (ms) per energy + forces call of each calculator, on identical inputs.

    Each structure gets ``warmup`` untimed calls per calculator (kernel compilation, caches, first
    neighbour list), then up to ``calls`` timed ones. Before every call the positions are the structure's
    plus fresh Gaussian noise of ``displacement`` Å, as in MD: every call is a real recomputation, and
    the student's Verlet skin keeps its neighbour list (an MD step rebuilds it only now and then).
    The calculators take turns in blocks of ``block`` calls on the same positions, so a load spike on a
    shared machine hits all of them alike, while each model's calls follow each other as in MD (turns of
    one call each put the other model's working set in the caches before every call: measured on the
    quickstart molecules, the student took 1.1-1.4x and GFN2-xTB 1.0-1.3x longer per call than in turns
    of ten). Calculators
    whose warm-up calls take more than ``max_seconds / (3 block)`` take turns call by call.
    Timing stops early after ``max_seconds`` per structure (at least 3 timed calls each) for slow teachers.
    50 calls per structure by default: a median over 10 is at the mercy of load spikes on a shared machine.

    Returns ``{"per_structure": [{"n_atoms", "formula", "<name>_ms": median}], "<name>_ms_per_call":
    median over all timed calls, "calls_per_model": count}``.
    """
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    times: dict[str, list[float]] = {name: [] for name in calcs}
    rows = []
    bar = tqdm(total=len(structures) * (warmup + calls), desc="speed", unit="call", disable=not progress)
    for base in structures:
        copies = {name: base.copy() for name in calcs}  # one Atoms per calculator: no shared caches
        for name, atoms in copies.items():
            atoms.calc = calc = calcs[name]
            calc.reset()
        mine: dict[str, list[float]] = {name: [] for name in calcs}
        slowest, turn, i = 0.0, block, 0
        start = time.perf_counter()
        while i < warmup + calls:
            if i >= warmup + 3 and time.perf_counter() - start > max_seconds:
                break
            n = warmup - i if i < warmup else min(turn, warmup + calls - i)  # the warm-up is one turn
            chunk = [base.positions + rng.normal(0.0, displacement, base.positions.shape) for _ in range(n)]
            for name, atoms in copies.items():
                for k, positions in enumerate(chunk):
                    atoms.positions = positions
                    t0 = time.perf_counter()
                    atoms.get_forces()  # MD order: forces first; the energy is then a cache hit for most calcs
                    atoms.get_potential_energy()
                    dt = time.perf_counter() - t0
                    if i + k >= warmup:
                        mine[name].append(dt)
                    else:
                        slowest = max(slowest, dt)
            if i < warmup:
                start = time.perf_counter()  # the time cap counts timed calls only
                turn = block if slowest * 3 * block <= max_seconds else 1
            i += n
            bar.update(n)
        for name, atoms in copies.items():
            atoms.calc = None
            times[name] += mine[name]
        rows.append({"n_atoms": len(base), "formula": base.get_chemical_formula(),
                     **{f"{name}_ms": 1e3 * float(np.median(mine[name])) for name in calcs}})
    bar.close()
    out = {f"{name}_ms_per_call": 1e3 * float(np.median(t)) for name, t in times.items()}
    out["calls_per_model"] = len(next(iter(times.values())))
    out["per_structure"] = rows
    return out
