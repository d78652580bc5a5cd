"""Run-time safety for MD: the student's own uncertainty, watched step by step (``md.run_md``).

A :class:`UncertaintyWatch` reads ``forces_uncertainty`` from the calculator's results after each step
(no extra model call; ``StudentCalculator(uncertainty=True)`` fills it), keeps the largest value seen, counts
the steps above ``warn`` (one warning, with the counts, when the run ends) and stops the run with
:class:`~mlff_calc.errors.UncertaintyExceeded` above ``stop``.
"""

from __future__ import annotations

import math
import warnings

from .errors import InputError, UncertaintyExceeded

WARN_UNCERTAINTY = 0.5  # eV/Å per atom: several times a typical student's error; worth a look when exceeded


def reports_uncertainty(calc) -> bool:
    """Whether ``calc`` fills ``forces_uncertainty`` (a ``StudentCalculator`` with ``uncertainty=True``)."""
    return "forces_uncertainty" in getattr(calc, "implemented_properties", ())


class UncertaintyWatch:
    """``watch.check(step, atoms)`` after each step; ``watch.finish()`` once at the end (the warning)."""

    def __init__(self, calc, warn: float | None = WARN_UNCERTAINTY, stop: float | None = None):
        for name, value in (("warn_uncertainty", warn), ("max_uncertainty", stop)):
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise InputError(f"{name} must be a finite number > 0 eV/Å, got {value}")
        self.active = reports_uncertainty(calc)
        if stop is not None and not self.active:
            raise InputError("max_uncertainty needs a calculator that reports its uncertainty: "
                             "StudentCalculator.from_checkpoint(path, uncertainty=True) with a calibrated "
                             "student (mlff-calc calibrate adds a calibration to an older one)")
        self.calc, self.warn, self.stop = calc, warn, stop
        self.max, self.max_step, self.max_atom = math.nan, -1, -1
        self.steps_checked = self.steps_above = 0
        self.first_above = -1

    def check(self, step: int, atoms) -> None:
        if not self.active:
            return
        values = self.calc.results.get("forces_uncertainty")
        if values is None or not len(values):
            return
        atom = int(values.argmax())
        value = float(values[atom])
        self.steps_checked += 1
        if not value <= self.max:  # also the first value (max is NaN)
            self.max, self.max_step, self.max_atom = value, step, atom
        if self.warn is not None and value > self.warn:
            self.steps_above += 1
            if self.first_above < 0:
                self.first_above = step
        if self.stop is not None and value > self.stop:
            snapshot = atoms.copy()
            snapshot.calc = None
            raise UncertaintyExceeded(
                f"stopped at step {step}: the student's force uncertainty reached {value:.3g} eV/Å on atom "
                f"{atom} ({atoms[atom].symbol}), above --max-uncertainty {self.stop:g} eV/Å: the structure is "
                "unlike the training data (label such frames and retrain, or lower the temperature)",
                step=step, value=value, atoms=snapshot)

    def finish(self) -> None:
        """One warning, with the counts, when some steps were above ``warn``."""
        if self.steps_above:
            warnings.warn(
                f"the student's force uncertainty was above {self.warn:g} eV/Å in {self.steps_above} of "
                f"{self.steps_checked} steps (first at step {self.first_above}; largest {self.max:.3g} eV/Å at "
                f"step {self.max_step}, atom {self.max_atom}): the run visited structures unlike the training "
                "data, so its forces there are less reliable", stacklevel=3)

    def summary(self) -> dict:
        return {"max_uncertainty": self.max, "max_uncertainty_step": self.max_step,
                "uncertainty_steps_above": self.steps_above,
                "uncertainty_warn_threshold": math.nan if self.warn is None else float(self.warn)}
