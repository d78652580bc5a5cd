"""The training configuration: a typed schema (dataclasses) read from YAML.

Every setting has one default, here. ``load_config`` rejects unknown keys, sections that are not
mappings and bad values with a message that names the key (``optim.lr: must be > 0, got -1``);
the machinery is :mod:`mlff_calc.schema`, shared with the distill recipe. ``RUN_DIR/config.yaml`` holds the
configuration a run actually used; feeding it back reproduces the run.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from .. import schema


@dataclass
class ModelConfig:
    """Student architecture (``StudentForceField`` constructor arguments)."""

    hidden_dim: int = 128  # scalar and vector features per atom
    num_interactions: int = 3
    num_rbf: int = 20
    cutoff: float = 5.0  # Å
    max_z: int = 118


@dataclass
class DataConfig:
    """Which frames train, validate and test. Sizes < 1 are fractions of the dataset, >= 1 counts."""

    path: str = ""  # HDF5 dataset (mlff-calc label); --data
    val_size: float = 0.1
    test_size: float = 0.1  # 0: no held-out test evaluation
    split_seed: int = 0  # the split never changes with the training seed
    batch_size: int = 16  # structures per optimiser step (per process under DDP)
    # A second HDF5 dataset whose frames always train, never validate or test (e.g. the teacher's Hessians
    # at the seed minima, distill's labelling.hessian_at_minima); "" = none. The split of ``path`` is the
    # same with or without it.
    train_only: str = ""
    train_only_repeat: int = 1  # each train_only frame is trained on this many times per epoch


@dataclass
class LossConfig:
    """Weights of the mean-squared-error terms (units: (eV/atom)², (eV/Å)², (eV/Å³)²).

    Distillation defaults: forces dominate. A frame gives 3N force components but one energy, the
    teacher's forces carry the information MD needs, and the energy follows from them up to a constant
    the per-element references already fix; the small energy term keeps that constant and the energy
    surface's offsets between conformers honest.
    """

    energy_weight: float = 1.0  # on per-atom energy (eV/atom)
    force_weight: float = 10.0  # on force components (eV/Å); 0 = energy-only training
    stress_weight: float = 100.0  # on stress components (eV/Å³, ~100x smaller numbers); NaN = unlabelled
    # on Hessian-vector product components (eV/Å²) of frames with curvature labels (labelling.hvp_fraction);
    # 0 = off: no second derivative, today's cost per step
    hvp_weight: float = 0.0
    # eV/Å; null = the plain squared force error. A number δ: twice the Huber loss of each force component,
    # the squared error below δ and linear beyond it (2δ|x| - δ²), so a few frames the student gets badly
    # wrong (hot or broken molecules from on-policy rounds) pull with a bounded gradient instead of
    # dominating the step. Validation and the best-epoch choice keep the squared error.
    force_huber: Union[float, None] = None


@dataclass
class OptimConfig:
    """AdamW, linear warm-up then a cosine (or plateau, or constant) schedule, EMA of the weights."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 10.0  # max global gradient norm; 0 disables clipping
    schedule: str = "cosine"  # cosine | plateau | constant
    warmup_epochs: float = 1.0  # linear warm-up from lr/100 (fractions of an epoch allowed)
    min_lr_ratio: float = 0.01  # cosine ends at (plateau never goes below) lr * min_lr_ratio
    plateau_factor: float = 0.5
    plateau_patience: int = 5  # epochs without validation improvement before the lr drops
    ema_decay: float = 0.99  # per step; 0 disables the EMA


