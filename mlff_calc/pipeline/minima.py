"""The distill stage ``label_minima`` (recipe ``labelling.hessian_at_minima``): the teacher's Hessian at
each molecular seed's own minimum, as training frames that always train.

Active only when ``labelling.hessian_at_minima.enabled`` (with it off nothing changes: no stage, no
record, the digests of earlier runs). It writes ``data/minima.h5`` (:mod:`mlff_calc.workflow.minima`:
crash-safe, one commit per seed, a re-run labels only the seeds not yet done), and the ``train`` stage
then trains on ``data/train.h5`` plus these frames, ``copies`` times each per epoch and never in the
validation split (``training.data.train_only``). The ``vibrations`` stage reads the teacher's relaxed
geometry and Hessian from here instead of recomputing them when they were made exactly as it would make
them (same relaxation, same finite-difference step): the same numbers (to rounding), fewer teacher calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .stages import Context, Stage

FILE = "data/minima.h5"


def enabled(recipe: dict[str, Any]) -> bool:
    return bool(recipe.get("labelling", {}).get("hessian_at_minima", {}).get("enabled"))


def _settings(ctx: Context) -> dict[str, Any]:
    from ..workflow.minima import settings

    section = ctx.recipe["labelling"]["hessian_at_minima"]
    return settings(section["epsilon"], section["probes"])


def _key(ctx: Context) -> dict[str, Any]:
    # copies change the training only (the train stage hashes them), not these labels
    return {"teacher": ctx.teacher_spec(), "seeds": ctx.seeds_sha256, "minima": _settings(ctx)}


def _run(ctx: Context) -> dict[str, Any]:
    from ..workflow.minima import label_minima

    atoms, settings = [a for _, a in ctx.seeds], _settings(ctx)
    rep = label_minima(atoms, ctx.path(FILE), ctx.teacher_calc, ctx.teacher_spec(),
                       epsilon=settings["epsilon"], probes=settings["probes"], log=ctx.log)
    for i, reason in rep.skipped:
        ctx.log(f"  seed {i} ({atoms[i].get_chemical_formula()}): no Hessian at its minimum: {reason}")
    if rep.labelled == 0:
        ctx.log("  no seed got a Hessian at its minimum: training uses the MD frames only")
    return {"labelled": rep.labelled, "labelled_now": rep.labelled_now, "file": FILE,
            "skipped": [{"seed": i, "formula": atoms[i].get_chemical_formula(), "reason": r}
                        for i, r in rep.skipped],
            "failed": [{"seed": i, "reason": r} for i, r in sorted(rep.failed.items())],
            "teacher_calls_now": rep.teacher_calls, "per_seed": rep.per_seed}


def train_only(ctx: Context) -> tuple[str, int] | None:
    """``(data.train_only path, data.train_only_repeat)`` for the train stage, or None (off, or no frame)."""
    if not enabled(ctx.recipe):
        return None
    rec = (ctx.state.stages.get("label_minima") or {}).get("info") if ctx.state is not None else None
    if rec is not None and not rec.get("labelled"):
        return None
    path = ctx.path(FILE)
    if rec is None and not path.is_file():
        return None
    return str(path), int(ctx.recipe["labelling"]["hessian_at_minima"]["copies"])


def teacher_frequencies(ctx: Context, index: int, fmax: float, delta: float):
    """The teacher's :class:`~mlff_calc.evaluation.vibrations.Frequencies` of seed ``index`` from
    ``data/minima.h5``, or None unless it was relaxed to ``fmax`` and differentiated with step ``delta``
    exactly as the vibrations stage would (then it holds the very numbers that stage would compute)."""
    import numpy as np

    from ..data.hdf5 import DatasetReader
    from ..evaluation.vibrations import _TO_INVCM, Frequencies, internal_basis, internal_frequencies

    path = ctx.path(FILE)
    if not enabled(ctx.recipe) or not Path(path).is_file():
        return None
    with DatasetReader(path) as reader:
        made = reader.provenance.get("minima") or {}
        if (made.get("fmax") != fmax or made.get("epsilon") != delta or made.get("sha256") != ctx.seeds_sha256
                or reader.teacher != ctx.teacher_spec()):
            return None
        rows = np.flatnonzero(reader.input_index == index)
        if not len(rows):
            return None
        frame, atoms = reader.frame(int(rows[0])), reader.atoms(int(rows[0]))
    hvp, n = frame["hvp"], len(atoms)
    if hvp is None:
        return None
    probes = hvp["probes"].reshape(len(hvp["epsilon"]), 3 * n).T  # (3N, K)
    values = hvp["values"].reshape(len(hvp["epsilon"]), 3 * n).T  # (3N, K): H @ probes
    atoms.calc = None
    if made.get("probes") == "cartesian" and np.array_equal(probes, np.eye(3 * n)):
        h = 0.5 * (values + values.T)  # column k is H e_k; symmetrised as evaluation.vibrations.hessian does
        freqs = internal_frequencies(atoms, h)
    elif made.get("probes") == "modes" and probes.shape[1] == internal_basis(atoms).shape[1]:
        # The probes span the internal coordinates (M^1/2 P = U C, U orthonormal there): the Rayleigh-Ritz
        # problem Pᵀ H P x = λ Pᵀ M P x has exactly the internal eigenvalues of H, rounding aside.
        import scipy.linalg

        m = np.repeat(atoms.get_masses(), 3)
        a = probes.T @ values
        lam = scipy.linalg.eigh(0.5 * (a + a.T), probes.T @ (m[:, None] * probes), eigvals_only=True)
        freqs = np.sign(lam) * np.sqrt(np.abs(lam)) * _TO_INVCM
    else:
        return None
    max_force = float(np.linalg.norm(frame["forces"], axis=1).max())
    return Frequencies(atoms, freqs, max_force, relax_steps=-1)


STAGE = Stage("label_minima", "the teacher's Hessian at each seed's minimum", (), (FILE, FILE + ".journal"),
              key=_key, run=_run)
