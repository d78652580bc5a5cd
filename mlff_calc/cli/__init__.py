"""``mlff-calc``: a thin shell over the Python API.

Each sub-command lives in its own module ``mlff_calc/cli/<name>.py`` with ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``; ``main`` only parses, dispatches and turns failures
into one line on stderr (``--debug``, before or after the sub-command, shows the traceback instead).

Exit codes: 0 success; 1 an expected failure (bad input, a file that cannot be read or written, an
output that exists, a teacher failure, an MD blow-up) or a bug; 2 a usage error (argparse); 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from .. import __version__
from ..errors import MLFFError

# Sub-commands in the order ``mlff-calc --help`` lists them (a module missing here is skipped).
COMMANDS = ("distill", "sample", "label", "dataset", "train", "calibrate", "md", "compare", "export")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line too (exit code 2), naming where to read more."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mlff-calc",
        description="Distil a teacher force field into a fast PaiNN student and run MD with it.",
    )
    parser.add_argument("--version", action="version", version=f"mlff-calc {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="on failure, print the full traceback instead of one line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue
            raise
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        # default=SUPPRESS: a --debug given before the sub-command is not reset by the sub-parser
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="on failure, print the full traceback instead of one line")
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line; an ``OSError`` names its file and what to do."""
    if isinstance(exc, OSError) and not isinstance(exc, MLFFError) and exc.strerror:
        where = exc.filename if exc.filename is not None else ""
        if isinstance(exc, FileExistsError) and where and os.path.isfile(where):  # mkdir under a file
            return f"{where} is a file, not a directory: nothing can be written under it; choose another path"
        text = f"{exc.strerror}: {where}" if where else exc.strerror
        hint = {
            PermissionError: "check the permissions, or choose another path",
            IsADirectoryError: "give a file name, not a directory",
            NotADirectoryError: "a part of the path is a file, not a directory; choose another path",
            FileExistsError: "choose another path",
            FileNotFoundError: "check the path",
        }.get(type(exc), "check the path and the disk")
        text = f"{text} ({hint})"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    prefix = f"mlff-calc {args.command}: error:"
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print(f"mlff-calc {args.command}: interrupted", file=sys.stderr)
        return 130
    except (MLFFError, ValueError, OSError) as exc:
        # Expected failures (bad input, unreadable or unwritable files, outputs that exist): one line.
        if args.debug:
            traceback.print_exc()
        else:
            print(f"{prefix} {_one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: still one line, and how to see more
        if args.debug:
            traceback.print_exc()
        else:
            print(f"{prefix} {type(exc).__name__}: {_one_line(exc)} (an internal error; run with --debug "
                  "for the traceback and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
