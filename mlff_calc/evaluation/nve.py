"""The one NVE runner of the package (compare's NVE and distill's MD check), through
:func:`mlff_calc.md.run_md`, summarised for a report."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator

from ..errors import MDBlowUp


def run_nve(atoms: Atoms, calc: BaseCalculator, temperature: float = 300.0,
            timestep: float = 0.5, steps: int = 2000, interval: int = 10, traj: str | Path | None = None,
            log: str | Path | None = None, seed: int = 0, progress: bool = True) -> dict:
    """NVE from a copy of ``atoms``, velocities drawn at ``temperature`` K (``seed``), ``timestep`` in fs.

    Returns ``{"ok", "error", "steps", "steps_done", "n_atoms", "times_ps", "total_energies_ev",
    "temperatures_k", "drift_mev_per_atom_ps", "max_deviation_mev_per_atom", "mean_temperature_k",
    "ns_per_day", "wall_s", "traj"}`` (drift: slope of a straight-line fit to E_tot/atom; max deviation:
    max |E_tot(t) - E_tot(0)|/atom; both as ``run_md`` defines them). A blow-up is reported (``ok`` False,
    ``error`` says where, the series up to it kept), never raised: an unstable student is a result.
    """
    from ..md import run_md

    out = {"ok": True, "error": None, "steps": steps, "n_atoms": len(atoms),
           "traj": str(traj) if traj else None}
    t0 = time.perf_counter()
    try:
        res = run_md(atoms.copy(), calc, ensemble="nve", temperature=temperature, timestep=timestep,
                     steps=steps, traj=traj, log=log, interval=interval, seed=seed, progress=progress)
    except MDBlowUp as exc:  # physics only: a kernel failure or a bug is not caught here
        res = exc.result
        out.update(ok=False, error=str(exc))
        if res is None:
            out.update(steps_done=max(exc.step, 0), times_ps=np.zeros(0), total_energies_ev=np.zeros(0),
                       temperatures_k=np.zeros(0), wall_s=time.perf_counter() - t0,
                       drift_mev_per_atom_ps=None, max_deviation_mev_per_atom=None, mean_temperature_k=None,
                       ns_per_day=None)
            return out
    out.update(steps_done=res.steps_done, times_ps=res.times_ps, total_energies_ev=res.total_energies,
               temperatures_k=res.temperatures, wall_s=res.wall_s)
    stable = out["ok"] and len(res.times_ps) >= 2
    out.update(drift_mev_per_atom_ps=res.drift_mev_per_atom_ps if stable else None,
               max_deviation_mev_per_atom=res.max_deviation_mev_per_atom if stable else None,
               mean_temperature_k=float(np.mean(res.temperatures)) if stable else None,
               ns_per_day=res.ns_per_day if stable else None)
    return out
