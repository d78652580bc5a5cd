"""The package's error types: callers catch what they can handle, the CLI turns them into one line.

Every error mlff_calc raises on purpose derives from :class:`MLFFError`. The input errors also derive
from ``ValueError`` (and, for structures given to the calculator, from ASE's ``InputError``), so code
written against the older contract (``except ValueError``) keeps working.

========================  ==================================================================
``InputError``            bad user input: a structure, an option, a config value (ValueError)
``DataError``             a data file that is unreadable, foreign, inconsistent (ValueError)
``CheckpointError``       a checkpoint that cannot be loaded safely (DataError)
``OutputExistsError``     an output would replace the user's file, or is also an input
``RunLockedError``        another process is writing into the same run directory
``TeacherError``          the teacher failed or returned unusable labels (RuntimeError)
``MDBlowUp``              a simulation left the physical regime (RuntimeError); only for physics,
                          never for a bug, a kernel failure or running out of memory
``ModelOutputError``      the student produced a non-finite energy or forces (RuntimeError)
``UncertaintyExceeded``   MD stopped at the user's uncertainty limit (RuntimeError)
========================  ==================================================================
"""

from __future__ import annotations

from ase.calculators.calculator import InputError as _AseInputError


class MLFFError(Exception):
    """Base class of every error mlff_calc raises on purpose (an *expected* failure)."""


class InputError(MLFFError, _AseInputError, ValueError):
    """Bad input from the user: a structure, a command-line option, a configuration value."""


class DataError(MLFFError, ValueError):
    """A data file (HDF5 dataset, extxyz, state or recipe file) that cannot be used as it is."""


class CheckpointError(DataError):
    """A checkpoint that is missing parts, foreign, of a newer format, or not loadable safely."""


class OutputExistsError(MLFFError, FileExistsError):
    """An output path holds the user's data (pass ``--overwrite`` to replace it) or is also an input."""


class RunLockedError(MLFFError, RuntimeError):
    """Another mlff-calc process holds the lock of the same run directory or dataset."""


class TeacherError(MLFFError, RuntimeError):
    """The teacher failed on a structure or returned non-finite or ill-shaped labels."""


class MDBlowUp(MLFFError, RuntimeError):
    """A simulation left the physical regime (non-finite values, atoms too close, exploding energy).

    ``step``: the first bad step; ``reason``: what happened; ``result``: the good part of the run (an
    ``md.MDResult`` of the frames that were written), when there is one.
    """

    def __init__(self, message: str, step: int = -1, reason: str = "", result=None):
        super().__init__(message)
        self.step, self.reason, self.result = step, reason, result


class ModelOutputError(MLFFError, RuntimeError):
    """The student returned a non-finite energy or forces for a valid structure."""


class UncertaintyExceeded(MLFFError, RuntimeError):
    """MD stopped because the student's force uncertainty passed the limit the user set
    (``run_md(max_uncertainty=...)``, ``mlff-calc md --max-uncertainty``): the student is extrapolating.

    ``step``: the step it happened at; ``value``: the largest per-atom ``forces_uncertainty`` (eV/Å) then;
    ``atoms``: a copy of that structure (worth labelling); ``result``: the run up to there (``md.MDResult``).
    """

    def __init__(self, message: str, step: int = -1, value: float = float("nan"), atoms=None, result=None):
        super().__init__(message)
        self.step, self.value, self.atoms, self.result = step, value, atoms, result
