"""The whole student (PaiNN + readout + scale/shift/atom_ref) and its gradient as one C++ call.

For CPU inference: no autograd graph, no per-op overhead. ``pack`` copies the weights once per
(model, dtype); ``evaluate`` returns per-atom energies, forces and the gradient of the total energy with
respect to every edge vector (the caller forms the virial ``sum_e r_e ⊗ g_e`` for the stress).
The numbers equal the eager model's (``model.representation`` + readout, autograd) to round-off.

Graph inputs (all CPU, contiguous; ``mlff_calc.neighbors`` builds them):
    numbers  (N,) int64         atomic numbers
    vectors  (E, 3) model dtype  r_ij = x_j - x_i + S @ cell for edge e = (i, j, S)
    rowptr   (N+1,) int64       edges sorted by receiver i (CSR): row i holds the edges with edge_index[0] == i
    col      (E,) int64         sender j of each edge
    reverse  (E,) int64         index of the edge (j, i, -S)
    half     (E,) int64         pair index in [0, H), shared by both edges of a pair (H = E // 2)
Both edges of a pair must have bit-identical |r| (the filters are computed once per pair).

The call releases the GIL (ctypes) and keeps a workspace per calling thread between calls (about
``4 (19 F B + 33 F) N + 120 E`` bytes in float32, 0.5 GB for 10,000 atoms at F = 128, B = 3;
:func:`release_workspace` frees it).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

import torch

from ...errors import InputError
from .build import load_whole_library, whole_available

_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


class KernelUnavailableError(RuntimeError):
    """The whole-model kernel cannot run here (no compiler, ``MLFF_CALC_NO_FUSED=1``): use the eager path."""


def available() -> bool:
    """Whether :func:`evaluate` can run here (the library builds and loads); warns once when it cannot."""
    return whole_available()


def release_workspace() -> None:
    """Free the calling thread's kernel workspace (kept between calls, up to 1 GiB, for MD loops)."""
    lib = load_whole_library()
    if lib is not None:
        lib.painn_whole_release()


@dataclass
class PackedModel:
    """Contiguous copies of the weights in the layout ``painn_model.cpp`` reads (see ``_pointer_list``)."""

    dtype: torch.dtype
    hidden_dim: int
    num_interactions: int
    max_z: int
    cutoff: float
    tensors: list[torch.Tensor] = field(repr=False)
    dims: ctypes.Array = field(repr=False)
    pointers: ctypes.Array = field(repr=False)


def _linear(layer: torch.nn.Linear, dtype: torch.dtype) -> list[torch.Tensor]:
    """``[W^T (in, out), b (out,), W (out, in)]`` (no ``b`` for a layer without bias)."""
    w = layer.weight.detach().to(dtype)
    out = [w.t().contiguous()]
    if layer.bias is not None:
        out.append(layer.bias.detach().to(dtype).contiguous())
    out.append(w.contiguous())
    return out


def pack(model: torch.nn.Module) -> PackedModel:
    """Copy a :class:`~mlff_calc.model.student.StudentForceField`'s weights for :func:`evaluate`.

    Once per (model, dtype); weights changed later are not seen. Raises :class:`InputError` for a model
    that is not on the CPU or not float32/float64, and :class:`KernelUnavailableError` when the kernel
    cannot be built here.
    """
    dtype = model.atom_ref.dtype
    device = model.atom_ref.device
    if device.type != "cpu":
        raise InputError(f"the whole-model CPU kernel needs a model on the CPU, this one is on {device}")
    if dtype not in _SUFFIX:
        raise InputError(f"the whole-model CPU kernel supports float32 and float64 models, not {dtype}")
    if load_whole_library() is None:
        raise KernelUnavailableError("the whole-model CPU kernel is unavailable here (see the earlier warning)")
    rep = model.representation
    f, blocks = rep.hidden_dim, rep.num_interactions
    centers = rep.rbf.centers.detach().to(dtype).contiguous()
    filter_net = rep.filter_net
    filt = torch.cat([filter_net.weight, filter_net.bias[:, None]], dim=1).detach().to(dtype).t().contiguous()
    readout_hidden, readout_out = model.readout[0], model.readout[2]
    scalars = [
        rep.rbf.coeff,
        rep.cutoff_fn.cutoff,
        float(model.scale.detach()),
        float(model.shift.detach()),
        float(readout_out.bias.detach()),
        torch.pi / rep.cutoff_fn.cutoff,
    ] + [float(update.epsilon) for update in rep.updates]
    tensors = [
        torch.tensor(scalars, dtype=torch.float64).to(dtype),
        rep.embedding.weight.detach().to(dtype).contiguous(),
        filt,
        centers,
        model.atom_ref.detach().to(dtype).contiguous(),
        *_linear(readout_hidden, dtype),
        readout_out.weight.detach().to(dtype).reshape(-1).contiguous(),
    ]
    for message, update in zip(rep.messages, rep.updates):
        tensors += _linear(message.scalar_mlp[0], dtype) + _linear(message.scalar_mlp[2], dtype)
        tensors += _linear(update.vector_mix, dtype)
        tensors += _linear(update.scalar_mlp[0], dtype) + _linear(update.scalar_mlp[2], dtype)
    dims = (ctypes.c_int64 * 5)(f, blocks, centers.numel(), readout_hidden.out_features, model.max_z)
    pointers = (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])
    return PackedModel(dtype, f, blocks, int(model.max_z), float(rep.cutoff_fn.cutoff), tensors, dims, pointers)


