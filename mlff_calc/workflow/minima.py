"""The teacher's full Hessian at each molecular seed's own minimum, as training frames (issue 11).

Harmonic frequencies are the curvature of the energy at a minimum, which MD frames at 500 K rarely visit,
and random Hessian-vector probes on MD frames mostly measure stiff stretches the student already has
(``benchmarks/RESULTS.md``, ``bench_curvature_verdict``). So, per molecular seed:

1. the teacher relaxes it (BFGS to ``fmax`` eV/Å, the relaxation of
   :func:`mlff_calc.evaluation.vibrations.relax`, so that it finds the minimum the report compares at);
2. one labelled frame there (energy, forces), with the full Hessian as ``3N`` curvature labels: the
   Cartesian unit probes ``e_k`` and ``H e_k`` by central differences of the teacher's forces
   (:func:`mlff_calc.teachers.hvp.fd_hvp`, ``6N`` calls, forces only: any teacher, Orb-v2 included).

Each seed's frame is committed through :class:`~mlff_calc.data.journal.DatasetWriter` as soon as it is
done (input index = seed index), so a killed run keeps every finished seed and a re-run labels only the
rest. Periodic seeds (phonons, not molecular vibrations) and single atoms are skipped with their reason;
a seed the teacher fails on is recorded in ``/failures`` and not retried.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import DataError, InputError, TeacherError

from ..evaluation.vibrations import FMAX  # eV/Å: the vibrations stage's relaxation, so the same minimum

MAX_STEPS = 1000
PROBES = ("cartesian", "modes")  # the 3N unit vectors, or the 3N - 6 normal modes weighted (mode_probes)
MIN_FREQUENCY = 100.0  # cm⁻¹: softer modes are weighted as if this soft (the weight grows as 1/ω)


@dataclass
class MinimaReport:
    """What one call did; seeds by index into the ``seeds`` given."""

    labelled: int = 0  # frames in the file after the call
    labelled_now: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (seed, reason): not a molecule
    failed: dict[int, str] = field(default_factory=dict)  # seed -> reason (this call or earlier)
    teacher_calls: int = 0  # this call's (about): relaxation steps + 2 + 6N per seed
    seconds: float = 0.0
    per_seed: list[dict[str, Any]] = field(default_factory=list)  # this call's: steps, residual force


def skip_reason(atoms) -> str | None:
    """Why a seed gets no Hessian at its minimum, or None."""
    if atoms.pbc.any():
        return "periodic: phonons, not molecular vibrations (not supported)"
    if len(atoms) < 2:
        return "a single atom has no vibrations"
    return None


def settings(epsilon: float, probes: str = "cartesian", fmax: float = FMAX) -> dict[str, Any]:
    """What the labels depend on besides teacher and seeds (recorded in the file; checked on resume)."""
    if not (np.isfinite(epsilon) and 0 < epsilon <= 0.1):
        raise InputError(f"hessian_at_minima epsilon must be in (0, 0.1] Å, got {epsilon}")
    if probes not in PROBES:
        raise InputError(f"hessian_at_minima probes must be one of {', '.join(PROBES)}, got {probes!r}")
    if not (np.isfinite(fmax) and fmax > 0):
        raise InputError(f"hessian_at_minima fmax must be > 0 eV/Å, got {fmax}")
    out = {"epsilon": float(epsilon), "fmax": float(fmax), "max_steps": MAX_STEPS, "probes": probes}
    if probes == "modes":
        out["min_frequency_cm1"] = MIN_FREQUENCY
    return out


def mode_probes(atoms, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(probes (3N-6, N, 3), values (3N-6, N, 3) eV/Å²)``: the Hessian ``h`` (3N, 3N) along its normal modes.

    Probe k points along the Cartesian displacement of internal mode k, ``q_k = M^-1/2 u_k`` (u_k: the
    mass-weighted eigenvectors of the Eckart-projected Hessian), with the length that makes a curvature
    error along it count as the frequency error it causes. First order, dω_k = dλ_k / (2 ω_k) =
    q_kᵀ dH q_k / (2 ω_k), so with ``p_k = q_k |q_k| / (2 ω_k)`` the error's component along the probe's
    direction, ``q̂_kᵀ dH p_k``, is dω_k itself and ``|dH p_k|² >= dω_k²``: the loss bounds the squared
    frequency errors, each mode alike, where unit Cartesian probes let stiff stretches drown soft torsions
    (~20x smaller ω: 400x less weight). ω is floored at ``MIN_FREQUENCY``; the probe lengths are scaled
    together to a root mean square of 1, so ``hvp_weight`` keeps its scale. ``values`` are ``h @ p_k``:
    linear algebra on the finite-difference Hessian, no teacher call.
    """
    from ..evaluation.vibrations import _TO_INVCM, internal_basis

    n = len(atoms)
    inv_sqrt_m = np.repeat(1.0 / np.sqrt(atoms.get_masses()), 3)
    hm = h * np.outer(inv_sqrt_m, inv_sqrt_m)
    internal = internal_basis(atoms)
    lam, vecs = np.linalg.eigh(internal.T @ hm @ internal)
    omega = np.maximum(np.sqrt(np.abs(lam)), MIN_FREQUENCY / _TO_INVCM)  # sqrt(eV/Å²/amu)
    cart = (internal @ vecs) * inv_sqrt_m[:, None]  # (3N, modes): M^-1/2 u_k
    probes = cart * np.linalg.norm(cart, axis=0)[None, :] / (2.0 * omega)[None, :]
    probes /= np.sqrt(np.mean(np.sum(probes**2, axis=0)))
    values = h @ probes
    return probes.T.reshape(-1, n, 3), values.T.reshape(-1, n, 3)


