"""Refit of the per-element reference energies after training (every ``train``, offline or warm-started).

Why: forces and stress do not see a constant per element, so in the force-dominated distillation loss
(``energy_weight`` 1 on eV/atom against ``force_weight`` 10 on eV/Å, 3N components per frame) only the
small energy term pins the energy offset of each composition. A long schedule converges it; a short one,
and above all a warm start at the full learning rate on a dataset that grew by far-from-equilibrium frames
(on-policy rounds: frames up to ~1 eV/atom above the minimum where the previous student failed), leaves
offsets of 3-15 meV/atom per molecule with a spread of < 1 meV/atom around them (benchmarks/RESULTS.md,
the on-policy section). A least-squares correction ``E_teacher - E_student ≈ Σ_Z n_Z δ_Z`` over the
training split removes exactly that and changes no force, stress or energy difference within a
composition. Frames the student fits badly (the far-from-equilibrium ones) would drag a plain fit, so it
is robust (Huber weights, :func:`fit_correction`).
"""

from __future__ import annotations

import numpy as np
import torch

from .. import _keys as K

HUBER = 1.345  # the Huber threshold in scales (95% efficiency for Gaussian residuals)
MIN_SCALE = 1e-4  # eV/atom: the residual scale never counts as smaller (an exact fit down-weights nothing)
MAX_FRAMES = 5000  # a least-squares fit of <= 118 numbers converges long before; keeps the step cheap


@torch.no_grad()
def predicted_energies(model, loader, device: torch.device) -> np.ndarray:
    """Model energies (eV) of every structure in ``loader``, in order (no forces: one cheap pass)."""
    model.eval()
    out = []
    for batch in loader:
        out.append(model(batch[K.GRAPH].to(device), compute_forces=False)[K.ENERGY].double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def fit_correction(counts: np.ndarray, residual: np.ndarray, n_atoms: np.ndarray,
                   iterations: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Robust fit ``residual (S,) eV ≈ counts (S, n_el) @ δ`` -> ``(δ (n_el,) eV, weights (S,))``;
    ``counts``: atoms of each element per frame.

    A Huber M-estimate on the per-atom residuals, by iteratively reweighted least squares: a frame whose
    per-atom residual ``r`` exceeds ``HUBER`` x the scale (1.4826 x MAD, at least ``MIN_SCALE``) gets
    weight ``HUBER x scale / |r|``, so a few frames the student fits badly by ~1 eV/atom move δ by no more
    than a clean frame would. (Convex: no composition can be dropped as a whole, as hard trimming around a
    contaminated first fit can do.) Minimum-norm when the compositions are collinear (one molecule, one
    bulk phase): then δ moves the mean energy of that composition only.
    """
    weights = np.ones(len(residual))
    delta = np.zeros(counts.shape[1])
    for _ in range(iterations):
        root = np.sqrt(weights)
        new, *_ = np.linalg.lstsq(counts * root[:, None], residual * root, rcond=None)
        per_atom = (residual - counts @ new) / n_atoms
        scale = max(1.4826 * float(np.median(np.abs(per_atom))), MIN_SCALE)
        weights = np.minimum(1.0, HUBER * scale / np.maximum(np.abs(per_atom), 1e-300))
        done = np.allclose(new, delta, rtol=0, atol=1e-7)
        delta = new
        if done:
            break
    return delta, weights


def refit_references(model, data, indices: np.ndarray, loader_factory, device: torch.device) -> dict:
    """Add the robust least-squares correction to ``model.atom_ref`` in place (training frames
    ``indices`` of ``data``, a :class:`~mlff_calc.training.data.TrainingData`); returns a record for the
    checkpoint metadata: frames used, frames down-weighted below 1/2, δ per element (eV), per-atom energy
    MAE before/after (all frames, and the frames kept at weight > 1/2).
    ``loader_factory(indices)`` gives an unshuffled loader over those frames."""
    if len(indices) > MAX_FRAMES:
        indices = indices[np.linspace(0, len(indices) - 1, MAX_FRAMES).astype(np.int64)]
    from .data import element_counts

    frames = [data.dataset._frame(int(i)) for i in indices]  # (an H5Dataset, or joined with train-only frames)
    counts = element_counts(frames, data.elements)
    energies = np.array([float(fr["energy"]) for fr in frames])
    n_atoms = np.array([len(fr["atomic_numbers"]) for fr in frames])
    residual = energies - predicted_energies(model, loader_factory(indices), device)
    delta, weights = fit_correction(counts, residual, n_atoms)
    kept = weights > 0.5
    with torch.no_grad():
        for z, d in zip(data.elements, delta):
            model.atom_ref[z] += float(d)
    after = residual - counts @ delta
    return {"frames": len(indices), "downweighted": int(np.count_nonzero(~kept)),
            "delta_ev": {int(z): float(d) for z, d in zip(data.elements, delta)},
            "energy_mae_ev_per_atom_before": float(np.mean(np.abs(residual / n_atoms))),
            "energy_mae_ev_per_atom_after": float(np.mean(np.abs(after / n_atoms))),
            "energy_mae_ev_per_atom_kept_before": float(np.mean(np.abs(residual[kept] / n_atoms[kept]))),
            "energy_mae_ev_per_atom_kept_after": float(np.mean(np.abs(after[kept] / n_atoms[kept])))}