def evaluate(
    packed: PackedModel,
    numbers: torch.Tensor,
    vectors: torch.Tensor,
    rowptr: torch.Tensor,
    col: torch.Tensor,
    reverse: torch.Tensor,
    half: torch.Tensor,
    n_pairs: int,
    compute_gradient: bool = True,
    threads: int | None = None,
    features: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(energies (N,) eV, forces (N, 3) eV/Å, edge_grad (E, 3) eV/Å)``; see the module docstring.

    ``forces = -dE/dx`` and ``edge_grad[e] = dE_total/d vectors[e]``; both are ``None`` when
    ``compute_gradient`` is false. ``threads`` defaults to ``torch.get_num_threads()``, but at most one
    per 32 atoms (a molecule of 9 atoms gains nothing from a second thread: ~70 barriers per call).
    Results are bit-identical for any number of threads.
    Inputs that are not contiguous are copied (contiguous ones are used in place).
    ``features``: an optional contiguous ``(N, Fh)`` tensor of the packed dtype that receives the readout's
    last hidden features ``silu(readout[0](s))`` (what :mod:`mlff_calc.uncertainty` reads).
    """
    lib = load_whole_library()
    if lib is None:
        raise KernelUnavailableError("the whole-model CPU kernel is unavailable here")
    dtype = packed.dtype
    if vectors.dtype != dtype:
        raise InputError(f"edge vectors are {vectors.dtype}, the packed model is {dtype}")
    n, e = numbers.shape[0], vectors.shape[0]
    if e != 2 * n_pairs or rowptr.shape[0] != n + 1:
        raise InputError(f"inconsistent graph: {n} atoms, rowptr of {rowptr.shape[0]}, {e} edges, {n_pairs} pairs")
    vectors, numbers, rowptr, col, reverse, half = (
        t if t.is_contiguous() else t.contiguous() for t in (vectors, numbers, rowptr, col, reverse, half)
    )
    if features is not None and (features.dtype != dtype or not features.is_contiguous()
                                 or features.dim() != 2 or features.shape[0] != n):
        raise InputError(f"features must be a contiguous ({n}, Fh) {dtype} tensor")
    energies = torch.empty(n, dtype=dtype)
    forces = torch.empty((n, 3), dtype=dtype) if compute_gradient else None
    edge_grad = torch.empty((e, 3), dtype=dtype) if compute_gradient else None
    status = getattr(lib, f"painn_whole_{_SUFFIX[dtype]}")(
        packed.dims, packed.pointers, n, e, n_pairs,
        numbers.data_ptr(), vectors.data_ptr(), rowptr.data_ptr(), col.data_ptr(), reverse.data_ptr(),
        half.data_ptr(), energies.data_ptr(),
        forces.data_ptr() if compute_gradient else None, edge_grad.data_ptr() if compute_gradient else None,
        int(compute_gradient), int(threads or min(torch.get_num_threads(), max(1, n // 32))),
        None if features is None else features.data_ptr(),
    )  # fmt: skip
    if status == 1:
        raise InputError(f"atomic numbers must lie in 0..{packed.max_z}, got {numbers.min()}..{numbers.max()}")
    if status != 0:
        raise RuntimeError(f"whole-model kernel failed with status {status}")
    return energies, forces, edge_grad
