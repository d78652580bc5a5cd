"""Loss and error metrics, student vs teacher.

Loss of a batch (weights from :class:`~mlff_calc.training.config.LossConfig`)::

    w_E * mean_b ((E_b - E*_b) / n_b)²  +  w_F * mean_{i,a} (F_ia - F*_ia)²
                                        +  w_S * mean_{b∈L,ab} (σ_bab - σ*_bab)²
                                        +  w_H * mean_{i∈P,a} ((H v)_ia - (H v)*_ia)²

with ``L`` the structures whose stress is labelled (finite) and ``P`` the atoms of structures with
curvature labels. With ``loss.force_huber`` = δ the force term's square is twice the Huber loss
(the square below δ, ``2δ|x| - δ²`` beyond; in training only, reported losses stay squared). Each step
trains on one probe per structure, ``v = Σ_k s_k v_k / √K`` with random signs ``s_k = ±1`` over its
``K`` stored probes (for orthonormal probes unit norm again; weighted normal-mode probes keep their
weights, E|dH v|² = Σ_k |dH v_k|² / K; the label is the same sum of the stored ``H v_k``, since ``H`` is
linear): one double-backward pass, whatever ``K``, and over the epochs every stored direction is used
(:func:`combined_probe`). Metrics are kept as sums so that they add up exactly over batches and
processes: force MAE/RMSE are over Cartesian components (eV/Å), energy errors are per atom (eV/atom),
cosine similarity is the mean over atoms of cos(F_i, F*_i).
"""

from __future__ import annotations

import math

import torch

from .. import _keys as K
from ..data.torch_dataset import N_ATOMS
from .config import LossConfig

# Slots of the sum vector of ErrorSums.
_FIELDS = ("n_structures", "e_sq", "e_abs", "n_force", "f_sq", "f_abs", "n_cos", "cos",
           "n_stress", "s_sq", "s_abs", "n_hvp", "h_sq", "h_abs")


