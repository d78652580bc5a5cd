"""Argument helpers shared by several sub-commands."""

from __future__ import annotations

import argparse
import json
from typing import Any


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
