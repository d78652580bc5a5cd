"""Curvature labels from any teacher: Hessian-vector products by central differences of forces.

For a probe direction ``v`` (a unit vector in the 3N-dimensional space of positions, shape ``(N, 3)``)

    H v ≈ -(F(x + ε v) - F(x - ε v)) / (2 ε)        # (N, 3) | eV/Å², ε in Å

costs two teacher calls and needs forces only, so it works for teachers whose forces are not the gradient
of anything autograd can reach (Orb-v2 predicts forces directly). The central difference is exact for a
quadratic surface; its error is O(ε²) from the third derivatives, plus the teacher's own noise divided by
ε (an SCF converged to 1e-6 eV/Å gives 1e-4 eV/Å² at ε = 0.01 Å). ``DEFAULT_EPSILON`` is chosen from the
measured balance of the two (see ``benchmarks/RESULTS.md``, section ``curvature_epsilon``).
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator

from ..errors import InputError
from .labels import compute_labels

DEFAULT_EPSILON = 0.01  # Å
PROBE_MODES = ("random", "forces")


def probe_directions(
    n_atoms: int,
    count: int,
    seed: int = 0,
    mode: str = "random",
    forces: np.ndarray | None = None,
) -> np.ndarray:
    """``(count, n_atoms, 3)`` orthonormal probe directions (each of unit norm over all 3N components).

    ``mode="random"``: Gaussian directions, orthonormalised. ``mode="forces"``: the first probe points along
    the frame's force pattern (``forces``, ``(n_atoms, 3)``), the others are random and orthogonal to it —
    curvature along the direction the structure is pushed, which matters most for MD.
    """
    if mode not in PROBE_MODES:
        raise InputError(f"probe mode must be one of {PROBE_MODES}, got {mode!r}")
    dim = 3 * int(n_atoms)
    if not 1 <= count <= dim:
        raise InputError(f"need 1 <= probes <= 3 x atoms = {dim}, got {count}")
    rng = np.random.default_rng(seed)
    columns = rng.standard_normal((dim, count))
    if mode == "forces":
        if forces is None:
            raise InputError("probe mode 'forces' needs the frame's forces")
        f = np.asarray(forces, dtype=np.float64).reshape(dim)
        if np.linalg.norm(f) > 1e-12:
            columns[:, 0] = f
    q, r = np.linalg.qr(columns)
    q *= np.sign(np.diag(r))[None, :] + (np.diag(r) == 0)  # keep the first column pointing along the forces
    return q.T.reshape(count, n_atoms, 3)


def fd_hvp(
    calc: BaseCalculator,
    atoms: Atoms,
    probes: np.ndarray,
    epsilon: float = DEFAULT_EPSILON,
) -> np.ndarray:
    """``(k, N, 3)`` eV/Å²: ``H v`` for each of the ``k`` probes by central differences of the teacher's forces.

    ``2 k`` teacher calls through :func:`compute_labels` (so a failing teacher raises ``TeacherError``).
    """
    probes = np.asarray(probes, dtype=np.float64)
    if probes.ndim != 3 or probes.shape[1:] != (len(atoms), 3):
        raise InputError(f"probes must have shape (k, {len(atoms)}, 3), got {probes.shape}")
    if not (np.isfinite(epsilon) and epsilon > 0):
        raise InputError(f"epsilon must be a positive number of Å, got {epsilon}")
    out = np.empty_like(probes)
    for n, v in enumerate(probes):
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions = atoms.positions + epsilon * v
        minus.positions = atoms.positions - epsilon * v
        f_plus = compute_labels(calc, plus)["forces"]
        f_minus = compute_labels(calc, minus)["forces"]
        out[n] = -(f_plus - f_minus) / (2.0 * epsilon)
    return out


def epsilon_scan(
    calc: BaseCalculator,
    atoms: Atoms,
    probes: np.ndarray,
    epsilons=(0.08, 0.04, 0.02, 0.01, 0.005, 0.0025, 0.00125),
    reference: np.ndarray | None = None,
) -> list[dict]:
    """Error of :func:`fd_hvp` against ``reference`` (an exact HVP, when the teacher has one) for each ε.

    Without a reference, the Richardson extrapolation of the two largest ε, ``(4 h(ε/2) - h(ε)) / 3``
    (error O(ε⁴)), stands in for it, which shows the O(ε²) truncation at large ε and the noise floor at
    small ε. Returns ``[{"epsilon", "max_abs_error", "rms_error"}]`` in eV/Å².
    """
    values = {eps: fd_hvp(calc, atoms, probes, eps) for eps in epsilons}
    if reference is None:
        e1, e2 = sorted(epsilons, reverse=True)[:2]
        reference = (4.0 * values[e2] - values[e1]) / 3.0
    rows = []
    for eps, value in values.items():
        err = value - reference
        rows.append({"epsilon": eps, "max_abs_error": float(np.abs(err).max()),
                     "rms_error": float(np.sqrt(np.mean(err**2)))})
    return rows
