"""Small helpers: device and dtype normalisation, element names."""

from __future__ import annotations

import torch
from ase.data import chemical_symbols

_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "fp32": torch.float32,
    "float64": torch.float64,
    "double": torch.float64,
    "fp64": torch.float64,
}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto" | "cpu" | "cuda[:n]" | torch.device`` into a ``torch.device``.

    ``"auto"`` (or ``None``) picks the first CUDA device when one is present, else the CPU.
    """
    if device is None or (isinstance(device, str) and device.lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None = "float32") -> torch.dtype:
    """Turn ``"float32" | "float64" | torch.float32 | torch.float64`` into a ``torch.dtype``."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        return dtype
    try:
        return _DTYPES[str(dtype).lower().removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}") from None


def element_list(numbers) -> str:
    """``[1, 6, 8] -> 'H, C, O'`` for error messages."""
    return ", ".join(chemical_symbols[int(z)] for z in sorted(set(int(z) for z in numbers)))


def bitwise_equal(a, b) -> bool:
    """Same dtype, shape and bytes: exact equality of numpy arrays, ~3x faster than ``(a == b).all()``
    on small ones and stricter (-0.0 vs 0.0 differ; what a cache check wants: a false "changed" only
    costs a recomputation)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