def label_minima(
    seeds: list,
    out: str | os.PathLike,
    teacher: Callable[[], Any],
    spec: dict[str, Any],
    *,
    epsilon: float,
    probes: str = "cartesian",
    fmax: float = FMAX,
    log: Callable[[str], None] = lambda message: None,
) -> MinimaReport:
    """Relax every molecular seed of ``seeds`` (``[Atoms]``) with the teacher and label its Hessian there.

    ``teacher``: returns the teacher calculator (called only when a seed needs labels); ``spec``: its
    :func:`~mlff_calc.teachers.teacher_spec`, recorded in (and checked against) ``out``.
    """
    from .. import __version__
    from ..data.hdf5 import DatasetWriter, read_header
    from ..data.structures import fingerprint

    start = time.monotonic()
    recorded = {"sha256": fingerprint(seeds), "n_seeds": len(seeds), **settings(epsilon, probes, fmax)}
    out = Path(out)
    if out.exists():
        header = read_header(out)
        old = header["provenance"].get("minima")
        if header["teacher"] != spec or old != recorded:
            raise DataError(f"{out} holds Hessians at minima of other seeds, settings or teacher ({old}, "
                            f"{header['teacher']}) than asked ({recorded}, {spec}); use another file")
    provenance = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "command": "distill hessian_at_minima", "mlff_calc_version": __version__,
                  "minima": recorded}
    report = MinimaReport()
    with DatasetWriter(out, spec, provenance, compact_interval=float("inf")) as writer:
        labelled, failed = writer.done()
        report.failed = dict(failed)
        calc = None
        for i, atoms in enumerate(seeds):
            reason = skip_reason(atoms)
            if reason is not None:
                report.skipped.append((i, reason))
                continue
            if i in labelled or i in failed:
                continue
            if calc is None:
                calc = teacher()
            t0 = time.monotonic()
            try:
                frame, info = _minimum_frame(calc, atoms, i, epsilon, probes, fmax)
                writer.add(frame)  # re-checks shapes and finiteness
                report.labelled_now += 1
                report.per_seed.append({"seed": i, **info, "seconds": time.monotonic() - t0})
                log(f"  seed {i} ({atoms.get_chemical_formula()}): minimum after {info['relax_steps']} "
                    f"steps (max force {info['max_force']:.1e} eV/Å), its Hessian along "
                    f"{len(frame['hvp']['epsilon'])} {probes} probes, {info['teacher_calls']} teacher calls")
                report.teacher_calls += info["teacher_calls"]
            except Exception as exc:  # a teacher failure is this seed's result, never a crash of the run
                reason = str(exc) if isinstance(exc, TeacherError) else f"{type(exc).__name__}: {exc}"
                reason = " ".join(reason.split())[:300] or type(exc).__name__
                writer.add_failure(i, reason)
                report.failed[i] = reason
                log(f"  seed {i} ({atoms.get_chemical_formula()}): teacher failed, skipped: {reason}")
            writer.commit()  # each seed durable as soon as it is done
        report.labelled = len(labelled) + report.labelled_now
    report.seconds = time.monotonic() - start
    return report


def _minimum_frame(calc, atoms, index: int, epsilon: float, kind: str,
                   fmax: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """The teacher-relaxed ``atoms`` as a frame with its full Hessian (3N unit probes), and a summary."""
    from ..evaluation.vibrations import relax
    from ..teachers import compute_labels
    from ..teachers.hvp import fd_hvp

    relaxed, steps = relax(atoms, calc, fmax=fmax, steps=MAX_STEPS)
    relaxed.calc = None
    labels = compute_labels(calc, relaxed)
    n = len(relaxed)
    probes = np.eye(3 * n).reshape(3 * n, n, 3)
    values = fd_hvp(calc, relaxed, probes, epsilon)
    if kind == "modes":
        h = values.reshape(3 * n, 3 * n).T  # probe k is e_k: column k of H
        probes, values = mode_probes(relaxed, 0.5 * (h + h.T))
    frame = {"atomic_numbers": relaxed.numbers, "positions": relaxed.positions,
             "cell": np.asarray(relaxed.cell), "pbc": relaxed.pbc, "input_index": index, **labels,
             "hvp": {"probes": probes, "values": values, "epsilon": np.full(len(probes), epsilon)}}
    # BFGS: one force call per step and one at the start; the labels; two per Hessian column
    info = {"relax_steps": steps, "max_force": float(np.linalg.norm(labels["forces"], axis=1).max()),
            "teacher_calls": steps + 2 + 6 * n}
    return frame, info

