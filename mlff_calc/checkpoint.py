"""Checkpoint files (``student.pt``): plain containers and tensors only, always loaded with
``torch.load(weights_only=True)`` so that a checkpoint can never run code.

Layout (``format_version`` 1)::

    {"format": "mlff_calc.student", "format_version": 1,
     "model_config": {...constructor kwargs...},
     "state_dict": {name: tensor},
     "metadata": {teacher, elements, atom_ref, data summary, metrics, package version, ...}}
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError  # re-exported: checkpoint.CheckpointError is public
from .io import atomic_write

FORMAT = "mlff_calc.student"
FORMAT_VERSION = 1
_REQUIRED = ("format_version", "model_config", "state_dict", "metadata")
_PLAIN = (str, int, float, bool, type(None), torch.Tensor)


def _check_plain(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"checkpoint {where}: key {k!r} must be str or int")
            _check_plain(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for n, v in enumerate(value):
            _check_plain(v, f"{where}[{n}]")
    elif not isinstance(value, _PLAIN):
        raise TypeError(
            f"checkpoint {where}: {type(value).__name__} is not a plain container; "
            "store str/int/float/bool/None, lists, dicts and tensors only"
        )


def save_checkpoint(
    path: str | Path,
    model_config: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    metadata: dict[str, Any] | None = None,
    **extra: Any,
) -> None:
    """Write a checkpoint atomically (temporary file + rename: a killed job never leaves half a file)."""
    from . import __version__

    metadata = dict(metadata or {})
    metadata.setdefault("package_version", __version__)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": dict(model_config),
        "state_dict": dict(state_dict),
        "metadata": metadata,
        **extra,
    }
    _check_plain(payload, "")
    with atomic_write(path, "wb") as fh:
        torch.save(payload, fh)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and validate a checkpoint; raise :class:`CheckpointError` with the reason when it is unusable."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    if not zipfile.is_zipfile(path):
        # torch.save has written zip archives since torch 1.6; anything else is garbage or a bare pickle.
        raise CheckpointError(f"checkpoint {path} is not a readable torch checkpoint (not a torch.save archive)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = [line for line in str(exc).splitlines() if "Unsupported" in line or "GLOBAL" in line]
        raise CheckpointError(
            f"checkpoint {path} was refused: it contains Python objects other than plain containers and "
            f"tensors, which could run code when loaded ({(detail or [str(exc)])[0].strip()[:200]})"
        ) from None
    except Exception as exc:  # torch raises RuntimeError/EOFError/... for files that are not torch.save archives
        raise CheckpointError(
            f"checkpoint {path} is not a readable torch checkpoint ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(payload).__name__}, not a mlff_calc checkpoint dict")
    missing = [key for key in _REQUIRED if key not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a mlff_calc student checkpoint: missing {missing}")
    version = payload["format_version"]
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"checkpoint {path} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format_version {version}, newer than this mlff_calc understands "
            f"({FORMAT_VERSION}); upgrade mlff_calc to read it"
        )
    for key, kind in (("model_config", dict), ("state_dict", dict), ("metadata", dict)):
        if not isinstance(payload[key], kind):
            raise CheckpointError(f"checkpoint {path}: '{key}' must be a dict, got {type(payload[key]).__name__}")
    bad = [name for name, value in payload["state_dict"].items()
           if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:  # a diverged or damaged training: every prediction would be NaN, whatever the structure
        raise CheckpointError(f"checkpoint {path} has non-finite weights ({', '.join(bad[:3])}"
                              f"{', ...' if len(bad) > 3 else ''}); it cannot be used: retrain, or use an "
                              "earlier checkpoint")
    return payload