@dataclass
class RunConfig:
    """How long, where and on what."""

    out: str = ""  # run directory; --out
    epochs: int = 200
    max_time: Union[float, None] = None  # s of training (summed over resumes); the run stops cleanly
    patience: int = 30  # early stopping: epochs without validation improvement; 0 disables
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "float32"
    num_threads: Union[int, None] = None  # torch intra-op threads; None = torch's default
    quiet: bool = False


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def checks(self) -> list[tuple[str, bool, str]]:
        """``(key, ok, message)`` of every range check (:func:`mlff_calc.schema.validate` runs them)."""
        m, d, lo, o, r = self.model, self.data, self.loss, self.optim, self.run
        return [
            ("model.hidden_dim", m.hidden_dim >= 1, "must be >= 1"),
            ("model.num_interactions", m.num_interactions >= 1, "must be >= 1"),
            ("model.num_rbf", m.num_rbf >= 1, "must be >= 1"),
            ("model.cutoff", m.cutoff > 0, "must be > 0 Å"),
            ("model.max_z", 1 <= m.max_z <= 118, "must be in 1..118"),
            ("data.val_size", d.val_size > 0, "must be > 0 (a fraction < 1 or a count >= 1)"),
            ("data.test_size", d.test_size >= 0, "must be >= 0 (a fraction < 1 or a count >= 1)"),
            ("data.val_size", d.val_size < 1 or d.val_size == int(d.val_size),
             "a count (>= 1) must be a whole number"),
            ("data.test_size", d.test_size < 1 or d.test_size == int(d.test_size),
             "a count (>= 1) must be a whole number"),
            ("data.batch_size", d.batch_size >= 1, "must be >= 1"),
            ("data.train_only_repeat", d.train_only_repeat >= 1, "must be >= 1 (times per epoch)"),
            ("loss.energy_weight", lo.energy_weight >= 0, "must be >= 0"),
            ("loss.force_weight", lo.force_weight >= 0, "must be >= 0"),
            ("loss.stress_weight", lo.stress_weight >= 0, "must be >= 0"),
            ("loss.hvp_weight", lo.hvp_weight >= 0, "must be >= 0"),
            ("loss.force_huber", lo.force_huber is None or lo.force_huber > 0, "must be > 0 eV/Å or null"),
            ("loss.energy_weight", lo.energy_weight + lo.force_weight > 0,
             "and loss.force_weight cannot both be 0"),
            ("optim.lr", o.lr > 0, "must be > 0"),
            ("optim.weight_decay", o.weight_decay >= 0, "must be >= 0"),
            ("optim.grad_clip", o.grad_clip >= 0, "must be >= 0"),
            ("optim.schedule", o.schedule in ("cosine", "plateau", "constant"),
             "must be cosine, plateau or constant"),
            ("optim.warmup_epochs", o.warmup_epochs >= 0, "must be >= 0"),
            ("optim.min_lr_ratio", 0 <= o.min_lr_ratio <= 1, "must be in [0, 1]"),
            ("optim.plateau_factor", 0 < o.plateau_factor < 1, "must be in (0, 1)"),
            ("optim.plateau_patience", o.plateau_patience >= 0, "must be >= 0"),
            ("optim.ema_decay", 0 <= o.ema_decay < 1, "must be in [0, 1)"),
            ("run.epochs", r.epochs >= 1, "must be >= 1"),
            ("run.max_time", r.max_time is None or r.max_time > 0, "must be > 0 seconds (or null)"),
            ("run.patience", r.patience >= 0, "must be >= 0"),
            ("run.dtype", r.dtype in ("float32", "float64"), "must be float32 or float64"),
            ("run.num_threads", r.num_threads is None or r.num_threads >= 1, "must be >= 1 (or null)"),
        ]

    def validate(self, label: str = "config", prefix: str = "") -> "TrainConfig":
        """Raise :class:`~mlff_calc.errors.InputError` naming the first bad setting; return ``self``."""
        return schema.validate(self, label=label, prefix=prefix)


def config_from_dict(raw: dict[str, Any] | None, base: TrainConfig | None = None, *, label: str = "config",
                     prefix: str = "") -> TrainConfig:
    """Build (and validate) a config from nested plain data, on top of ``base`` (default: the defaults).

    ``label``/``prefix`` name the keys in messages (the recipe passes ``"recipe"``, ``"training."``).
    """
    config = schema.from_dict(TrainConfig, raw, label=label, prefix=prefix,
                              base=copy.deepcopy(base) if base is not None else None)
    return config.validate(label, prefix)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config (or start from the defaults) and apply ``{"section.key": value}`` overrides."""
    raw = {} if path is None else schema.read_yaml(path, "config")
    raw = copy.deepcopy(raw)
    for dotted, value in (overrides or {}).items():
        schema.set_dotted(raw, dotted, value)  # a section given as a list is refused, not replaced
    return config_from_dict(raw)


def dump_config(config: TrainConfig, path: str | Path) -> None:
    """Write ``config`` as YAML (sections in schema order)."""
    import yaml

    from .. import io

    io.write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


# Settings that may change between a run and its resumption; every other one must match.
RESUMABLE_CHANGES = frozenset({"data.path", "data.train_only", "run.out", "run.epochs", "run.max_time",
                               "run.patience", "run.device", "run.num_threads", "run.quiet"})


def incompatible_settings(old: dict[str, Any], new: TrainConfig) -> list[str]:
    """``["section.key: old -> new", ...]`` for settings that forbid resuming ``old`` with ``new``."""
    diffs = []
    for section, values in new.to_dict().items():
        for key, value in values.items():
            dotted = f"{section}.{key}"
            # a setting newer than the run (e.g. loss.hvp_weight) ran at its default
            before = old.get(section, {}).get(key, getattr(getattr(TrainConfig(), section), key))
            if dotted not in RESUMABLE_CHANGES and before != value:
                diffs.append(f"{dotted}: {before!r} -> {value!r}")
    return diffs