def combined_probe(batch: dict[str, torch.Tensor], random: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(probe (N, 3), label (N, 3) eV/Å²)``: per structure the signed sum of its stored probes / √K.

    ``random``: signs from torch's generator (training; a resumed run restores it); else all +1
    (validation and test, so their errors are comparable between epochs). Zero where no probes.
    """
    counts, probes, values = batch[K.N_PROBES], batch[K.HVP_PROBES], batch[K.HVP]
    n_slots = probes.shape[1]
    if random:
        signs = torch.randint(0, 2, (len(counts), n_slots), device=counts.device).to(probes.dtype) * 2 - 1
    else:
        signs = torch.ones((len(counts), n_slots), dtype=probes.dtype, device=counts.device)
    used = torch.arange(n_slots, device=counts.device)[None, :] < counts[:, None]
    weights = (signs * used / counts.clamp(min=1).to(probes.dtype).sqrt()[:, None])[batch[K.BATCH]]
    return (weights[..., None] * probes).sum(1), (weights[..., None] * values).sum(1)


def _probed_atoms(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return batch[K.N_PROBES][batch[K.BATCH]] > 0  # (N,) bool


def _force_term(pred: torch.Tensor, ref: torch.Tensor, delta: float | None) -> torch.Tensor:
    """Mean squared force-component error, or (``delta``, eV/Å) twice its Huber loss: equal to the
    squared error where ``|x| <= delta``, ``2 delta |x| - delta²`` beyond."""
    if delta is None:
        return (pred - ref).pow(2).mean()
    return 2.0 * torch.nn.functional.huber_loss(pred, ref, delta=delta)


def batch_loss(pred: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], weights: LossConfig,
               use_forces: bool, use_stress: bool) -> torch.Tensor:
    """The weighted loss of one batch (a differentiable scalar): squared errors, the forces' Huber with
    ``weights.force_huber``."""
    e_err = (pred[K.ENERGY] - batch[K.ENERGY]) / batch[N_ATOMS]  # (B,) eV/atom
    # The energy term is always in the graph (weight 0 gives zero gradients, not missing ones), so DDP
    # sees a gradient for the readout bias, which forces alone never reach.
    loss = weights.energy_weight * e_err.pow(2).mean()
    if use_forces:
        loss = loss + weights.force_weight * _force_term(pred[K.FORCES], batch[K.FORCES], weights.force_huber)
    if use_stress:
        labelled = torch.isfinite(batch[K.STRESS]).all(dim=(1, 2))  # (B,)
        if labelled.any():
            s_err = pred[K.STRESS][labelled] - batch[K.STRESS][labelled]
            loss = loss + weights.stress_weight * s_err.pow(2).mean()
    if K.HVP in pred:
        probed = _probed_atoms(batch)
        if probed.any():
            h_err = pred[K.HVP][probed] - batch[K.HVP_TARGET][probed]
            loss = loss + weights.hvp_weight * h_err.pow(2).mean()
    return loss


class ErrorSums:
    """Running sums of errors (float64), additive over batches and, via ``all_reduce``, processes."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.sums = torch.zeros(len(_FIELDS), dtype=torch.float64, device=device)

    @torch.no_grad()
    def add(self, pred: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> None:
        s = self.sums
        e_err = ((pred[K.ENERGY] - batch[K.ENERGY]) / batch[N_ATOMS]).double()
        s[0] += e_err.numel()
        s[1] += e_err.pow(2).sum()
        s[2] += e_err.abs().sum()
        if K.FORCES in pred and torch.isfinite(batch[K.FORCES]).all():
            f, f_ref = pred[K.FORCES].double(), batch[K.FORCES].double()
            s[3] += f.numel()
            s[4] += (f - f_ref).pow(2).sum()
            s[5] += (f - f_ref).abs().sum()
            norms = f.norm(dim=1) * f_ref.norm(dim=1)
            ok = norms > 1e-12  # cosine undefined for a zero force
            s[6] += ok.sum()
            s[7] += ((f * f_ref).sum(dim=1)[ok] / norms[ok]).sum()
        if K.STRESS in pred:
            labelled = (torch.isfinite(batch[K.STRESS]).all(dim=(1, 2))
                        & torch.isfinite(pred[K.STRESS]).all(dim=(1, 2)))
            err = (pred[K.STRESS][labelled] - batch[K.STRESS][labelled]).double()
            s[8] += err.numel()
            s[9] += err.pow(2).sum()
            s[10] += err.abs().sum()
        if K.HVP in pred:
            probed = _probed_atoms(batch)
            err = (pred[K.HVP][probed] - batch[K.HVP_TARGET][probed]).double()
            s[11] += err.numel()
            s[12] += err.pow(2).sum()
            s[13] += err.abs().sum()

    def metrics(self, weights: LossConfig) -> dict[str, float]:
        """``loss`` and MAE/RMSE per property (NaN where nothing was labelled; the curvature metrics only
        when curvature labels were evaluated)."""
        v = dict(zip(_FIELDS, self.sums.tolist()))

        def ratio(a: str, n: str) -> float:
            return v[a] / v[n] if v[n] > 0 else math.nan

        out = {
            "energy_mae_ev_per_atom": ratio("e_abs", "n_structures"),
            "energy_rmse_ev_per_atom": math.sqrt(ratio("e_sq", "n_structures")),
            "force_mae_ev_per_ang": ratio("f_abs", "n_force"),
            "force_rmse_ev_per_ang": math.sqrt(ratio("f_sq", "n_force")),
            "force_cosine_mean": ratio("cos", "n_cos"),
            "stress_mae_ev_per_ang3": ratio("s_abs", "n_stress"),
        }
        if v["n_hvp"] > 0:  # only where curvature labels were evaluated (most datasets have none)
            out["hvp_mae_ev_per_ang2"] = ratio("h_abs", "n_hvp")
            out["hvp_rmse_ev_per_ang2"] = math.sqrt(ratio("h_sq", "n_hvp"))
        loss = weights.energy_weight * ratio("e_sq", "n_structures")
        terms = ((weights.force_weight, "f_sq", "n_force"), (weights.stress_weight, "s_sq", "n_stress"),
                 (weights.hvp_weight, "h_sq", "n_hvp"))
        for w, key, n in terms:
            if w > 0 and v[n] > 0:
                loss += w * ratio(key, n)
        out["loss"] = loss
        return out
