"""Batched MD with the student in torch-sim: many structures, one model call per step for all of them.

    from mlff_calc.integrations.torchsim import StudentModel
    from mlff_calc.integrations.batched_md import run_batched_md
    result = run_batched_md(list_of_atoms, StudentModel("student.pt"), ensemble="nvt", temperature=300,
                            timestep=0.5, steps=1000, interval=10)
    result.temperatures, result.total_energies, result.atom_steps_per_s, result.final

Also ``mlff-calc md`` with several ``--structure`` files or ``--all-frames`` (:func:`run_cli`).
Units are ASE's (eV, Å, amu, fs for ``timestep``); torch-sim's "metal" units are the same system.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch_sim as ts
from ase import Atoms, units
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta

from ..errors import InputError, MDBlowUp
from .torchsim import StudentModel, batch_state

MAX_FORCE = 1e3  # eV/Å, as mlff_calc.md: beyond this the run is not physics any more


@dataclass
class BatchedMDResult:
    """One batched run. Arrays are ``(n_frames, n_systems)``, one row per logged step (0, interval, ...)."""

    ensemble: str
    n_systems: int
    n_atoms: list[int]
    timestep_fs: float
    steps_done: int
    times_ps: np.ndarray
    potential_energies: np.ndarray  # eV
    kinetic_energies: np.ndarray  # eV
    temperatures: np.ndarray  # K
    wall_s: float
    model_calls: int
    final: list[Atoms]

    @property
    def total_energies(self) -> np.ndarray:
        return self.potential_energies + self.kinetic_energies

    @property
    def atom_steps_per_s(self) -> float:
        return sum(self.n_atoms) * self.steps_done / self.wall_s if self.wall_s > 0 else math.nan

    def drift_mev_per_atom_ps(self) -> np.ndarray:
        """NVE: slope of the total energy per atom against time for each system (meV/atom/ps)."""
        if len(self.times_ps) < 2:
            return np.full(self.n_systems, math.nan)
        per_atom = self.total_energies / np.asarray(self.n_atoms)[None, :]
        return np.polyfit(self.times_ps, per_atom, 1)[0] * 1e3

    def summary(self) -> str:
        lines = [
            f"{self.ensemble.upper()} (torch-sim, one batch): {self.n_systems} structures, "
            f"{sum(self.n_atoms)} "
            f"atoms, {self.steps_done} steps of {self.timestep_fs:g} fs in {self.wall_s:.1f} s "
            f"({self.atom_steps_per_s:.4g} atom-steps/s, {self.model_calls} model calls)",
            f"temperature (last frame): mean {self.temperatures[-1].mean():.1f} K, "
            f"min {self.temperatures[-1].min():.1f} K, max {self.temperatures[-1].max():.1f} K",
        ]
        if self.ensemble == "nve":
            drift = self.drift_mev_per_atom_ps()
            lines.append(
                f"total energy drift: max |{np.abs(drift).max():.4f}| meV/atom/ps over the structures"
            )
        return "\n".join(lines)


def initial_momenta(atoms: Atoms, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """Maxwell-Boltzmann momenta without net momentum (and rotation, for a molecule), as ``mlff_calc.md``."""
    atoms = atoms.copy()
    thermalize_momenta(atoms, temperature, rng=rng)
    Stationary(atoms)
    if not atoms.pbc.any():
        ZeroRotation(atoms)
    return atoms.get_momenta()


def run_batched_md(
    structures: Sequence[Atoms],
    model: StudentModel,
    ensemble: str = "nvt",
    temperature: float = 300.0,
    timestep: float = 0.5,
    steps: int = 1000,
    interval: int = 10,
    seed: int = 0,
    friction: float = 0.01,
    momenta: Sequence[np.ndarray] | None = None,
    frame_callback=None,
) -> BatchedMDResult:
    """NVT (Langevin BAOAB, ``friction`` in 1/fs) or NVE (velocity Verlet) of all ``structures`` at once.

    ``timestep`` in fs. Initial momenta: ``momenta`` if given, else Maxwell-Boltzmann at ``temperature``
    (seeded, one generator for the whole batch). ``frame_callback(step, state)`` runs at every logged step.
    Raises :class:`MDBlowUp` naming the structure when forces or positions turn non-finite or a force
    exceeds 1000 eV/Å (checked at logged steps).
    """
    if ensemble not in ("nvt", "nve"):
        raise InputError(f"batched MD runs nvt (Langevin) or nve; got ensemble {ensemble!r}")
    if steps < 0 or interval < 1 or not timestep > 0:
        raise InputError("steps must be >= 0, interval >= 1 and timestep > 0")
    structures = list(structures)
    if not structures:
        raise InputError("no structures to simulate")
    device, dtype = model.device, model.dtype
    state = batch_state(structures, device, dtype)
    rng = np.random.default_rng(seed)
    if momenta is None:
        momenta = [initial_momenta(atoms, temperature, rng) for atoms in structures]
    p0 = torch.as_tensor(np.concatenate(momenta), dtype=dtype, device=device)

    dt = torch.tensor(timestep * units.fs, dtype=dtype, device=device)
    kT = torch.tensor(units.kB * temperature, dtype=dtype, device=device)
    if ensemble == "nvt":
        gamma = torch.tensor(friction / units.fs, dtype=dtype, device=device)
        init_fn, update_fn = ts.integrators.nvt_langevin(model=model, dt=dt, kT=kT, gamma=gamma, seed=seed)
    else:
        init_fn, update_fn = ts.integrators.nve(model=model, dt=dt, kT=kT, seed=seed)

    n_atoms = [len(a) for a in structures]
    counts = torch.tensor(n_atoms, device=device)
    # Degrees of freedom per structure, as ASE's get_temperature (3N; no constraints here).
    dof = 3.0 * counts.to(dtype)
    frames: dict[str, list] = {"t": [], "epot": [], "ekin": [], "T": []}
    # The O step of BAOAB draws from torch's global generator: fork it so the run is seeded and the
    # caller's random state is left alone.
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        start = time.perf_counter()
        calls0 = model.n_calls
        state = init_fn(state)
        state.momenta = p0.clone()
        _record(frames, 0, timestep, state, dof, structures, frame_callback)
        for step in range(1, steps + 1):
            state = update_fn(state)
            if step % interval == 0 or step == steps:
                _record(frames, step, timestep, state, dof, structures, frame_callback)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - start
    final = _to_atoms(state, structures)
    return BatchedMDResult(
        ensemble=ensemble,
        n_systems=len(structures),
        n_atoms=n_atoms,
        timestep_fs=float(timestep),
        steps_done=steps,
        times_ps=np.asarray(frames["t"]),
        potential_energies=np.asarray(frames["epot"]),
        kinetic_energies=np.asarray(frames["ekin"]),
        temperatures=np.asarray(frames["T"]),
        wall_s=wall,
        model_calls=model.n_calls - calls0,
        final=final,
    )


def _record(frames, step, timestep, state, dof, structures, callback) -> None:
    forces, positions = state.forces, state.positions
    bad_atoms = ~(torch.isfinite(forces).all(dim=1) & torch.isfinite(positions).all(dim=1))
    fmax = torch.linalg.vector_norm(forces, dim=1)
    if bool(bad_atoms.any()) or bool((fmax > MAX_FORCE).any()):
        atom = int(torch.nonzero(bad_atoms | (fmax > MAX_FORCE))[0, 0])
        system = int(state.system_idx[atom])
        what = (
            "non-finite forces or positions"
            if bool(bad_atoms[atom])
            else f"a force of {float(fmax[atom]):.3g} eV/Å"
        )
        raise MDBlowUp(
            f"MD blew up at step {step}: {what} in structure {system} "
            f"({structures[system].get_chemical_formula()})",
            step=step,
            reason=what,
        )
    ekin_atom = 0.5 * (state.momenta**2).sum(dim=1) / state.masses
    ekin = torch.zeros(dof.shape[0], dtype=ekin_atom.dtype, device=ekin_atom.device).index_add(
        0, state.system_idx, ekin_atom
    )
    frames["t"].append(step * timestep * 1e-3)
    frames["epot"].append(state.energy.detach().cpu().double().numpy())
    frames["ekin"].append(ekin.cpu().double().numpy())
    frames["T"].append((2.0 * ekin / (dof * units.kB)).cpu().double().numpy())
    if callback is not None:
        callback(step, state)


def _to_atoms(state, structures: Sequence[Atoms]) -> list[Atoms]:
    """The final frame of each structure as ``ase.Atoms`` with momenta (cells unchanged: NVT/NVE)."""
    positions = state.positions.detach().cpu().double().numpy()
    momenta = state.momenta.detach().cpu().double().numpy()
    out, start = [], 0
    for atoms in structures:
        stop = start + len(atoms)
        frame = atoms.copy()
        frame.positions = positions[start:stop]
        frame.set_momenta(momenta[start:stop])
        out.append(frame)
        start = stop
    return out


# ---- mlff-calc md with several structures ------------------------------------------------------------


def numbered_path(path: str | Path, index: int, count: int) -> Path:
    """``md.traj`` -> ``md.003.traj`` (zero-padded to the number of structures)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.{index:0{len(str(count - 1))}d}{path.suffix}")


