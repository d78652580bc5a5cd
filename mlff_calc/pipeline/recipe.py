"""The distillation recipe: every setting of ``mlff-calc distill`` in one YAML mapping.

Sections (each key documented in ``mlff_calc/recipes/standard.yaml``)::

    sampling:   training trajectories: temperatures (K), frames (per seed), interval (steps), timestep (fs),
                friction (1/fs), warmup (steps), rattle (Å), strain, seed       -> SamplingConfig
    heldout:    independent evaluation trajectories: frames (per seed), seed (!= sampling.seed),
                temperatures (K; null = sampling's); everything else as in sampling
    labelling:  batch_size (frames per commit), commit_interval (s), hvp_fraction (frames with curvature
                labels, 0 = off), hvp_probes (per such frame, 2 teacher calls each), hvp_epsilon (Å),
                hessian_at_minima: {enabled, copies (per epoch), epsilon (Å)} (the teacher's Hessian at
                each molecular seed's minimum as training frames; :mod:`.minima`)
    training:   the training schema (model / data / loss / optim / run, as ``mlff-calc train --config``);
                data.path, data.train_only(_repeat) and run.out belong to distill and are refused here;
                run.num_threads also sets torch's threads for the evaluation and the MD check
    evaluation: max_frames (held-out frames compared), nve_steps (compare's own student NVE; 0 = none),
                teacher_md (also run teacher MD for the RDF)
    md:         the stability check: steps, timestep (fs), temperature (K, initial velocities), dtypes
                (float32 and/or float64), structures (seed indices; null = every seed), seed
    onpolicy:   on-policy rounds after the first student (rounds: 0 = none; optional section, a recipe
                without it gets the defaults)                            -> pipeline.rounds.OnPolicyConfig
    gates:      optional acceptance bars (mlff_calc.evaluation.gates): force_mae_ev_per_ang,
                force_cosine_mean, drift_mev_per_atom_ps, md_stable, speed_ratio; missed -> distill exits
                non-zero naming each bar. Absent or empty = no gates

A recipe is a preset (``mlff_calc/recipes/<name>.yaml``) with a user's YAML merged over it key by key,
so a user file need only name what it changes. Every section is a typed dataclass (:class:`Recipe`), read
with :mod:`mlff_calc.schema` like the training configuration: unknown sections and keys, sections that are
not mappings, values of the wrong type or range are refused, naming the key.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .. import schema
from ..errors import InputError
from ..evaluation.report import json_safe

PRESETS = ("quick", "standard")
SECTIONS = ("sampling", "heldout", "labelling", "training", "evaluation", "md", "onpolicy", "gates")
# Recipes (and run directories) written before these existed stay valid: a missing onpolicy section gets
# its defaults (key by key), missing gates mean no gates.
OPTIONAL_SECTIONS = ("onpolicy", "gates")


@dataclass
class HeldoutConfig:
    """Independent evaluation trajectories; everything not named here as in ``sampling``."""

    frames: int  # per seed structure
    seed: int  # != sampling.seed
    temperatures: Optional[list[float]]  # K; None: sampling's

    def checks(self):
        return [("frames", self.frames >= 1, "must be >= 1 (frames per seed structure)"),
                ("temperatures", self.temperatures is None or (len(self.temperatures) > 0
                                                                and min(self.temperatures) > 0),
                 "must be a list of temperatures > 0 K, or null for sampling's")]


@dataclass
class HessianAtMinimaConfig:
    """The teacher's full Hessian at each molecular seed's own minimum (:mod:`.minima`), as training frames."""

    enabled: bool
    copies: int  # times each minimum frame is trained on per epoch (always in the training split)
    epsilon: float  # Å, central-difference step of the 6N force calls
    probes: str  # cartesian (3N unit vectors) | modes (3N - 6 normal modes, weighted by frequency error)

    def checks(self):
        from ..workflow.minima import PROBES

        return [("copies", self.copies >= 1, "must be >= 1 (times each minimum is trained on per epoch)"),
                ("epsilon", 0 < self.epsilon <= 0.1, "must be in (0, 0.1] Å"),
                ("probes", self.probes in PROBES, f"must be one of {', '.join(PROBES)}")]


@dataclass
class LabellingConfig:
    batch_size: int  # frames per commit
    commit_interval: float  # s
    hvp_fraction: float  # of the training frames, also labelled with Hessian-vector products; 0 = off
    hvp_probes: int  # probe directions per such frame (2 teacher calls each)
    hvp_epsilon: float  # Å, central-difference step
    hessian_at_minima: HessianAtMinimaConfig

    def checks(self):
        return [("batch_size", self.batch_size >= 1, "must be >= 1"),
                ("commit_interval", self.commit_interval > 0, "must be > 0 seconds"),
                ("hvp_fraction", 0 <= self.hvp_fraction <= 1, "must be in [0, 1]"),
                ("hvp_probes", self.hvp_probes >= 1, "must be >= 1"),
                ("hvp_epsilon", 0 < self.hvp_epsilon <= 0.1, "must be in (0, 0.1] Å")]


# Keys added after run directories already existed: a RUN_DIR/recipe.yaml written before them ran with
# these values (curvature off), so they are taken as given there rather than refusing the old run.
_NEWER_KEYS = {"labelling": {"hvp_fraction": 0.0, "hvp_probes": 2, "hvp_epsilon": 0.01,
                             "hessian_at_minima": {"enabled": False, "copies": 10, "epsilon": 0.005,
                                                   "probes": "cartesian"}}}
# Training settings distill fills in itself (paths in RUN_DIR; the minima frames' repeat comes from
# labelling.hessian_at_minima.copies): refused in a recipe, absent from RUN_DIR/recipe.yaml.
_DISTILL_OWNED = ("data.path", "data.train_only", "data.train_only_repeat", "run.out")


@dataclass
class EvaluationConfig:
    max_frames: int  # held-out frames compared
    nve_steps: int  # compare's own student NVE; 0 = none
    teacher_md: bool  # also run teacher MD for the RDF

    def checks(self):
        return [("max_frames", self.max_frames >= 1, "must be >= 1"),
                ("nve_steps", self.nve_steps >= 0, "must be >= 0")]


@dataclass
class MDCheckConfig:
    """The stability check: student NVE from seed structures."""

    steps: int
    timestep: float  # fs
    temperature: float  # K, initial velocities
    dtypes: list[str]  # float32 and/or float64
    structures: Optional[list[int]]  # seed indices; None = every seed
    seed: int

    def checks(self):
        d, s = self.dtypes, self.structures
        return [("steps", self.steps >= 1, "must be >= 1"),
                ("timestep", 0 < self.timestep <= 10, "must be in (0, 10] fs"),
                ("temperature", self.temperature > 0, "must be > 0 K"),
                ("dtypes", len(d) > 0 and set(d) <= {"float32", "float64"} and len(set(d)) == len(d),
                 "must be a list of float32 and/or float64"),
                ("structures", s is None or (len(s) > 0 and min(s) >= 0),
                 "must be a list of seed-structure indices, or null for every seed")]


def _sampling_config_class():
    from ..workflow.sampling import SamplingConfig

    return SamplingConfig


@dataclass
class Recipe:
    """A full recipe; :func:`load_recipe` returns it as plain data (``dataclasses.asdict``)."""

    sampling: Any  # workflow.sampling.SamplingConfig (its own __post_init__ checks values)
    heldout: HeldoutConfig
    labelling: LabellingConfig
    training: Any  # training.config.TrainConfig without data.path and run.out
    evaluation: EvaluationConfig
    md: MDCheckConfig
    onpolicy: Any  # pipeline.rounds.OnPolicyConfig
    gates: Any  # evaluation.gates.GatesConfig

    def checks(self):
        same = self.heldout.seed == self.sampling.seed
        return [("heldout.seed", not same, f"must differ from sampling.seed ({self.sampling.seed}), or the "
                                           "held-out frames would repeat the training trajectory")]


def preset_path(name: str) -> Path:
    """The YAML file of a shipped preset (``quick`` or ``standard``)."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return Path(str(importlib.resources.files("mlff_calc") / "recipes" / f"{name}.yaml"))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; clear errors for a missing file, bad YAML or a non-mapping."""
    return schema.read_yaml(path, "recipe", f"a mapping of sections {list(SECTIONS)}")


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``, mappings merged key by key (lists and scalars replaced)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_recipe(preset: str | None = "standard", path: str | Path | None = None,
                overrides: dict[str, Any] | None = None,
                base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full, validated recipe: ``base`` (or the preset's file) <- ``path`` <- dotted ``overrides``.

    Returns plain nested data (what ``RUN_DIR/recipe.yaml`` holds).
    ``InputError`` (a ``ValueError``) names a bad key.
    """
    raw = copy.deepcopy(base) if base is not None else read_yaml(preset_path(preset or "standard"))
    if path is not None:
        raw = merge(raw, read_yaml(path))
    for dotted, value in (overrides or {}).items():
        schema.set_dotted(raw, dotted, value, label="recipe")
    return validate(raw)


def validate(raw: dict[str, Any]) -> dict[str, Any]:
    """Check every section and key; fill nothing in (presets are complete); return a normalised copy."""
    from ..evaluation.gates import gates_from_dict
    from ..training.config import config_from_dict

    if not isinstance(raw, dict):
        raise InputError(f"recipe: expected a mapping of sections {list(SECTIONS)}, got {type(raw).__name__}")
    for name in raw:
        if name not in SECTIONS:
            raise InputError(f"recipe: unknown section {name!r}; known sections: {', '.join(SECTIONS)}")
    from .rounds import OnPolicyConfig, default_section

    raw = dict(raw)
    given = raw.get("onpolicy", {})  # key by key, so a recipe may name only the keys it changes
    raw["onpolicy"] = merge(default_section(), given) if isinstance(given, dict) else given
    missing = [s for s in SECTIONS if s not in raw and s not in OPTIONAL_SECTIONS]
    if missing:
        raise InputError(f"recipe: section {missing[0]!r} is missing")
    for key in _DISTILL_OWNED:
        section, name = key.split(".")
        if isinstance(raw.get("training"), dict) and name in (raw["training"].get(section) or {}):
            raise InputError(f"recipe training.{key}: set by distill (RUN_DIR"
                             f"{', labelling.hessian_at_minima' if 'train_only' in name else ''}), "
                             "remove it from the recipe")
    raw = {**raw, **{s: {**keys, **raw[s]} for s, keys in _NEWER_KEYS.items() if isinstance(raw[s], dict)}}
    kinds = {"sampling": _sampling_config_class(), "heldout": HeldoutConfig, "labelling": LabellingConfig,
             "evaluation": EvaluationConfig, "md": MDCheckConfig, "onpolicy": OnPolicyConfig}
    sections = {name: schema.from_dict(kind, raw[name], label="recipe", prefix=f"{name}.", required=True)
                for name, kind in kinds.items()}
    sections["training"] = config_from_dict(raw["training"], label="recipe", prefix="training.")
    sections["gates"] = gates_from_dict(raw.get("gates"), label="recipe", prefix="gates.")
    recipe = schema.validate(Recipe(**sections), label="recipe")
    out = json_safe(dataclasses.asdict(recipe))  # tuples to lists: YAML's safe dumper writes lists
    for key in _DISTILL_OWNED:  # distill fills these in
        section, name = key.split(".")
        out["training"][section].pop(name)
    return out


def dump_recipe(recipe: dict[str, Any]) -> str:
    """YAML text of a recipe, sections in schema order."""
    import yaml

    return yaml.safe_dump({s: recipe[s] for s in SECTIONS}, sort_keys=False, default_flow_style=None)
