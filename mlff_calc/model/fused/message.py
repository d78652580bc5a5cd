"""The fused PaiNN message as an autograd Function (first derivatives only: inference and forces)."""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .build import load_library

_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def _p(t: torch.Tensor) -> int:
    return t.data_ptr()


class _FusedMessage(torch.autograd.Function):
    @staticmethod
    def forward(ctx, phi, W, directions, v, rowptr, col, rev, half):
        lib = load_library()
        n, f = v.shape[0], v.shape[2]
        phi, directions, v = (t.contiguous() for t in (phi, directions, v))
        if W.stride(1) != 1:
            W = W.contiguous()
        ds = torch.empty((n, f), dtype=v.dtype)
        dv = torch.empty((n, 3, f), dtype=v.dtype)
        getattr(lib, f"painn_message_forward_{_SUFFIX[v.dtype]}")(
            n, f, W.stride(0), _p(phi), _p(W), _p(directions), _p(v), _p(rowptr), _p(col), _p(half), _p(ds), _p(dv),
            torch.get_num_threads(),
        )
        ctx.save_for_backward(phi, W, directions, v, rowptr, col, rev, half)
        return ds, dv

    @staticmethod
    @once_differentiable
    def backward(ctx, g_ds, g_dv):
        lib = load_library()
        phi, W, directions, v, rowptr, col, rev, half = ctx.saved_tensors
        n, f = v.shape[0], v.shape[2]
        g_ds = torch.zeros_like(v[:, 0]) if g_ds is None else g_ds.contiguous()
        g_dv = torch.zeros_like(v) if g_dv is None else g_dv.contiguous()
        g_phi = torch.empty_like(phi)
        g_W = torch.empty((W.shape[0], 3 * f), dtype=W.dtype)
        g_dir, g_v = torch.empty_like(directions), torch.empty_like(v)
        getattr(lib, f"painn_message_backward_{_SUFFIX[v.dtype]}")(
            n, f, W.stride(0), _p(phi), _p(W), _p(directions), _p(v), _p(rowptr), _p(col), _p(rev), _p(half),
            _p(g_ds), _p(g_dv), _p(g_phi), _p(g_W), _p(g_dir), _p(g_v), torch.get_num_threads(),
        )
        return g_phi, g_W, g_dir, g_v, None, None, None, None


def fused_message(
    phi: torch.Tensor,  # (N, 3F)
    W: torch.Tensor,  # (H, 3F) one row per pair, rows may be strided (a column slice)
    directions: torch.Tensor,  # (E, 3)
    v: torch.Tensor,  # (N, 3, F)
    rowptr: torch.Tensor,  # (N + 1,) int64, receiver-sorted CSR
    col: torch.Tensor,  # (E,) int64, senders
    rev: torch.Tensor,  # (E,) int64, index of the reverse edge
    half: torch.Tensor,  # (E,) int64, row of W for each edge (both edges of a pair share one)
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ds (N, F), dv (N, 3, F))``: the PaiNN message sums, fused (see painn_message.cpp)."""
    return _FusedMessage.apply(phi, W, directions, v, rowptr, col, rev, half)
