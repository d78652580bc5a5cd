"""``metrics.json`` and the human-readable ``report.md`` of a comparison."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ase.data import chemical_symbols

from .. import io


def json_safe(value: Any) -> Any:
    """A JSON-safe copy: numpy scalars and arrays to Python, NaN and inf to None, other objects to str."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_json(path: Path, payload: dict) -> dict:
    """Write ``payload`` as JSON and return the JSON-clean copy that was written."""
    clean = json_safe(payload)
    io.write_text(path, json.dumps(clean, indent=2, ensure_ascii=False) + "\n")
    return clean


def _f(value, spec: str = ".4g", unit: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:{spec}}{' ' + unit if unit else ''}"


# (label, key in errors, scale, format, unit) of the error table
_ERROR_ROWS = (
    ("energy MAE", "energy_mae_ev_per_atom", 1e3, ".4g", "meV/atom"),
    ("energy RMSE", "energy_rmse_ev_per_atom", 1e3, ".4g", "meV/atom"),
    ("force MAE (components)", "force_mae_ev_per_ang", 1.0, ".4g", "eV/Å"),
    ("force RMSE (components)", "force_rmse_ev_per_ang", 1.0, ".4g", "eV/Å"),
    ("largest per-atom force error", "force_max_error_ev_per_ang", 1.0, ".4g", "eV/Å"),
    ("force cosine similarity, mean over atoms", "force_cosine_mean", 1.0, ".4f", ""),
    ("force cosine similarity, global", "force_cosine_global", 1.0, ".4f", ""),
)


def _header(m: dict) -> list[str]:
    p, e, mach = m["provenance"], m["errors"], m["provenance"]["machine"]
    cfg, opts = p["student_model"], p["teacher"]["options"]
    teacher = p["teacher"]["name"] + (f" {opts}" if opts else "")
    name = Path(p["student"]).name if p["student"] else "student"
    failed = e["n_teacher_failures"]
    z = p["student_elements"]
    elements = ", ".join(chemical_symbols[int(i)] for i in z) if z else "any (not recorded)"
    lines = [
        f"# Student vs teacher: `{name}` vs `{teacher}`", "",
        f"- **Student**: `{p['student']}` — PaiNN, hidden {cfg.get('hidden_dim')}, "
        f"{cfg.get('num_interactions')} interactions, cutoff {cfg.get('cutoff')} Å, "
        f"{p['student_parameters']:,} parameters, elements {elements}; "
        f"evaluated in {p['student_dtype']} on {mach['device']}.",
        f"- **Teacher**: `{teacher}`.",
        f"- **Frames**: {e['n_frames']} of {p['frames_available']} ({e['n_atoms']} atoms) from "
        f"`{p['data'] or p['structures']}`, evenly spaced; reference labels {e['labels']}"
        + (f"; the teacher failed on {failed} frames (skipped)." if failed else "."),
        f"- **Run**: {p['date_utc']} on {mach['node']} ({mach['processor']}, {mach['cpu_count']} CPUs, "
        f"torch threads: {mach['torch_threads']}), mlff_calc {p['versions']['mlff_calc']}, "
        f"torch {p['versions']['torch']}.",
    ]
    if p.get("data_teacher") and p["data_teacher"].get("name") != p["teacher"]["name"]:
        lines.append(f"- **Warning**: the dataset was labelled by `{p['data_teacher'].get('name')}`.")
    return lines


def _errors(m: dict) -> list[str]:
    e, figs = m["errors"], m["figures"]
    lines = ["", "## Errors against the teacher", "", "| quantity | value |", "|---|---|"]
    for label, key, scale, spec, unit in _ERROR_ROWS:
        value = None if e[key] is None else e[key] * scale
        lines.append(f"| {label} | {_f(value, spec, unit)} |")
    if e["n_stress_structures"]:
        lines.append(f"| stress MAE (Voigt components, {e['n_stress_structures']} periodic frames) | "
                     f"{_f(e['stress_mae_ev_per_ang3'], '.3g', 'eV/Å³')} "
                     f"({_f(e['stress_mae_gpa'], '.3g', 'GPa')}) |")
    return lines + ["", f"![force parity]({figs['parity']})", "",
                    f"![force error histogram]({figs['error_histogram']})"]


