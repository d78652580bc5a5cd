"""Pure-numpy metrics of a student against its teacher: errors and radial distributions.

Every function takes plain arrays (no calculators), so each is unit-tested against hand-computed values.
Units: energies eV, forces eV/Å, stress eV/Å³ (Voigt, ASE order), distances Å.
(NVE drift is measured by :func:`mlff_calc.md.run_md`.)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from ase import Atoms
from ase.neighborlist import neighbor_list
from ase.units import GPa

# Per-atom cosines are undefined for a zero force vector; atoms where either force is below this norm
# (eV/Å) are left out of the mean cosine (the global cosine, magnitude-weighted, keeps them).
COSINE_MIN_NORM = 1e-8


def energy_errors(predicted: Sequence[float], reference: Sequence[float], n_atoms: Sequence[int]) -> dict:
    """Per-atom energy errors over structures.

    Args:
        predicted, reference: ``(S,)`` total energies in eV.
        n_atoms: ``(S,)`` atoms per structure.

    Returns ``energy_mae_ev_per_atom`` = mean_s |E_s - E_t| / n_s and ``energy_rmse_ev_per_atom``.
    """
    err = (np.asarray(predicted, float) - np.asarray(reference, float)) / np.asarray(n_atoms, float)
    return {"energy_mae_ev_per_atom": float(np.mean(np.abs(err))),
            "energy_rmse_ev_per_atom": float(np.sqrt(np.mean(err**2)))}


def force_errors(predicted: np.ndarray, reference: np.ndarray) -> dict:
    """Force errors over all atoms of all structures.

    Args:
        predicted, reference: ``(N, 3)`` forces in eV/Å (structures concatenated).

    Returns (eV/Å unless dimensionless):
        ``force_mae_ev_per_ang``: mean |ΔF| over the 3N components;
        ``force_rmse_ev_per_ang``: sqrt(mean ΔF²) over the components;
        ``force_max_error_ev_per_ang``: largest per-atom error norm |F_s - F_t|;
        ``force_cosine_mean``: mean over atoms of cos(F_s, F_t) (atoms with a ~zero force left out);
        ``force_cosine_global``: Σ F_s·F_t / (‖F_s‖ ‖F_t‖) over all components (magnitude-weighted).
    """
    p = np.asarray(predicted, float).reshape(-1, 3)
    r = np.asarray(reference, float).reshape(-1, 3)
    if p.shape != r.shape:
        raise ValueError(f"force arrays differ in shape: {p.shape} vs {r.shape}")
    diff = p - r
    norm_p, norm_r = np.linalg.norm(p, axis=1), np.linalg.norm(r, axis=1)
    ok = (norm_p > COSINE_MIN_NORM) & (norm_r > COSINE_MIN_NORM)
    cos = np.sum(p[ok] * r[ok], axis=1) / (norm_p[ok] * norm_r[ok])
    denom = np.linalg.norm(p) * np.linalg.norm(r)
    return {
        "force_mae_ev_per_ang": float(np.mean(np.abs(diff))),
        "force_rmse_ev_per_ang": float(np.sqrt(np.mean(diff**2))),
        "force_max_error_ev_per_ang": float(np.max(np.linalg.norm(diff, axis=1))),
        "force_cosine_mean": float(np.mean(cos)) if cos.size else float("nan"),
        "force_cosine_global": float(np.sum(p * r) / denom) if denom > 0 else float("nan"),
    }


def stress_errors(predicted: np.ndarray, reference: np.ndarray) -> dict:
    """Stress MAE over the 6 Voigt components of ``(S, 6)`` arrays in eV/Å³ (rows with NaN are skipped).

    Returns ``stress_mae_ev_per_ang3``, ``stress_mae_gpa`` and ``n_stress_structures`` (NaN MAE if none).
    """
    p = np.asarray(predicted, float).reshape(-1, 6)
    r = np.asarray(reference, float).reshape(-1, 6)
    ok = np.isfinite(p).all(axis=1) & np.isfinite(r).all(axis=1)
    mae = float(np.mean(np.abs(p[ok] - r[ok]))) if ok.any() else float("nan")
    return {"stress_mae_ev_per_ang3": mae, "stress_mae_gpa": mae / GPa, "n_stress_structures": int(ok.sum())}


def rdf(frames: Sequence[Atoms], r_max: float, n_bins: int = 100) -> tuple[np.ndarray, np.ndarray, str]:
    """Radial distribution over all atom pairs, averaged over ``frames`` (all with the same atoms).

    Periodic images are included through a neighbour list, so any cell works (also cells smaller than
    ``2 r_max``, where a minimum-image convention would miss pairs).

    Returns ``(r, values, kind)`` with bin centres ``r`` (Å) and:
      * fully periodic frames (``kind = "g(r)"``): the usual g(r) = n_pairs(r) / (N ρ V_shell(r)), with
        ρ = N / V; it tends to 1 at large r;
      * otherwise (molecules, slabs, wires; ``kind = "n(r)"``): the pair distance density
        n(r) = n_pairs(r) / (N dr) in 1/Å, whose integral up to r is the mean number of neighbours within
        r (a density ρ is not defined without a full cell).
    Pairs are counted in both directions (i→j and j→i), as a neighbour count per atom should.
    """
    if not frames:
        raise ValueError("rdf needs at least one frame")
    edges = np.linspace(0.0, r_max, n_bins + 1)
    dr = edges[1] - edges[0]
    counts = np.zeros(n_bins)
    periodic = bool(np.all(frames[0].pbc))
    density = 0.0
    for atoms in frames:
        d = neighbor_list("d", atoms, r_max)
        counts += np.histogram(d, bins=edges)[0]
        if periodic:
            density += len(atoms) / atoms.get_volume()
    n, r = len(frames[0]), 0.5 * (edges[1:] + edges[:-1])
    per_atom = counts / (len(frames) * n)  # mean neighbours per atom in each bin
    if periodic:
        shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)  # exact shell volume (Å³)
        return r, per_atom / (shell * density / len(frames)), "g(r)"
    return r, per_atom / dr, "n(r)"


def rdf_difference(values_a: np.ndarray, values_b: np.ndarray) -> float:
    """Relative L1 distance Σ|a - b| / Σ|b| of two RDFs on the same bins (0: identical; b = reference)."""
    a, b = np.asarray(values_a, float), np.asarray(values_b, float)
    total = np.sum(np.abs(b))
    return float(np.sum(np.abs(a - b)) / total) if total > 0 else float("nan")
