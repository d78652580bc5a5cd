"""The one MD blow-up detector, used by ``md.run_md`` (student MD) and by sampling (teacher MD).

Checked after every step (a few numpy reductions, negligible next to a force call); the first rule
that fires names the reason, and why it is a blow-up:

- non-finite forces, positions or momenta: nothing after that is physics;
- any force above ``max_force`` (1000 eV/Å): real forces in MD stay below ~50 eV/Å even for close
  contacts at high temperature; a broken or out-of-domain model gives runaway values;
- kinetic temperature above 10 x max(temperature, 100 K): the run is heating itself (energy not
  conserved), the usual first sign of a model leaving its training domain; the 100 K floor keeps cold
  or 0 K starts from tripping it;
- molecules (no periodic axis): an atom farther than 10 Å beyond the starting extent from the centre of
  mass (the molecule is flying apart);
- NPT: the volume changed by more than a factor of 2 from the start (the barostat ran away).
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from .errors import MDBlowUp

MAX_FORCE = 1e3  # eV/Å
TEMPERATURE_FACTOR = 10.0  # blow-up above this x max(target, TEMPERATURE_FLOOR)
TEMPERATURE_FLOOR = 100.0  # K
ESCAPE_DISTANCE = 10.0  # Å beyond the starting extent of a molecule
VOLUME_FACTOR = 2.0  # NPT: the volume stays within [V0 / 2, 2 V0]


class BlowUpWatch:
    """``watch = BlowUpWatch(atoms, temperature)``; ``watch.check(step)`` raises :class:`MDBlowUp`.

    ``atoms`` is the object the integrator advances (its calculator's cached forces are read, so a check
    costs no extra force call). ``npt=True`` adds the volume rule.
    """

    def __init__(self, atoms: Atoms, temperature: float, max_force: float = MAX_FORCE, npt: bool = False):
        self.atoms = atoms
        self.max_temperature = TEMPERATURE_FACTOR * max(temperature, TEMPERATURE_FLOOR)
        self.max_force = max_force
        self.molecule = not atoms.pbc.any() and len(atoms) > 1
        if self.molecule:
            extent = np.linalg.norm(atoms.positions - atoms.get_center_of_mass(), axis=1).max()
            self.max_radius = extent + ESCAPE_DISTANCE
        self.volume0 = atoms.get_volume() if npt else None

    @staticmethod
    def blow_up(step: int, reason: str) -> MDBlowUp:
        return MDBlowUp(f"MD blew up at step {step}: {reason}", step=step, reason=reason)

    def reason(self) -> str | None:
        """Why the current state is not physics any more, or None."""
        atoms = self.atoms
        # Forces first: non-finite forces are the cause, non-finite velocities (a half-kick later) the effect.
        forces = atoms.get_forces()
        if not np.isfinite(forces).all():
            bad = int(np.flatnonzero(~np.isfinite(forces).all(axis=1))[0])
            symbol = atoms.get_chemical_symbols()[bad]
            return f"non-finite forces (first: non-finite force on atom {bad}, {symbol})"
        positions, momenta = atoms.positions, atoms.get_momenta()
        if not (np.isfinite(positions).all() and np.isfinite(momenta).all()):
            return "non-finite positions or velocities"
        fmax = np.linalg.norm(forces, axis=1)
        if fmax.max() > self.max_force:
            i = int(fmax.argmax())
            return f"force of {fmax[i]:.3g} eV/Å on atom {i} > {self.max_force:g} eV/Å"
        temperature = atoms.get_temperature()
        if not np.isfinite(temperature) or temperature > self.max_temperature:
            return (f"kinetic temperature {temperature:.0f} K > {self.max_temperature:.0f} K "
                    f"({TEMPERATURE_FACTOR:g} x max(target, {TEMPERATURE_FLOOR:g} K))")
        if self.molecule:
            radius = np.linalg.norm(positions - atoms.get_center_of_mass(), axis=1)
            if radius.max() > self.max_radius:
                i = int(radius.argmax())
                return (f"atom {i} is {radius[i]:.1f} Å from the centre of mass, more than "
                        f"{ESCAPE_DISTANCE:g} Å beyond the starting extent (flying apart)")
        if self.volume0 is not None:
            ratio = atoms.get_volume() / self.volume0
            if not (1 / VOLUME_FACTOR <= ratio <= VOLUME_FACTOR):
                return (f"the volume changed by a factor {ratio:.3g} (allowed "
                        f"1/{VOLUME_FACTOR:g}..{VOLUME_FACTOR:g}): the barostat ran away")
        return None

    def check(self, step: int) -> None:
        reason = self.reason()
        if reason:
            raise self.blow_up(step, reason)
