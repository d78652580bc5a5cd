"""Molecular dynamics with the student (or any ASE calculator): ``run_md`` and ``mlff-calc md``.

    from mlff_calc import StudentCalculator
    from mlff_calc.md import run_md
    result = run_md(atoms, StudentCalculator.from_checkpoint("student.pt"), ensemble="nvt",
                    temperature=300, timestep=0.5, steps=10_000, traj="md.traj", log="md.log")
    result.ns_per_day, result.temperatures.mean(), result.drift_mev_per_atom_ps

Integrators (all from ASE 3.29):

==========  ===============  ===============================================================================
ensemble    thermostat       ASE class
==========  ===============  ===============================================================================
nve         (none)           ``VelocityVerlet``
nvt         langevin         ``Langevin`` (``friction`` in 1/fs; noise on all 3N degrees of freedom)
nvt         nose-hoover      ``NoseHooverChainNVT`` (chain of 3; ``tdamp`` = 100 x timestep by default)
npt         langevin         ``LangevinBAOAB``, hydrostatic: Langevin atoms, Langevin-Hoover isotropic cell
                             (Quigley & Probert 2004); ``pdamp`` = 1000 x timestep by default
npt         nose-hoover      ``IsotropicMTKNPT``: Nose-Hoover chains + Martyna-Tobias-Klein isotropic barostat
==========  ===============  ===============================================================================

NPT changes the volume, not the cell shape, and needs a fully periodic cell and a calculator with stress.

Blow-up detection (``MDBlowUp``) is :class:`mlff_calc.blowup.BlowUpWatch`, checked after every
``check_interval`` steps (default: every step): non-finite values, a force above 1000 eV/Å, a kinetic
temperature above 10 x max(target, 100 K), a molecule flying apart, an NPT volume off by 2x. A
calculator that refuses the structure mid-run (``ValueError``: overlapping atoms, non-finite positions)
or returns non-finite values (``ModelOutputError``) is a blow-up too. Anything else -- a kernel failure,
running out of memory, a bug -- propagates as itself: it is not physics.

On a blow-up the trajectory and log keep every frame written before it (the bad frame is never written),
and the exception carries ``step``, ``reason`` and the partial ``result``. Trajectory and log are written
under temporary names and renamed into place when the run ends, however it ends; ``traj`` ending in
``.xyz``/``.extxyz`` is written as extended XYZ, ``.traj`` as an ASE trajectory.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.md.logger import MDLogger
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta

from .blowup import MAX_FORCE, BlowUpWatch
from .errors import InputError, MDBlowUp, ModelOutputError, UncertaintyExceeded  # MDBlowUp: md.MDBlowUp is public
from .data.structures import TrajectoryWriter
from .io import commit, temporary_path
from .uncertainty_watch import WARN_UNCERTAINTY, UncertaintyWatch

ENSEMBLES = ("nve", "nvt", "npt")
THERMOSTATS = ("langevin", "nose-hoover")
TRAJECTORY_FORMATS = {".traj": "traj", ".xyz": "extxyz", ".extxyz": "extxyz"}


@dataclass
class MDResult:
    """What ``run_md`` measured. Arrays hold one value per logged frame (steps 0, interval, 2 interval, ...).

    ``drift_mev_per_atom_ps``: slope of a least-squares line through the conserved energy per atom vs
    time (meV/atom/ps); ``max_deviation_mev_per_atom``: max |E(t) - E(0)| per atom (meV). The conserved
    energy is the total energy for NVE and ASE's ``get_conserved_energy()`` (total + thermostat/barostat
    terms) for Nose-Hoover; Langevin has no conserved energy, so both are NaN there.
    """

    ensemble: str
    integrator: str  # the ASE class that ran, e.g. "IsotropicMTKNPT"
    n_atoms: int
    timestep_fs: float
    steps_done: int
    time_ps: float  # simulated time
    times_ps: np.ndarray
    total_energies: np.ndarray  # eV
    potential_energies: np.ndarray  # eV
    kinetic_energies: np.ndarray  # eV
    temperatures: np.ndarray  # K (kinetic)
    volumes: np.ndarray | None  # Å^3, NPT only
    conserved_energies: np.ndarray | None  # eV, see above; None for Langevin
    wall_s: float  # wall-clock seconds of the run (force calls, integrator, I/O)
    ns_per_day: float
    drift_mev_per_atom_ps: float
    max_deviation_mev_per_atom: float
    # The student's own uncertainty (a calculator with uncertainty=True; NaN / -1 / 0 otherwise): the largest
    # per-atom forces_uncertainty seen (eV/Å), its step, and the steps above the warning threshold (eV/Å).
    max_uncertainty: float = math.nan
    max_uncertainty_step: int = -1
    uncertainty_steps_above: int = 0
    uncertainty_warn_threshold: float = math.nan

    @property
    def final_temperature(self) -> float:
        return float(self.temperatures[-1]) if len(self.temperatures) else math.nan

    def summary(self) -> str:
        """A few human-readable lines (what ``mlff-calc md`` prints)."""
        lines = [
            f"{self.ensemble.upper()} ({self.integrator}): {self.steps_done} steps of "
            f"{self.timestep_fs:g} fs = {self.time_ps:.4g} ps "
            f"of {self.n_atoms} atoms in {self.wall_s:.1f} s ({self.ns_per_day:.3g} ns/day)",
            f"temperature: final {self.final_temperature:.1f} K, mean {np.mean(self.temperatures):.1f} K",
        ]
        if self.volumes is not None:
            lines.append(f"volume: {self.volumes[0]:.2f} -> {self.volumes[-1]:.2f} Å^3")
        if np.isfinite(self.drift_mev_per_atom_ps):
            what = "total" if self.ensemble == "nve" else "conserved"
            lines.append(f"{what} energy drift: {self.drift_mev_per_atom_ps:+.4f} meV/atom/ps, "
                         f"max deviation {self.max_deviation_mev_per_atom:.4f} meV/atom")
        if np.isfinite(self.max_uncertainty):
            lines.append(f"largest force uncertainty: {self.max_uncertainty:.3g} eV/Å at step "
                         f"{self.max_uncertainty_step}; {self.uncertainty_steps_above} steps above "
                         f"{self.uncertainty_warn_threshold:g} eV/Å")
        return "\n".join(lines)


def run_md(
    atoms: Atoms,
    calc=None,
    ensemble: str = "nvt",
    temperature: float = 300.0,
    timestep: float = 0.5,
    steps: int = 1000,
    traj: str | Path | None = None,
    log: str | Path | None = None,
    interval: int = 10,
    seed: int = 0,
    friction: float = 0.01,
    thermostat: str = "langevin",
    pressure: float = 1.01325,
    progress: bool = True,
    *,
    init_velocities: bool = True,
    tdamp: float | None = None,
    pdamp: float | None = None,
    check_interval: int = 1,
    max_force: float = MAX_FORCE,
    warn_uncertainty: float | None = WARN_UNCERTAINTY,
    max_uncertainty: float | None = None,
) -> MDResult:
    """Run MD on ``atoms`` (advanced in place, like ASE's dynamics) with ``calc`` (default: ``atoms.calc``).

    Args:
        ensemble: ``"nve"``, ``"nvt"`` or ``"npt"`` (table in the module docstring).
        temperature: target (NVT, NPT) and initial-velocity temperature, K.
        timestep: fs. steps: number of MD steps.
        traj: ASE ``.traj`` file, a frame every ``interval`` steps (step 0 included).
        log: ``ase.md.MDLogger`` text log (time, energies, temperature; stress for NPT), same interval.
        interval: steps between logged frames (also the resolution of the result arrays).
        seed: seeds the Maxwell-Boltzmann velocities and the Langevin noise.
        friction: Langevin friction, 1/fs (NVT; NPT uses 1/friction as its thermostat time).
        thermostat: ``"langevin"`` or ``"nose-hoover"`` (NVT and NPT).
        pressure: external pressure for NPT, bar.
        progress: tqdm bar on stderr with the speed in ns/day.
        init_velocities: draw Maxwell-Boltzmann velocities at ``temperature`` (zero total momentum, and
            zero angular momentum for molecules); ``False`` keeps the momenta ``atoms`` has.
        tdamp, pdamp: Nose-Hoover thermostat / barostat time constants, fs (defaults 100 and 1000 x timestep).
        check_interval: steps between blow-up checks. max_force: blow-up threshold, eV/Å.
        warn_uncertainty, max_uncertainty: per-atom force uncertainty, eV/Å, for a calculator that reports it
            (``StudentCalculator(uncertainty=True)``): the result keeps the largest value seen; steps above
            ``warn_uncertainty`` are counted and warned about once at the end; above ``max_uncertainty`` the
            run stops with :class:`~mlff_calc.errors.UncertaintyExceeded` (its ``result`` is the run so far,
            its ``atoms`` the structure; the trajectory keeps every frame before). Checked every step.

    Raises ``ValueError`` for bad options or a structure the ensemble cannot run (NPT of a molecule),
    :class:`MDBlowUp` when the run goes unphysical (see the module docstring) and
    :class:`UncertaintyExceeded` at ``max_uncertainty``.
    """
    ensemble, thermostat = str(ensemble).lower(), str(thermostat).lower().replace("_", "-")
    _check_options(atoms, ensemble, thermostat, temperature, timestep, steps, interval, friction,
                   check_interval, pressure, traj)
    if calc is not None:
        atoms.calc = calc
    if atoms.calc is None:
        raise ValueError("no calculator: pass calc= or set atoms.calc")
    uncertainty = UncertaintyWatch(atoms.calc, warn_uncertainty, max_uncertainty)
    rng = np.random.default_rng(seed)
    if init_velocities:
        _init_velocities(atoms, temperature, rng)
    atoms.get_forces()  # errors on the starting structure are input errors, not blow-ups: let them through

    dyn = _make_dynamics(atoms, ensemble, thermostat, temperature, timestep, friction, pressure, tdamp, pdamp,
                         rng)
    conserved = ensemble == "nve" or thermostat == "nose-hoover"
    frames: dict[str, list[float]] = {k: [] for k in ("t", "epot", "ekin", "T", "V", "cons")}
    watch = BlowUpWatch(atoms, temperature, max_force, npt=ensemble == "npt")
    outputs = {}  # final path -> temporary path; renamed into place when the run ends, however it ends
    writer = logger = None
    try:
        if traj is not None:
            outputs[Path(traj)] = temporary_path(traj)
            writer = TrajectoryWriter(outputs[Path(traj)], TRAJECTORY_FORMATS[Path(traj).suffix.lower()])
        if log is not None:
            outputs[Path(log)] = temporary_path(log)
            logger = MDLogger(dyn, atoms, str(outputs[Path(log)]), stress=ensemble == "npt", mode="w")
    except BaseException:
        for tmp in outputs.values():
            tmp.unlink(missing_ok=True)
        raise
    from tqdm.auto import tqdm

    bar = tqdm(total=steps, unit="step", disable=not progress, dynamic_ncols=True, leave=True)
    start = time.perf_counter()

    def record() -> None:
        epot, ekin = atoms.get_potential_energy(), atoms.get_kinetic_energy()
        if not np.isfinite(epot):
            raise watch.blow_up(dyn.nsteps, f"non-finite potential energy ({epot})")
        frames["t"].append(dyn.get_time() / (1000 * units.fs))
        frames["epot"].append(epot)
        frames["ekin"].append(ekin)
        frames["T"].append(atoms.get_temperature())
        frames["V"].append(atoms.get_volume() if ensemble == "npt" else math.nan)
        frames["cons"].append(_conserved_energy(dyn, epot + ekin) if conserved else math.nan)
        if writer is not None:
            writer.write(atoms)
        if logger is not None:
            logger()
        if progress and dyn.nsteps:
            speed = _ns_per_day(dyn.nsteps, timestep, time.perf_counter() - start)
            bar.set_postfix_str(f"{speed:.3g} ns/day, T={frames['T'][-1]:.0f} K", refresh=False)

    # Order matters: the check runs first, so a bad frame never reaches the trajectory or the log.
    dyn.attach(lambda: watch.check(dyn.nsteps), interval=check_interval)
    dyn.attach(lambda: uncertainty.check(dyn.nsteps, atoms), interval=1)
    dyn.attach(record, interval=interval)

    def result() -> MDResult:
        out = _make_result(frames, ensemble, type(dyn).__name__, len(atoms), timestep, dyn.nsteps,
                           time.perf_counter() - start, conserved)
        for key, value in uncertainty.summary().items():
            setattr(out, key, value)
        return out

    try:
        run = dyn.irun(int(steps))
        while True:
            try:
                next(run)
            except StopIteration:
                break
            except (MDBlowUp, UncertaintyExceeded):
                raise
            except (ValueError, ArithmeticError, ModelOutputError) as exc:
                # The calculator refused the structure mid-run (overlapping atoms, non-finite input) or gave
                # non-finite output: the structure has become garbage, which is a blow-up. Other errors (a
                # kernel failure, out of memory, a bug) are not physics and propagate as themselves.
                reason = f"the calculator raised {type(exc).__name__}: {exc}"
                raise watch.blow_up(dyn.nsteps + 1, reason) from exc
            bar.update(1 if dyn.nsteps else 0)
    except (MDBlowUp, UncertaintyExceeded) as exc:
        exc.result = result()
        kept = len(frames["t"])
        where = f" in {traj}" if traj is not None else ""
        exc.args = (f"{exc.args[0]}; kept {kept} frame{'' if kept == 1 else 's'}{where}"
                    + (f" (steps 0..{(kept - 1) * interval})" if kept else ""),)
        raise
    finally:
        bar.close()
        uncertainty.finish()
        if writer is not None:
            writer.close()
        if logger is not None:
            logger.close()
        for path, tmp in outputs.items():  # the frames written are good ones: keep them, whatever happened
            commit(tmp, path)
    return result()


def _check_options(atoms, ensemble, thermostat, temperature, timestep, steps, interval, friction,
                   check_interval, pressure=1.0, traj=None) -> None:
    from .data.structures import check_structure

    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {', '.join(ENSEMBLES)}, got {ensemble!r}")
    if thermostat not in THERMOSTATS:
        raise ValueError(f"thermostat must be one of {', '.join(THERMOSTATS)}, got {thermostat!r}")
    check_structure(atoms, "the MD structure")  # no atoms, NaN positions or a bad cell: before any integrator
    if traj is not None and Path(traj).suffix.lower() not in TRAJECTORY_FORMATS:
        raise InputError(f"trajectory {traj}: the name must end in .traj (ASE trajectory) or .xyz/.extxyz "
                         "(extended XYZ)")
    if not (timestep > 0 and math.isfinite(timestep)):
        raise ValueError(f"timestep must be > 0 fs, got {timestep}")
    if not temperature >= 0 or (ensemble != "nve" and not temperature > 0):
        raise ValueError(f"temperature must be > 0 K for {ensemble.upper()} (>= 0 for NVE), "
                         f"got {temperature}")
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a whole number >= 0, got {steps}")
    for name, value in (("interval", interval), ("check_interval", check_interval)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value}")
    if not (friction > 0 and math.isfinite(friction)):
        raise ValueError(f"friction must be a finite number > 0 (1/fs), got {friction}")
    if not math.isfinite(temperature):
        raise ValueError(f"temperature must be finite, got {temperature}")
    if not math.isfinite(pressure):
        raise ValueError(f"pressure must be finite (bar), got {pressure}")
    if ensemble == "npt" and not atoms.pbc.all():
        raise ValueError(f"NPT needs a fully periodic cell (this structure has pbc={atoms.pbc.tolist()}); "
                         f"use --ensemble nvt or nve for molecules, slabs and wires")


def _init_velocities(atoms: Atoms, temperature: float, rng: np.random.Generator) -> None:
    """Maxwell-Boltzmann momenta at ``temperature`` K, no net momentum (nor rotation, for a molecule)."""
    if temperature <= 0 or len(atoms) < 2:
        atoms.set_momenta(np.zeros((len(atoms), 3)))
        return
    thermalize_momenta(atoms, temperature, rng=rng)
    Stationary(atoms)
    if not atoms.pbc.any() and len(atoms) > 2:
        ZeroRotation(atoms)  # a free molecule spinning up is not temperature


def _make_dynamics(atoms, ensemble, thermostat, temperature, timestep, friction, pressure, tdamp, pdamp, rng):
    dt = timestep * units.fs
    tdamp = (tdamp if tdamp is not None else 100 * timestep) * units.fs
    pdamp = (pdamp if pdamp is not None else 1000 * timestep) * units.fs
    if ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, timestep=dt)
    if ensemble == "nvt" and thermostat == "langevin":
        from ase.md.langevin import Langevin

        # fixcm=False: noise on all 3N degrees of freedom samples the canonical ensemble exactly (ASE's
        # fixcm=True does not, and is deprecated); the centre of mass diffuses, which nothing here minds.
        return Langevin(atoms, timestep=dt, temperature_K=temperature, friction=friction / units.fs,
                        fixcm=False, rng=rng)
    if ensemble == "nvt":
        from ase.md.nose_hoover_chain import NoseHooverChainNVT

        return NoseHooverChainNVT(atoms, timestep=dt, temperature_K=temperature, tdamp=tdamp)
    if atoms.constraints:
        raise ValueError("NPT with constraints is not supported by ASE's NPT integrators; remove them")
    if thermostat == "langevin":
        from ase.md.langevinbaoab import LangevinBAOAB

        with warnings.catch_warnings():  # it announces its (documented) heuristic barostat mass
            warnings.filterwarnings("ignore", message="Using heuristic P_mass")
            # ASE's stress sign: a positive pressure is a negative external stress.
            return LangevinBAOAB(atoms, dt, temperature_K=temperature, externalstress=-pressure * units.bar,
                                 hydrostatic=True, T_tau=units.fs / friction, P_tau=pdamp, rng=rng)
    from ase.md.nose_hoover_chain import IsotropicMTKNPT

    return IsotropicMTKNPT(atoms, timestep=dt, temperature_K=temperature, pressure_au=pressure * units.bar,
                           tdamp=tdamp, pdamp=pdamp)


def _conserved_energy(dyn, total: float) -> float:
    get = getattr(dyn, "get_conserved_energy", None)
    return float(get()) if get is not None else total


def _ns_per_day(steps: int, timestep_fs: float, wall_s: float) -> float:
    return steps * timestep_fs * 1e-6 / wall_s * 86400.0 if wall_s > 0 else math.nan


def _make_result(frames, ensemble, integrator, n_atoms, timestep, steps_done, wall_s, conserved) -> MDResult:
    arrays = {k: np.asarray(v, dtype=float) for k, v in frames.items()}
    times = arrays["t"]
    drift = deviation = math.nan
    if conserved and len(times) >= 2:
        per_atom = arrays["cons"] / n_atoms
        drift = float(np.polyfit(times, per_atom, 1)[0]) * 1e3  # eV/atom/ps -> meV/atom/ps
        deviation = float(np.abs(per_atom - per_atom[0]).max()) * 1e3
    return MDResult(
        ensemble=ensemble,
        integrator=integrator,
        n_atoms=n_atoms,
        timestep_fs=float(timestep),
        steps_done=int(steps_done),
        time_ps=steps_done * timestep * 1e-3,
        times_ps=times,
        total_energies=arrays["epot"] + arrays["ekin"],
        potential_energies=arrays["epot"],
        kinetic_energies=arrays["ekin"],
        temperatures=arrays["T"],
        volumes=arrays["V"] if ensemble == "npt" else None,
        conserved_energies=arrays["cons"] if conserved else None,
        wall_s=wall_s,
        ns_per_day=_ns_per_day(steps_done, timestep, wall_s),
        drift_mev_per_atom_ps=drift,
        max_deviation_mev_per_atom=deviation,
    )
