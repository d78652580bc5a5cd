"""Sampling: diverse configurations around seed structures, for the teacher to label afterwards.

Three modes, each seed structure's ``frames`` split evenly across them (earlier modes get the remainder;
see :meth:`SamplingConfig.plan`, which also covers single-atom seeds):

* ``md``: Langevin MD driven by the teacher, one trajectory per temperature. Velocities start from a
  Maxwell-Boltzmann distribution; after ``warmup`` steps, every ``interval``-th step is kept. A
  trajectory that blows up (a teacher error, or any rule of :class:`mlff_calc.blowup.BlowUpWatch`, the
  detector ``mlff-calc md`` uses too; checked every step) stops with a :class:`SamplingWarning`; nothing
  after the last good frame is kept.
* ``rattle``: the seed with Gaussian displacements, std drawn per frame in [0.5, 1.5] x ``rattle`` (Å).
* ``strain`` (fully periodic seeds only): the cell deformed by a random symmetric strain with
  components in [-``strain``, ``strain``], atoms scaled with it, then rattled like ``rattle`` frames
  (a perfect crystal strained uniformly has zero forces by symmetry: nothing for the student to learn).

Frames carry positions, numbers, cell and pbc (plus a seed's ``charge``/``spin``/``multiplicity`` info
and initial charges/magnetic moments, which define the electronic state a teacher computes) and never a
teacher label. ``info`` records the origin: ``seed_index``, ``source`` (``file@frame``), ``mode``,
``temperature`` (K, target; 0 outside MD), ``step`` (MD step, or the draw number for rattle/strain) and,
for MD frames, ``kinetic_temperature`` (K, instantaneous).

Every random stream derives from ``(seed, seed_index, mode, temperature index)``: the output is
reproducible for a given seed and does not depend on the order things run in.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import BaseCalculator
from ase.constraints import FixCom
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, ZeroRotation

from ..blowup import BlowUpWatch
from ..data.structures import read_structures
from ..errors import InputError, MDBlowUp

try:  # ASE >= 3.29 (MaxwellBoltzmannDistribution is deprecated there)
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # pragma: no cover - older ASE
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    def thermalize_momenta(atoms, temperature_K, *, rng=None):
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)

_MODE_IDS = {"md": 0, "rattle": 1, "strain": 2, "seed": 3}
_KEPT_INFO = ("charge", "spin", "multiplicity")  # electronic state, not a label
_KEPT_ARRAYS = ("initial_charges", "initial_magmoms")


class SamplingWarning(UserWarning):
    """An MD trajectory was stopped early (blow-up); the frames before it are kept."""


@dataclass(frozen=True)
class SamplingConfig:
    """What to sample around each seed structure (units: K, fs, Å, 1/fs)."""

    temperatures: tuple[float, ...] = (300.0,)  # K, one Langevin trajectory each
    frames: int = 100  # per seed structure, over all modes
    interval: int = 10  # MD steps between kept frames
    timestep: float = 1.0  # fs
    friction: float = 0.01  # 1/fs; Langevin coupling (relaxes the kinetic temperature in ~1/friction fs)
    warmup: int = 0  # MD steps run before the first kept frame (a seed at a minimum starts at ~T/2)
    rattle: float = 0.05  # Å; 0 disables rattle frames (and the rattle of strain frames)
    strain: float = 0.02  # max strain component; 0 disables strain frames
    seed: int = 0

    def __post_init__(self):
        temps = tuple(float(t) for t in self.temperatures)
        object.__setattr__(self, "temperatures", temps)
        checks = [
            (len(temps) > 0 and all(np.isfinite(t) and t > 0 for t in temps),
             "temperatures must be > 0 K", temps),
            (int(self.frames) >= 1, "frames must be >= 1", self.frames),
            (int(self.interval) >= 1, "interval must be >= 1 step", self.interval),
            (0 < self.timestep <= 10, "timestep must be in (0, 10] fs", self.timestep),
            (self.friction > 0, "friction must be > 0 (1/fs)", self.friction),
            (int(self.warmup) >= 0, "warmup must be >= 0 steps", self.warmup),
            (0 <= self.rattle <= 1, "rattle must be in [0, 1] Å", self.rattle),
            (0 <= self.strain < 0.5, "strain must be in [0, 0.5)", self.strain),
        ]
        for ok, message, value in checks:
            if not ok:
                raise InputError(f"{message}, got {value}")

    def plan(self, atoms: Atoms) -> list[tuple[str, float, int, int]]:
        """``[(mode, temperature, stream, n_frames)]`` for the seed ``atoms``.

        MD at each temperature, then rattle, then strain (fully periodic only), ``frames`` split evenly.
        A single atom has nothing to sample but strain (with FixCom it cannot even move): it gets strain
        frames when periodic, else one ``seed`` frame, the structure itself. ``stream`` numbers the
        random stream of the mode (the temperature's position for MD).
        """
        movable = len(atoms) > 1
        modes = [("md", t, i) for i, t in enumerate(self.temperatures)] if movable else []
        if self.rattle > 0 and movable:
            modes.append(("rattle", 0.0, 0))
        if self.strain > 0 and atoms.pbc.all():
            modes.append(("strain", 0.0, 0))
        if not modes:
            return [("seed", 0.0, 0, 1)]
        return [(*mode, n) for mode, n in zip(modes, split_frames(self.frames, len(modes))) if n > 0]


def read_seed_files(paths: Sequence[str | os.PathLike]) -> list[tuple[str, Atoms]]:
    """Every frame of every file, as ``[(source "file@index", atoms)]`` (read with ``read_structures``).

    Raises ``FileNotFoundError`` for a missing file and ``InputError`` (a ``ValueError``) for an unreadable
    or empty one, or for a structure no teacher can use (no atoms, non-finite positions, a bad cell).
    """
    if not paths:
        raise InputError("no structure files given")
    return [(f"{path}@{i}", atoms) for path in map(str, paths)
            for i, atoms in enumerate(read_structures(path))]


def split_frames(total: int, n_modes: int) -> list[int]:
    """``total`` frames over ``n_modes`` modes as evenly as possible; the first modes get the remainder."""
    base, extra = divmod(total, n_modes)
    return [base + (i < extra) for i in range(n_modes)]


def sample_structures(
    seeds: Sequence[tuple[str, Atoms]],
    calc: BaseCalculator,
    config: SamplingConfig,
    on_frame: Callable[[Atoms], None] | None = None,
) -> Iterator[Atoms]:
    """Yield sampled frames seed by seed, mode by mode (see the module docstring). ``calc`` drives the MD.

    ``on_frame`` is called for every yielded frame (progress bars). Order and content are deterministic.
    """
    for seed_index, (source, seed_atoms) in enumerate(seeds):
        for mode, temperature, stream, n in config.plan(seed_atoms):
            key = [config.seed, seed_index, _MODE_IDS[mode], stream]
            rng = np.random.default_rng(np.random.SeedSequence(key))
            if mode == "md":
                frames = md_frames(seed_atoms, calc, temperature, n, config, rng, label=source)
            elif mode == "rattle":
                frames = rattle_frames(seed_atoms, n, config.rattle, rng)
            elif mode == "strain":
                frames = strain_frames(seed_atoms, n, config.strain, config.rattle, rng)
            else:
                frames = [_bare_copy(seed_atoms, seed_atoms.positions, seed_atoms.cell.array)]
                frames[0].info["step"] = 0
            for frame in frames:
                frame.info.update(seed_index=seed_index, source=source, mode=mode, temperature=temperature)
                if on_frame is not None:
                    on_frame(frame)
                yield frame


def md_frames(
    atoms: Atoms,
    calc: BaseCalculator,
    temperature: float,
    n_frames: int,
    config: SamplingConfig,
    rng: np.random.Generator,
    label: str = "",
) -> Iterator[Atoms]:
    """Langevin NVT at ``temperature`` (K) from ``atoms``; yield a frame every ``config.interval`` steps.

    Errors of the teacher on the *start* structure propagate (the teacher is broken or the input is
    bad); later failures count as a blow-up: warn, stop, keep what came before.
    """
    work = atoms.copy()
    work.calc = calc
    thermalize_momenta(work, temperature_K=temperature, rng=rng)
    Stationary(work)
    if not work.pbc.any():
        ZeroRotation(work)  # a free molecule's rotation is not sampling anything new
    if not work.constraints:
        # The Langevin noise would make the centre of mass diffuse (ASE's fixcm=True is deprecated).
        work.set_constraint(FixCom())
    work.get_forces()  # teacher errors here are real errors, not MD blow-ups
    dyn = Langevin(work, timestep=config.timestep * units.fs, temperature_K=temperature,
                   friction=config.friction / units.fs, fixcm=False, rng=rng)

    watch = BlowUpWatch(work, temperature)
    dyn.attach(lambda: watch.check(dyn.nsteps), interval=1)  # every step: stop at the first bad one
    where = f"MD of {label} at {temperature:g} K" if label else f"MD at {temperature:g} K"
    for k in range(1, n_frames + 1):
        steps = config.interval + (config.warmup if k == 1 else 0)
        reason = None
        try:
            dyn.run(steps)
        except MDBlowUp as exc:
            reason = exc.reason
        except Exception as exc:  # a teacher failing on a distorted geometry mid-run
            reason = f"the teacher raised {type(exc).__name__}: {exc}"
        if reason:
            warnings.warn(f"{where}: stopped at step {dyn.nsteps} ({reason}); "
                          f"kept {k - 1} of {n_frames} frames", SamplingWarning, stacklevel=2)
            return
        frame = _bare_copy(atoms, work.positions, work.cell.array)
        frame.info.update(step=int(dyn.nsteps), kinetic_temperature=float(work.get_temperature()))
        yield frame


def rattle_frames(atoms: Atoms, n_frames: int, std: float, rng: np.random.Generator) -> Iterator[Atoms]:
    """``atoms`` with i.i.d. Gaussian displacements (std ``std`` x U(0.5, 1.5) per frame, Å)."""
    for k in range(n_frames):
        scale = std * rng.uniform(0.5, 1.5)
        positions = atoms.positions + rng.normal(0.0, scale, size=(len(atoms), 3))
        frame = _bare_copy(atoms, positions, atoms.cell.array)
        frame.info["step"] = k
        yield frame


def strain_frames(
    atoms: Atoms, n_frames: int, max_strain: float, rattle: float, rng: np.random.Generator
) -> Iterator[Atoms]:
    """Fully periodic ``atoms`` under random symmetric strains ε (|ε_ij| ≤ ``max_strain``), then rattled.

    The deformed cell is ``cell @ (I + ε)`` (rows are lattice vectors) and fractional coordinates are
    kept, i.e. atoms move with the cell.
    """
    if not atoms.pbc.all():
        raise InputError("strain frames need a fully periodic structure")
    frac = atoms.get_scaled_positions(wrap=False)
    for k in range(n_frames):
        eps = rng.uniform(-max_strain, max_strain, size=(3, 3))
        eps = 0.5 * (eps + eps.T)
        cell = atoms.cell.array @ (np.eye(3) + eps)
        positions = frac @ cell
        if rattle > 0:
            positions = positions + rng.normal(0.0, rattle * rng.uniform(0.5, 1.5), size=positions.shape)
        frame = _bare_copy(atoms, positions, cell)
        frame.info["step"] = k
        yield frame


def _bare_copy(atoms: Atoms, positions: np.ndarray, cell: np.ndarray) -> Atoms:
    """New Atoms at ``positions``/``cell``: numbers, pbc, electronic state of ``atoms``; no labels."""
    frame = Atoms(numbers=atoms.numbers, positions=positions, cell=cell, pbc=atoms.pbc)
    for name in _KEPT_ARRAYS:
        if name in atoms.arrays:
            frame.set_array(name, atoms.arrays[name].copy())
    frame.info.update({k: atoms.info[k] for k in _KEPT_INFO if k in atoms.info})
    return frame
