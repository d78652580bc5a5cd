"""``mlff-calc``: a thin shell over the Python API.

Each sub-command lives in its own module ``mlff_calc/cli/<name>.py`` with ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``; ``main`` only parses and dispatches, so tests call
``run`` directly.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__

# Sub-commands in the order ``mlff-calc --help`` lists them (a module missing here is skipped).
COMMANDS = ("distill", "sample", "label", "dataset", "train", "md", "compare", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlff-calc",
        description="Distil a teacher force field into a fast PaiNN student and run MD with it.",
    )
    parser.add_argument("--version", action="version", version=f"mlff-calc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue
            raise
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        # Expected failures (bad input, missing files): one clear line, no traceback.
        print(f"mlff-calc {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mlff-calc {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
