"""Argument helpers shared by several sub-commands."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
from typing import Any, Callable


def parse_option(text: str) -> tuple[str, Any]:
    """``"key=value"`` -> ``(key, value)``; the value is read as JSON when it parses (numbers, true, null)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, value = text.split("=", 1)
    key = key.strip().replace("-", "_")
    if not key:
        raise argparse.ArgumentTypeError(f"empty key in {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_teacher_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--teacher NAME`` and repeatable ``--teacher-option key=value``."""
    parser.add_argument(
        "--teacher",
        required=required,
        help="orb-v2 | gfn2-xtb | sevennet-0 | emt | package.module:callable",
    )
    parser.add_argument(
        "--teacher-option",
        action="append",
        default=[],
        type=parse_option,
        metavar="KEY=VALUE",
        help="teacher option, repeatable (e.g. weights=orb.ckpt, device=cuda, precision=float64)",
    )
    parser.add_argument(
        "--teacher-weights",
        default=None,
        metavar="PATH",
        help="local weights file for the teacher (same as --teacher-option weights=PATH)",
    )


def teacher_options(args: argparse.Namespace) -> dict[str, Any]:
    options = dict(args.teacher_option or [])
    if getattr(args, "teacher_weights", None):
        options["weights"] = args.teacher_weights
    return options


def finite_float(text: str) -> float:
    """argparse ``type``: a finite float (``nan`` and ``inf`` are refused at parse time)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def default_of(function: Callable, name: str) -> Any:
    """The default of parameter ``name`` of ``function`` (or field ``name`` of a dataclass): the one
    place a default is stated; CLI flags default to ``None`` and fall back to it."""
    if dataclasses.is_dataclass(function):
        field = {f.name: f for f in dataclasses.fields(function)}[name]
        return field.default
    return inspect.signature(function).parameters[name].default


def given(args: argparse.Namespace, **names: str) -> dict[str, Any]:
    """``{keyword: value}`` for the flags the user gave (not None): ``given(args, batch_size="batch_size")``.

    Flags left out are not passed on, so the called function's own default applies.
    """
    return {keyword: getattr(args, attr) for keyword, attr in names.items()
            if getattr(args, attr) is not None}


def refuse_file_as_directory(path: str, flag: str = "--out") -> None:
    """A run or report directory ``path`` that exists as a *file*: one clear error before any work."""
    from ..errors import OutputExistsError

    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputExistsError(f"{flag} {path} is an existing file, not a directory; give a directory "
                                "(it is created if missing)")
