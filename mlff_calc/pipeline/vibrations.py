"""The distill stage ``vibrations``: harmonic frequencies of student and teacher at each seed's own minimum.

Curvature is what vibrational spectra depend on, and where a student trained on forces alone is weakest
(issue 11), so the report shows it directly: each model relaxes each seed molecule by itself, and the
internal frequencies of its finite-difference Hessian (:mod:`mlff_calc.evaluation.vibrations`: 6N force
calls, rigid-body motions projected out) are compared mode by mode in ascending order.

Only molecules are compared: a periodic seed has phonons, not 3N - 6 molecular modes, and a seed with more
than ``MAX_ATOMS`` atoms would cost 6N teacher calls plus a relaxation per model (minutes for Orb-v2-class
teachers); each skipped seed is listed with its reason. Outputs (``vibrations/``): ``vibrations.json``,
``report.md`` (this stage's section of the distill report) and ``frequencies.png``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import io

MAX_ATOMS = 30


def skip_reason(atoms) -> str | None:
    """Why a seed gets no frequency comparison, or None."""
    if atoms.pbc.any():
        return "periodic: phonons, not molecular vibrations"
    if len(atoms) > MAX_ATOMS:
        return f"{len(atoms)} atoms > {MAX_ATOMS}: 6N force calls and a relaxation per model"
    if len(atoms) < 2:
        return "a single atom has no vibrations"
    return None


def run_vibrations(ctx) -> dict[str, Any]:
    """Compare frequencies for every eligible seed; write the JSON, the section and the figure."""
    from ..calculator import StudentCalculator
    from ..evaluation.vibrations import DELTA, FMAX, compare_frequencies
    from .minima import teacher_frequencies

    out_dir = ctx.path("vibrations")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, skipped = [], []
    student = None
    for i, (source, atoms) in enumerate(ctx.seeds):
        name = f"{i:02d}_{atoms.get_chemical_formula()}"
        reason = skip_reason(atoms)
        if reason is None:
            try:
                if student is None:  # float64: a 0.005 Å finite-difference step wants precise forces
                    student = StudentCalculator.from_checkpoint(ctx.path("student.pt"), device=ctx.device,
                                                                dtype="float64")
                known = teacher_frequencies(ctx, i, FMAX, DELTA)  # labelling.hessian_at_minima made it
                result = compare_frequencies([(name, atoms)], student, ctx.teacher_calc(), [known],
                                             fmax=FMAX, delta=DELTA)
                rows.append({**result["per_seed"][0], "source": source, "n_atoms": len(atoms),
                             "teacher_from": "data/minima.h5" if known is not None else "computed"})
                ctx.log(f"  {name}: frequency MAE {rows[-1]['mae_cm1']:.2f} cm-1, "
                        f"max {rows[-1]['max_error_cm1']:.2f} cm-1")
                continue
            except Exception as exc:  # a relaxation or teacher failure is a result of this seed, not a crash
                reason = f"failed: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        skipped.append({"name": name, "source": source, "reason": reason})
    errors = np.concatenate([np.abs(np.subtract(r["student_cm1"], r["teacher_cm1"])) for r in rows]) \
        if rows else np.zeros(0)
    summary = {"seeds": len(rows), "modes": int(errors.size),
               "mae_cm1": float(errors.mean()) if errors.size else None,
               "max_error_cm1": float(errors.max()) if errors.size else None}
    info = {"summary": summary, "per_seed": rows, "skipped": skipped}
    io.write_json(out_dir / "vibrations.json", info)
    if rows:
        _figure(out_dir / "frequencies.png", rows)
    io.write_text(out_dir / "report.md", section(info))
    return info


def section(info: dict[str, Any]) -> str:
    """This stage's markdown section of the distill report."""
    s = info["summary"]
    lines = ["## Harmonic frequencies (`mlff-calc distill`)", "",
             "Each model relaxed by itself (BFGS to 1e-3 eV/Å), then the internal frequencies of its "
             "finite-difference Hessian (rigid-body motions projected out), matched in ascending order.", ""]
    reused = [r["formula"] for r in info["per_seed"] if r.get("teacher_from") == "data/minima.h5"]
    if reused:
        lines += [f"The teacher's minimum and Hessian of {', '.join(reused)} are those of `data/minima.h5` "
                  "(`labelling.hessian_at_minima`: the same relaxation and finite-difference step, so the "
                  "same numbers to rounding). Those minima are training frames: for curvature these frequencies are "
                  "in-sample (the held-out force MAE is not).", ""]
    if info["per_seed"]:
        lines += [f"Over {s['modes']} modes of {s['seeds']} molecule(s): MAE **{s['mae_cm1']:.2f} cm⁻¹**, "
                  f"max error **{s['max_error_cm1']:.2f} cm⁻¹**.", "",
                  "| seed | atoms | modes | MAE (cm⁻¹) | max error (cm⁻¹) | highest mode teacher / student "
                  "(cm⁻¹) | residual max force student / teacher (eV/Å) |",
                  "|---|---|---|---|---|---|---|"]
        for r in info["per_seed"]:
            lines.append(f"| {r['formula']} | {r['n_atoms']} | {len(r['teacher_cm1'])} | {r['mae_cm1']:.2f} "
                         f"| {r['max_error_cm1']:.2f} | {r['teacher_cm1'][-1]:.0f} / {r['student_cm1'][-1]:.0f} "
                         f"| {r['student_max_force']:.1e} / {r['teacher_max_force']:.1e} |")
        lines += ["", "![frequencies](../vibrations/frequencies.png)"]
    for k in info["skipped"]:
        lines.append(f"- {k['name']}: skipped ({k['reason']})")
    return "\n".join(lines) + "\n"


def _figure(path, rows) -> None:
    """Student vs teacher frequency of every mode (left) and the error per mode (right)."""
    from ..evaluation.plots import _figure as figure, _save

    fig, (ax, ax_err) = figure(2, width=5.0)
    top = 0.0
    for r in rows:
        t, s = np.asarray(r["teacher_cm1"]), np.asarray(r["student_cm1"])
        ax.scatter(t, s, s=14, label=r["formula"])
        ax_err.plot(t, s - t, "o-", ms=3, label=r["formula"])
        top = max(top, float(t.max()), float(s.max()))
    ax.plot([0, top], [0, top], "k-", lw=0.6)
    ax.set(xlabel="teacher frequency (cm⁻¹)", ylabel="student frequency (cm⁻¹)", title="harmonic modes")
    ax_err.axhline(0.0, color="k", lw=0.6)
    ax_err.set(xlabel="teacher frequency (cm⁻¹)", ylabel="student − teacher (cm⁻¹)", title="error per mode")
    ax.legend(fontsize=8)
    _save(fig, path)
