"""Option checking shared by the teacher factories."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


def check_options(teacher: str, options: dict[str, Any], allowed: Iterable[str]) -> None:
    """Raise ``ValueError`` naming every option of ``options`` that ``teacher`` does not take.

    Most ASE calculators accept unknown keyword arguments silently (EMT, tblite), so a typo such as
    ``acuracy=0.1`` would otherwise be ignored and the labels computed with the default.
    """
    allowed = sorted(set(allowed))
    bad = [key for key in options if key not in allowed]
    if not bad:
        return
    hints = []
    for key in bad:
        close = difflib.get_close_matches(key, allowed, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    valid = ", ".join(allowed) if allowed else "none"
    raise ValueError(f"teacher {teacher!r} does not take option {', '.join(hints)}; valid options: {valid}")


def choice(teacher: str, key: str, value: Any, choices: Iterable[str]) -> str:
    """``value`` (case-insensitive) if it is one of ``choices``; else a ``ValueError`` naming ``key``."""
    choices = list(choices)
    text = str(value).lower()
    if text not in choices:
        raise ValueError(f"teacher {teacher!r}: option {key}={value!r} must be one of {choices}")
    return text


def resolve_device_name(teacher: str, device: Any) -> str:
    """``"auto" | "cpu" | "cuda[:n]"`` -> a concrete device string (``ValueError`` naming ``device``)."""
    from ..utils import resolve_device

    try:
        return str(resolve_device(device))
    except ValueError as exc:
        raise ValueError(f"teacher {teacher!r}: option device={device!r}: {exc}") from None