def run_cli(args) -> int:
    """``mlff-calc md`` with several ``--structure`` files or ``--all-frames``: one torch-sim batch.

    Trajectories go to ``TRAJ`` with the structure's number before the suffix (``md.0.traj``, ...); the log
    is one table with a line per structure and logged step.
    """
    from ase.io import Trajectory

    from ..cli._common import default_of, given
    from ..data.structures import read_structures
    from ..io import atomic_write, check_output

    ensemble = args.ensemble or default_of(run_batched_md, "ensemble")
    if ensemble not in ("nvt", "nve") or (ensemble == "nvt" and args.thermostat not in (None, "langevin")):
        raise InputError(
            "several structures run as one torch-sim batch: --ensemble nvt (Langevin) or nve only; "
            f"got --ensemble {ensemble} --thermostat {args.thermostat}"
        )
    if args.keep_velocities:
        raise InputError("--keep-velocities is not supported for several structures yet")
    model_path = Path(args.model)
    paths = [Path(p) for p in args.structure]
    for what, path in [("model", model_path)] + [("structure", p) for p in paths]:
        if not path.is_file():
            raise FileNotFoundError(f"{what} file not found: {path}")
    structures: list[Atoms] = []
    for path in paths:  # the validating reader: no atoms, non-finite positions or a bad cell are named
        frames = read_structures(path)
        structures.extend(frames if args.all_frames else frames[-1:])
    overwrite = bool(getattr(args, "overwrite", False))
    inputs = [model_path, *paths]
    trajs = (
        [numbered_path(args.traj, i, len(structures)) for i in range(len(structures))] if args.traj else []
    )
    for path in trajs + ([Path(args.log)] if args.log else []):
        check_output(path, overwrite=overwrite, inputs=inputs, what="output")

    model = StudentModel(model_path, device=args.device, dtype=args.dtype)
    writers = [Trajectory(str(p), "w") for p in trajs]

    def write_frames(step, state):
        if not writers:
            return
        for w, atoms in zip(writers, _to_atoms(state, structures)):
            w.write(atoms)

    try:
        options = given(args, temperature="temperature", timestep="timestep", steps="steps",
                        interval="interval", seed="seed", friction="friction")
        result = run_batched_md(structures, model, ensemble=ensemble, frame_callback=write_frames, **options)
    finally:
        for w in writers:
            w.close()
    timestep = options.get("timestep", default_of(run_batched_md, "timestep"))
    if args.log:
        with atomic_write(args.log) as fh:
            fh.write("# step time[ps] structure Epot[eV] Ekin[eV] T[K]\n")
            for f, t in enumerate(result.times_ps):
                step = int(round(t * 1e3 / timestep))
                for s in range(result.n_systems):
                    fh.write(
                        f"{step} {t:.6f} {s} {result.potential_energies[f, s]:.8f} "
                        f"{result.kinetic_energies[f, s]:.8f} {result.temperatures[f, s]:.3f}\n"
                    )
    print(result.summary())
    if trajs:
        print(f"trajectories: {trajs[0]} ... {trajs[-1]}" if len(trajs) > 1 else f"trajectory: {trajs[0]}")
    if args.log:
        print(f"log: {args.log}")
    return 0