def _speed(m: dict) -> list[str]:
    s = m["speed"]
    lines = [
        "", "## Speed", "",
        f"Median wall time of one energy + forces call over {s['calls_per_model']} timed calls per model, "
        "on the same structures in the same run, after warm-up calls; positions are slightly displaced "
        "before every call (as in MD), and the two models take turns call by call. "
        "Speed-up = teacher time / student time (> 1: the student is faster).", "",
        "| structure | atoms | student (ms) | teacher (ms) | speed-up |", "|---|---|---|---|---|",
    ]
    for row in s["per_structure"]:
        ratio = row["teacher_ms"] / row["student_ms"]
        lines.append(f"| {row['formula']} | {row['n_atoms']} | {_f(row['student_ms'], '.3g')} | "
                     f"{_f(row['teacher_ms'], '.3g')} | {_f(ratio, '.3g')}x |")
    lines.append(f"| **all** | | **{_f(s['student_ms_per_call'], '.3g')}** | "
                 f"**{_f(s['teacher_ms_per_call'], '.3g')}** | **{_f(s['speed_ratio'], '.3g')}x** |")
    return lines


def _nve(m: dict) -> list[str]:
    nve, st = m["nve"], m["nve"]["settings"]
    lines = ["", "## NVE stability", ""]
    if "student" not in nve:
        return lines + ["Not run (`nve_steps` = 0)."]
    lines += [
        f"Velocity Verlet, {st['steps']} steps of {st['timestep_fs']} fs "
        f"({st['steps'] * st['timestep_fs'] / 1000:g} ps) from {st['structure']} ({st['formula']}, "
        f"{st['n_atoms']} atoms), velocities drawn at {st['temperature_k']} K (seed {st['seed']}); "
        f"the student runs in {st['student_dtype']}, the precision users get by default. Drift is the "
        "slope of a straight-line fit to the total energy per atom; max |ΔE| is its largest deviation "
        "from t = 0.", "",
        "| run | status | drift (meV/atom/ps) | max \\|ΔE\\| (meV/atom) | mean T (K) | ns/day |",
        "|---|---|---|---|---|---|",
    ]
    runs = [name for name in ("student", "teacher") if name in nve]
    for name in runs:
        r = nve[name]
        status = "stable" if r["ok"] else f"**unstable**: {r['error']}"
        lines.append(f"| {name} | {status} | {_f(r['drift_mev_per_atom_ps'], '+.4g')} | "
                     f"{_f(r['max_deviation_mev_per_atom'], '.4g')} | "
                     f"{_f(r['mean_temperature_k'], '.1f')} | {_f(r['ns_per_day'], '.3g')} |")
    if "energy_drift" in m["figures"]:
        lines += ["", f"![NVE energy drift]({m['figures']['energy_drift']})"]
    trajs = ", ".join(f"`{Path(nve[n]['traj']).name}`" for n in runs if nve[n]["traj"])
    return lines + ["", f"Trajectories: {trajs}."]


def _rdf(m: dict) -> list[str]:
    r = m.get("rdf")
    if not r:
        return []
    what = "g(r)" if r["kind"] == "g(r)" else "the pair-distance density n(r) (neighbours per atom per Å)"
    return ["", "## Radial distribution", "",
            f"{what} over all atom pairs, from the second half of each NVE run ({r['n_frames_each']} "
            f"frames each), up to {r['r_max_ang']:.3g} Å. Relative L1 difference "
            f"Σ|student − teacher| / Σ|teacher| = {_f(r['difference_l1_relative'], '.3g')}.", "",
            f"![RDF]({m['figures']['rdf']})"]


def _uncertainty(m: dict) -> list[str]:
    u = m.get("uncertainty")
    if not u:
        return []
    return ["", "## The student's uncertainty", "",
            "Per structure, the RMS over atoms of `forces_uncertainty` against the RMS force error; Spearman "
            f"rank correlation {_f(u['rank_correlation_structure'], '.3f')} (per atom "
            f"{_f(u['rank_correlation_atom'], '.3f')}); predicted / observed RMS "
            f"{_f(u['predicted_over_observed_rms'], '.2f')} (1 = calibrated).", "",
            f"![uncertainty reliability]({m['figures']['reliability']})"]


def write_report(path: Path, m: dict) -> None:
    """Markdown report of the metrics dict ``m`` (as returned by ``compare``); figures by relative path."""
    lines = _header(m) + _errors(m) + _uncertainty(m) + _speed(m) + _nve(m) + _rdf(m)
    lines += ["", "All numbers, with units in their names, are in `metrics.json`.", ""]
    io.write_text(path, "\n".join(lines))
