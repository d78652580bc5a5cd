"""The distillation recipe: every setting of ``mlff-calc distill`` in one YAML mapping.

Sections (each key documented in ``mlff_calc/recipes/standard.yaml``)::

    sampling:   training trajectories: temperatures (K), frames (per seed), interval (steps), timestep (fs),
                friction (1/fs), warmup (steps), rattle (Å), strain, seed       -> SamplingConfig
    heldout:    independent evaluation trajectories: frames (per seed), seed (!= sampling.seed),
                temperatures (K; null = sampling's); everything else as in sampling
    labelling:  batch_size (frames per commit), commit_interval (s)
    training:   the training schema (model / data / loss / optim / run, as ``mlff-calc train --config``);
                data.path and run.out belong to distill and are refused here; run.num_threads also
                sets torch's threads for the evaluation and the MD check
    evaluation: max_frames (held-out frames compared), nve_steps (compare's own student NVE; 0 = none),
                teacher_md (also run teacher MD for the RDF)
    md:         the stability check: steps, timestep (fs), temperature (K, initial velocities), dtypes
                (float32 and/or float64), structures (seed indices; null = every seed), seed

A recipe is a preset (``mlff_calc/recipes/<name>.yaml``) with a user's YAML merged over it key by key,
so a user file need only name what it changes. Unknown sections and keys are refused, naming the key.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.resources
import math
import re
from pathlib import Path
from typing import Any

PRESETS = ("quick", "standard")
SECTIONS = ("sampling", "heldout", "labelling", "training", "evaluation", "md")

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive_list(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(_is_num(t) and t > 0 for t in v)


# Keys of the sections other than ``sampling`` and ``training`` (whose keys come from their dataclasses):
# name -> (type check, message). ``None`` is allowed only where the message says "or null".
_SCHEMA: dict[str, dict[str, tuple[Any, str]]] = {
    "heldout": {
        "frames": (lambda v: _is_int(v) and v >= 1, "must be an integer >= 1 (frames per seed structure)"),
        "seed": (lambda v: _is_int(v), "must be an integer"),
        "temperatures": (lambda v: v is None or _positive_list(v), "must be a list of temperatures > 0 K, "
                                                                   "or null for sampling's"),
    },
    "labelling": {
        "batch_size": (lambda v: _is_int(v) and v >= 1, "must be an integer >= 1"),
        "commit_interval": (lambda v: _is_num(v) and v > 0, "must be > 0 seconds"),
    },
    "evaluation": {
        "max_frames": (lambda v: _is_int(v) and v >= 1, "must be an integer >= 1"),
        "nve_steps": (lambda v: _is_int(v) and v >= 0, "must be an integer >= 0"),
        "teacher_md": (lambda v: isinstance(v, bool), "must be true or false"),
    },
    "md": {
        "steps": (lambda v: _is_int(v) and v >= 1, "must be an integer >= 1"),
        "timestep": (lambda v: _is_num(v) and 0 < v <= 10, "must be in (0, 10] fs"),
        "temperature": (lambda v: _is_num(v) and v > 0, "must be > 0 K"),
        "dtypes": (lambda v: isinstance(v, list) and v and all(d in ("float32", "float64") for d in v)
                   and len(set(v)) == len(v), "must be a list of float32 and/or float64"),
        "structures": (lambda v: v is None or (isinstance(v, list) and v and all(_is_int(i) and i >= 0
                                                                                for i in v)),
                       "must be a list of seed-structure indices, or null for every seed"),
        "seed": (lambda v: _is_int(v), "must be an integer"),
    },
}


def preset_path(name: str) -> Path:
    """The YAML file of a shipped preset (``quick`` or ``standard``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return Path(str(importlib.resources.files("mlff_calc") / "recipes" / f"{name}.yaml"))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; clear errors for a missing file, bad YAML or a non-mapping."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"recipe {path} is not valid YAML: {exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"recipe {path}: expected a mapping of sections {list(SECTIONS)}, "
                         f"got {type(raw).__name__}")
    return raw


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``, mappings merged key by key (lists and scalars replaced)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """``set_dotted(r, "training.run.max_time", 60)``: set a nested key, creating mappings on the way."""
    *parents, last = dotted.split(".")
    node = raw
    for name in parents:
        node = node.setdefault(name, {})
    node[last] = value


def load_recipe(preset: str | None = "standard", path: str | Path | None = None,
                overrides: dict[str, Any] | None = None,
                base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full, validated recipe: ``base`` (or the preset's file) <- ``path`` <- dotted ``overrides``.

    Returns plain nested data (what ``RUN_DIR/recipe.yaml`` holds). ``ValueError`` names a bad key.
    """
    raw = copy.deepcopy(base) if base is not None else read_yaml(preset_path(preset or "standard"))
    if path is not None:
        raw = merge(raw, read_yaml(path))
    for dotted, value in (overrides or {}).items():
        set_dotted(raw, dotted, value)
    return validate(raw)


def validate(raw: dict[str, Any]) -> dict[str, Any]:
    """Check every section and key; fill nothing in (presets are complete); return a normalised copy."""
    from ..workflow.sampling import SamplingConfig
    from ..training.config import config_from_dict

    if not isinstance(raw, dict):
        raise ValueError(f"recipe: expected a mapping of sections {list(SECTIONS)}")
    for name in raw:
        if name not in SECTIONS:
            raise ValueError(f"recipe: unknown section {name!r}; known sections: {', '.join(SECTIONS)}")
    missing = [s for s in SECTIONS if not isinstance(raw.get(s), dict)]
    if missing:
        raise ValueError(f"recipe: section {missing[0]!r} is missing or not a mapping")
    out = copy.deepcopy(raw)

    # sampling: SamplingConfig's own fields and checks.
    fields = [f.name for f in dataclasses.fields(SamplingConfig)]
    _known_keys("sampling", out["sampling"], fields)
    absent = [k for k in fields if k not in out["sampling"]]
    if absent:
        raise ValueError(f"recipe: sampling.{absent[0]} is missing")
    for key in ("frames", "interval", "warmup", "seed"):
        if not _is_int(out["sampling"][key]):
            raise ValueError(f"recipe sampling.{key}: must be an integer, got {out['sampling'][key]!r}")
    if not _positive_list(out["sampling"]["temperatures"]):
        raise ValueError("recipe sampling.temperatures: must be a list of temperatures > 0 K, "
                         f"got {out['sampling']['temperatures']!r}")
    try:
        SamplingConfig(**out["sampling"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"recipe sampling: {exc}") from None
    out["sampling"]["temperatures"] = [float(t) for t in out["sampling"]["temperatures"]]

    for section, schema in _SCHEMA.items():
        values = out[section]
        _known_keys(section, values, schema)
        for key, (ok, message) in schema.items():
            if key not in values:
                raise ValueError(f"recipe: {section}.{key} is missing")
            if not ok(values[key]):
                raise ValueError(f"recipe {section}.{key}: {message}, got {values[key]!r}")
    if out["heldout"]["seed"] == out["sampling"]["seed"]:
        raise ValueError(f"recipe heldout.seed: must differ from sampling.seed ({out['sampling']['seed']}), "
                         "or the held-out frames would repeat the training trajectory")

    # training: the training schema, minus the two paths distill owns.
    for key in ("data.path", "run.out"):
        section, name = key.split(".")
        if name in (out["training"].get(section) or {}):
            raise ValueError(f"recipe training.{key}: set by distill (RUN_DIR), remove it from the recipe")
    try:
        out["training"] = config_from_dict(out["training"]).to_dict()
    except ValueError as exc:  # "config model.x: ..." / "config: unknown key model.x" -> "training.model.x"
        message = re.sub(r"^config: unknown section '(\w+)'", r"config: unknown section \1", str(exc))
        raise ValueError(re.sub(r"^config(:? )(unknown key |unknown section )?", r"recipe\1\2training.",
                                message)) from None
    for section in ("data", "run"):  # distill fills these in
        out["training"][section].pop({"data": "path", "run": "out"}[section])
    return out


def _known_keys(section: str, values: dict[str, Any], known) -> None:
    for key in values:
        if key not in known:
            raise ValueError(f"recipe: unknown key {section}.{key}; known keys of {section}: "
                             f"{', '.join(sorted(known))}")


def dump_recipe(recipe: dict[str, Any]) -> str:
    """YAML text of a recipe, sections in schema order."""
    import yaml

    return yaml.safe_dump({s: recipe[s] for s in SECTIONS}, sort_keys=False, default_flow_style=None)
