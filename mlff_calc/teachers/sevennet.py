"""``sevennet-0``: the SevenNet-0 foundation model (sevenn; its weights ship inside the wheel).

Options: ``device`` (``"auto" | "cpu" | "cuda[:n]"``), ``weights`` (a SevenNet checkpoint to use
instead of the bundled 7net-0), ``modal`` (for multi-fidelity checkpoints).
"""

from __future__ import annotations

import warnings
from typing import Any

from ase.calculators.calculator import Calculator

from ._options import check_options, resolve_device_name

OPTIONS = ("device", "weights", "modal")


def build(**options: Any) -> Calculator:
    """``SevenNetCalculator("7net-0", device=...)``; ``ValueError`` for a missing sevenn or bad options."""
    check_options("sevennet-0", options, OPTIONS)
    try:
        with warnings.catch_warnings():  # sevenn's import-time torch.jit.script deprecation: not ours
            warnings.simplefilter("ignore", DeprecationWarning)
            from sevenn.calculator import SevenNetCalculator
    except ImportError as exc:
        raise ValueError(
            f"teacher 'sevennet-0' needs sevenn: pip install 'mlff-calc[sevennet]' ({exc})"
        ) from exc
    device = resolve_device_name("sevennet-0", options.get("device", "auto"))
    model = str(options.get("weights") or "7net-0")
    kwargs = {"modal": options["modal"]} if options.get("modal") is not None else {}
    try:
        with warnings.catch_warnings():
            if device == "cpu":  # the tensor-product accelerators it suggests are GPU-only
                warnings.filterwarnings("ignore", message="No tensor product accelerator")
            return SevenNetCalculator(model, device=device, **kwargs)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise ValueError(f"could not load SevenNet model {model!r} (option 'weights'): {exc}") from exc
