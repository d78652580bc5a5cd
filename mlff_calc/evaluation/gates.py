"""Acceptance gates: bars a student must clear, for ``mlff-calc compare --gate`` and ``distill`` (recipe
``gates:``). A missed bar makes the command exit non-zero, naming each bar with its value and threshold.

Keys are the metric names ``compare`` and ``distill`` report (units in the names); each has one direction::

    force_mae_ev_per_ang: 0.05      # at most (eV/Å, held-out frames)
    force_cosine_mean: 0.99         # at least
    drift_mev_per_atom_ps: 1.0      # |drift| at most, for every NVE run (meV/atom/ps)
    md_stable: true                 # every MD run stayed physical
    speed_ratio: 1.0                # at least (teacher ms / student ms per call)

Unset keys (the default: no gates at all) check nothing. A gate whose metric was not measured (no NVE run,
no teacher timing) is missed: a bar cannot be cleared by not measuring it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .. import schema
from ..errors import MLFFError

# key -> (direction, unit) of the bar
DIRECTIONS = {"force_mae_ev_per_ang": ("max", "eV/Å"), "force_cosine_mean": ("min", ""),
              "drift_mev_per_atom_ps": ("max_abs", "meV/atom/ps"), "md_stable": ("true", ""),
              "speed_ratio": ("min", "x")}


class GateFailed(MLFFError, RuntimeError):
    """One or more acceptance gates were missed (``failures``: one line per missed bar)."""

    def __init__(self, failures: list[str], where: str = ""):
        super().__init__(f"{where}{len(failures)} acceptance gate{'s' if len(failures) > 1 else ''} missed: "
                         + "; ".join(failures))
        self.failures = failures


@dataclass
class GatesConfig:
    """The bars (None: not gated). See the module docstring for directions and units."""

    force_mae_ev_per_ang: Optional[float] = None
    force_cosine_mean: Optional[float] = None
    drift_mev_per_atom_ps: Optional[float] = None
    md_stable: Optional[bool] = None
    speed_ratio: Optional[float] = None

    def checks(self):
        return [("force_mae_ev_per_ang", self.force_mae_ev_per_ang is None or self.force_mae_ev_per_ang > 0,
                 "must be > 0 eV/Å"),
                ("force_cosine_mean", self.force_cosine_mean is None or -1 <= self.force_cosine_mean <= 1,
                 "must be in [-1, 1]"),
                ("drift_mev_per_atom_ps", self.drift_mev_per_atom_ps is None or self.drift_mev_per_atom_ps > 0,
                 "must be > 0 meV/atom/ps"),
                ("speed_ratio", self.speed_ratio is None or self.speed_ratio > 0, "must be > 0")]

    def any(self) -> bool:
        return any(v is not None for v in dataclasses.asdict(self).values())


def gates_from_dict(raw: Any, label: str = "gates", prefix: str = "") -> GatesConfig:
    """Typed gates from plain data (a YAML mapping); unknown keys and wrong types are refused by name."""
    return schema.validate(schema.from_dict(GatesConfig, raw, label=label, prefix=prefix), label=label,
                           prefix=prefix)


def load_gates(path: str | Path) -> GatesConfig:
    """Gates from a YAML file (``mlff-calc compare --gate gates.yaml``)."""
    return gates_from_dict(schema.read_yaml(path, "gates file", "a mapping of gates"), label=f"gates file {path}")


def check(gates: GatesConfig, values: dict[str, Any]) -> dict[str, Any]:
    """``{"passed": bool, "results": [{key, threshold, value, passed, line}], "failures": [line]}`` for the
    measured ``values`` (keys as in :data:`DIRECTIONS`; None or absent = not measured)."""
    results = []
    for key, (direction, unit) in DIRECTIONS.items():
        bar = getattr(gates, key)
        if bar is None:
            continue
        value = values.get(key)
        measured = value is not None and not (isinstance(value, float) and math.isnan(value))
        if not measured:
            ok, shown = False, "not measured"
        elif direction == "max":
            ok = value <= bar
            shown = f"{value:.4g} {unit} {'<=' if ok else '>'} {bar:g} {unit} (at most)"
        elif direction == "max_abs":
            ok = abs(value) <= bar
            shown = f"|{value:.4g}| {unit} {'<=' if ok else '>'} {bar:g} {unit} (at most)"
        elif direction == "min":
            ok = value >= bar
            shown = f"{value:.4g}{unit} {'>=' if ok else '<'} {bar:g}{unit} (at least)"
        else:
            ok = bool(value) or not bar
            shown = "every MD run stable" if value else "an MD run was unstable (required: stable)"
        results.append({"key": key, "threshold": bar, "value": value, "passed": bool(ok), "line": f"{key}: {shown}"})
    failures = [r["line"] for r in results if not r["passed"]]
    return {"passed": not failures, "results": results, "failures": failures}


def values_from_compare(metrics: dict[str, Any]) -> dict[str, Any]:
    """Gate values from ``compare``'s metrics dict (NVE: the student's run)."""
    nve = (metrics.get("nve") or {}).get("student")
    return {"force_mae_ev_per_ang": metrics["errors"].get("force_mae_ev_per_ang"),
            "force_cosine_mean": metrics["errors"].get("force_cosine_mean"),
            "drift_mev_per_atom_ps": nve.get("drift_mev_per_atom_ps") if nve else None,
            "md_stable": bool(nve["ok"]) if nve else None,
            "speed_ratio": metrics["speed"].get("speed_ratio")}


def values_from_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """Gate values from distill's summary: the worst NVE drift and the stability over every MD run."""
    runs = list((summary.get("nve") or {}).values())
    drifts = [r.get("worst_drift_mev_per_atom_ps") for r in runs]
    return {"force_mae_ev_per_ang": summary.get("force_mae_ev_per_ang"),
            "force_cosine_mean": summary.get("force_cosine_mean"),
            "drift_mev_per_atom_ps": (max(drifts, key=abs) if runs and None not in drifts else None),
            "md_stable": all(r.get("stable") for r in runs) if runs else None,
            "speed_ratio": summary.get("speed_ratio")}


def check_summary(gates: dict[str, Any] | None, summary: dict[str, Any]) -> dict[str, Any] | None:
    """The gate outcome of a distill run (``recipe["gates"]`` as plain data); None when nothing is gated."""
    config = gates_from_dict(gates or {}, label="recipe", prefix="gates.")
    return check(config, values_from_summary(summary)) if config.any() else None


def report_lines(outcome: dict[str, Any] | None) -> list[str]:
    """One line per gate, for the printed summaries."""
    if not outcome:
        return []
    return [f"  gate {'passed' if r['passed'] else 'MISSED'}: {r['line']}" for r in outcome["results"]]
