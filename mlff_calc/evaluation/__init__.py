"""Evaluation of a student against its teacher: errors, speed, NVE stability, RDFs, report.

``compare(student, teacher, data=... | structures=..., out=...) -> dict`` writes ``out/report.md``,
``out/metrics.json`` and PNG figures (``mlff-calc compare`` is its command-line shell). The metric
functions in :mod:`.metrics` work on plain arrays and can be used on their own.
"""

from .comparison import compare
from .metrics import energy_errors, force_errors, rdf, rdf_difference, stress_errors

__all__ = ["compare", "energy_errors", "force_errors", "rdf", "rdf_difference", "stress_errors"]
