"""``package.module:callable``: any function or class that returns an ASE calculator.

    mlff-calc label --teacher mypkg.teachers:make_calc --teacher-option cutoff=6.0 ...

calls ``mypkg.teachers.make_calc(cutoff=6.0)``. The current directory is searched last, so a module
next to the user's files works without installing it.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any

from ase.calculators.calculator import BaseCalculator

from ._options import check_options


def build(spec: str, **options: Any) -> BaseCalculator:
    """Import ``spec`` (``"package.module:callable"``), call it with ``options``, check the result."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"teacher {spec!r}: expected 'package.module:callable'")
    module = _import(spec, module_name)
    factory = module
    for part in attr.split("."):  # "module:Class.method" works too
        try:
            factory = getattr(factory, part)
        except AttributeError:
            raise ValueError(f"teacher {spec!r}: module {module_name!r} has no attribute {attr!r}") from None
    if not callable(factory):
        raise ValueError(f"teacher {spec!r}: {attr!r} is not callable")
    _check_signature(spec, factory, options)
    calc = factory(**options)
    if not isinstance(calc, BaseCalculator):
        raise ValueError(f"teacher {spec!r} returned {type(calc).__name__}, not an ase Calculator")
    return calc


def _import(spec: str, module_name: str):
    added = os.getcwd() not in sys.path
    if added:
        sys.path.append(os.getcwd())
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"teacher {spec!r}: cannot import module {module_name!r}: {exc}") from exc
    finally:
        if added:
            sys.path.remove(os.getcwd())


def _check_signature(spec: str, factory, options: dict[str, Any]) -> None:
    """A ``ValueError`` naming options the factory cannot take (instead of a bare ``TypeError``)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins / C extensions: let the call itself complain
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    check_options(spec, options, named)
