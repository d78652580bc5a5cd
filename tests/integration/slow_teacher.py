"""Test teachers, loadable as ``slow_teacher:slow_emt`` / ``slow_teacher:flaky_emt`` when this folder is
on ``sys.path``: EMT made slow (so a labelling run can be killed mid-way) or failing on marked frames."""

import time

import numpy as np
from ase.calculators.emt import EMT


class SlowEMT(EMT):
    """EMT that sleeps ``delay`` seconds per calculation, like an expensive teacher."""

    def __init__(self, delay: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.delay = float(delay)

    def calculate(self, *args, **kwargs):
        time.sleep(self.delay)
        super().calculate(*args, **kwargs)


class FlakyEMT(EMT):
    """EMT that fails on 3-atom cells (an exception, like an unconverged SCF) and returns NaN forces on
    6-atom cells (a silently broken result that must never be stored)."""

    def calculate(self, atoms=None, *args, **kwargs):
        if atoms is not None and len(atoms) == 3:
            raise RuntimeError("SCF not converged after 250 iterations")
        super().calculate(atoms, *args, **kwargs)
        if len(self.atoms) == 6:
            self.results["forces"] = np.full_like(self.results["forces"], np.nan)


def slow_emt(delay: float = 0.02) -> SlowEMT:
    return SlowEMT(delay=delay)


def flaky_emt() -> FlakyEMT:
    return FlakyEMT()
