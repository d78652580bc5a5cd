"""Typed configuration: dataclasses read from nested plain data (YAML), one way for every config.

The training configuration (:mod:`mlff_calc.training.config`) and the distill recipe
(:mod:`mlff_calc.pipeline.recipe`) are dataclasses; :func:`from_dict` builds one from a mapping and
refuses, naming the key, an unknown section or key, a section that is not a mapping (``run: [..]``), a
value of the wrong type, or (``required=True``) a missing key. Value ranges are checked by the
dataclass's ``checks()`` — a list of ``(key, ok, message)`` — through :func:`validate`, or by its own
``__post_init__``. Every message starts with ``"{label} {dotted.key}: "`` (``config optim.lr: must be
> 0, got -1``; ``recipe training.optim.lr: ...``), so one function serves every caller.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Union, get_args, get_origin, get_type_hints

from .errors import InputError

_NAMES = {int: "int", float: "float", str: "str", bool: "bool"}


def _kind_name(kind: Any) -> str:
    origin = get_origin(kind)
    if origin is Union:
        return " or ".join(_kind_name(k) for k in get_args(kind) if k is not type(None))
    if origin in (list, tuple):
        return f"a list of {_kind_name(get_args(kind)[0])}"
    return _NAMES.get(kind, getattr(kind, "__name__", str(kind)))


def coerce(value: Any, kind: Any, where: str) -> Any:
    """``value`` checked against the annotation ``kind`` (ints accepted for floats; lists for tuples).

    Supports ``bool``, ``int``, ``float`` (finite), ``str``, ``Optional[...]``, ``Union[...]`` (the
    first kind that accepts the value), ``list[T]`` and ``tuple[T, ...]``. Raises :class:`InputError`
    ``"{where}: expected int, got '16' (str)"``.
    """
    if get_origin(kind) is Union:  # Optional[...], Union[float, list[float], None]
        if value is None and type(None) in get_args(kind):
            return None
        kinds = [k for k in get_args(kind) if k is not type(None)]
        if len(kinds) > 1:
            for k in kinds:
                try:
                    return coerce(value, k, where)
                except InputError:
                    pass
            raise InputError(f"{where}: expected {_kind_name(kind)}, got {value!r} ({type(value).__name__})")
        kind = kinds[0]
    origin = get_origin(kind)
    if origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            items = [coerce(v, get_args(kind)[0], f"{where}[{i}]") for i, v in enumerate(value)]
            return tuple(items) if origin is tuple else items
    elif kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif kind is str:
        if isinstance(value, str):
            return value
    raise InputError(f"{where}: expected {_kind_name(kind)}, got {value!r} ({type(value).__name__})")


def from_dict(cls: type, raw: Any, *, label: str = "config", prefix: str = "", base: Any = None,
              required: bool = False) -> Any:
    """An instance of the dataclass ``cls`` from the mapping ``raw``, over ``base`` (default: defaults).

    Fields whose type is itself a dataclass are sections: their values must be mappings and are read
    recursively. ``required``: every field must be given (a recipe preset is complete; nothing is
    filled in silently). Messages name the key as ``prefix + name``.
    """
    what = prefix.rstrip(".") or "the top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        kind = "settings" if prefix else "sections"
        got = f"{type(raw).__name__} {raw!r}"[:200]
        raise InputError(f"{label} {what}: expected a mapping of {kind}, got {got}")
    hints = get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in fields:
            sections = [f for f in fields if dataclasses.is_dataclass(hints[f])]
            if sections and len(sections) == len(fields):
                shown = repr(name) if not prefix else f"{prefix}{name}"
                raise InputError(f"{label}: unknown section {shown}; known sections: {', '.join(fields)}")
            raise InputError(f"{label}: unknown key {prefix}{name}; known keys of {what}: "
                             f"{', '.join(sorted(fields))}")
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            if value is None and not required:
                continue
            values[name] = from_dict(kind, value, label=label, prefix=f"{prefix}{name}.",
                                     base=getattr(base, name, None), required=required)
        else:
            values[name] = coerce(value, kind, f"{label} {prefix}{name}")
    if required:
        missing = [f for f in fields if f not in values]
        if missing:
            raise InputError(f"{label}: {prefix}{missing[0]} is missing")
    try:
        return dataclasses.replace(base, **values) if base is not None else cls(**values)
    except (TypeError, ValueError) as exc:  # a dataclass's own __post_init__ checks
        raise InputError(f"{label} {what}: {exc}") from None


def validate(config: Any, *, label: str = "config", prefix: str = "") -> Any:
    """Run ``config.checks()`` (and those of its sections, recursively); raise naming the first bad key."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            validate(value, label=label, prefix=f"{prefix}{field.name}.")
    for key, ok, message in getattr(config, "checks", lambda: [])():
        if not ok:
            raise InputError(f"{label} {prefix}{key}: {message}, got {get(config, key)!r}")
    return config


def get(config: Any, dotted: str) -> Any:
    """``get(cfg, "optim.lr")``: a nested attribute by its dotted name."""
    for name in dotted.split("."):
        config = getattr(config, name)
    return config


def set_dotted(raw: dict[str, Any], dotted: str, value: Any, label: str = "config") -> None:
    """``set_dotted(r, "run.max_time", 60)``: set a nested key of plain data, creating mappings on the way;
    a section that is present but not a mapping is refused (never silently replaced)."""
    *parents, last = dotted.split(".")
    node, path = raw, []
    for name in parents:
        path.append(name)
        node = node.setdefault(name, {})
        if node is None:
            node = _parent(raw, path)[name] = {}
        if not isinstance(node, dict):
            raise InputError(f"{label} {'.'.join(path)}: expected a mapping of settings, "
                             f"got {type(node).__name__} {node!r}"[:300])
    node[last] = value


def _parent(raw: dict, path: list[str]) -> dict:
    for name in path[:-1]:
        raw = raw[name]
    return raw


__all__ = ["coerce", "from_dict", "validate", "get", "set_dotted"]


def read_yaml(path: "str | os.PathLike", what: str, expected: str = "a mapping of sections") -> dict[str, Any]:
    """The YAML mapping in ``path`` (``{}`` for an empty file): ``FileNotFoundError`` for a missing file,
    :class:`InputError` for bad YAML or a document that is not a mapping, each naming ``what`` (e.g.
    ``"recipe"``) and the path. One reader for recipes, training configs and gates files."""
    from pathlib import Path

    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"{what} {path} is not valid YAML: {exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InputError(f"{what} {path}: expected {expected}, got {type(raw).__name__}")
    return raw
