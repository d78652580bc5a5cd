"""The training loop: ``train(config) -> TrainResult``.

Writes into ``run.out`` (only rank 0 under torchrun):

* ``student.pt``   best EMA weights by validation loss, with metadata (DESIGN.md), rewritten on improvement;
                   at the end its per-element reference energies are refit (:mod:`.references`);
* ``last.pt``      everything needed to resume, written atomically after every epoch (plain containers);
* ``config.yaml``  the settings actually used; ``metrics.csv`` one row per epoch;
* ``metrics.json`` test-split errors of the best weights; ``learning_curve.png``.

A ``last.pt`` in the run directory is always continued (``resume=True`` only insists that it exists):
model, EMA, optimiser, schedule, epoch, RNG states and best-so-far are restored, and a killed run loses at
most the epoch it was in. Without a time budget a resumed run is bit-identical to an uninterrupted one
(the batch order is a function of seed and epoch, the schedule of the step).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import _keys as K
from ..errors import InputError, ModelOutputError
from ..model.student import StudentForceField
from ..utils import resolve_device, resolve_dtype
from .config import TrainConfig, config_from_dict, dump_config, load_config
from .data import TrainingData, fit_energy_statistics, load_training_data, make_loader, set_epoch
from .distributed import Distributed, init_distributed, parameters_in_sync, shutdown
from .loss import ErrorSums, batch_loss, combined_probe
from .optim import EMA, LRSchedule
from .report import plot_learning_curve, write_json, write_metrics_csv
from .rundir import locked_run_dir, read_training_state, restore_training_state, save_training_state


@dataclass
class TrainResult:
    """What a training run produced (times in s, errors in eV/atom and eV/Å)."""

    run_dir: Path
    checkpoint: Path  # RUN_DIR/student.pt
    epochs: int  # epochs completed, over all resumptions
    best_epoch: int
    stop_reason: str  # "epochs" | "early_stopping" | "max_time"
    train_time: float
    val_metrics: dict[str, float]  # of the best epoch
    test_metrics: dict[str, float] | None  # None without a test split
    history: list[dict[str, Any]] = field(default_factory=list)


def _as_config(config: TrainConfig | dict | str | Path) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return copy.deepcopy(config).validate()
    if isinstance(config, dict):
        return config_from_dict(config)
    return load_config(config)


def train(config: TrainConfig | dict | str | Path, resume: bool = False,
          overwrite: bool = False, init_from: str | Path | None = None) -> TrainResult:
    """Train a student on ``config.data.path`` into ``config.run.out`` (see the module docstring).

    ``config``: a :class:`TrainConfig`, a nested dict, or a YAML path. A ``last.pt`` in the run directory
    is always continued; ``resume=True`` makes its absence an error. A run directory holding a finished
    ``student.pt`` but no ``last.pt`` to continue (e.g. a distill run directory) is refused unless
    ``overwrite=True`` (which also starts afresh over an existing ``last.pt``). The run directory is locked
    (:class:`~mlff_calc.io.DirectoryLock`): a second ``train`` into it fails at once with ``RunLockedError``.
    ``run.num_threads`` sets torch's thread count for the call only (restored afterwards). Under
    ``torchrun`` every process calls this; each gets the same result.
    """
    cfg = _as_config(config)
    if not cfg.data.path:
        raise InputError("config data.path: no dataset given (--data)")
    if not cfg.run.out:
        raise InputError("config run.out: no run directory given (--out)")
    with locked_run_dir(Path(cfg.run.out), resume, overwrite):
        device, dtype = resolve_device(cfg.run.device), resolve_dtype(cfg.run.dtype)
        threads = torch.get_num_threads()
        d = init_distributed(device.type == "cuda")
        try:
            if d.active and device.type == "cuda":
                device = torch.device("cuda", d.local_rank)
            if cfg.run.num_threads:
                torch.set_num_threads(cfg.run.num_threads)
            return _Trainer(cfg, d, device, dtype, init_from).run()
        finally:
            torch.set_num_threads(threads)
            shutdown(d)


class _Trainer:
    def __init__(self, cfg: TrainConfig, d: Distributed, device: torch.device, dtype: torch.dtype,
                 init_from: str | Path | None = None):
        self.cfg, self.d, self.device, self.dtype = cfg, d, device, dtype
        self.run_dir = Path(cfg.run.out)
        self.quiet = cfg.run.quiet or not d.main
        self.data: TrainingData = load_training_data(cfg, dtype)
        per_process = math.ceil(len(self.data.train) / d.world)
        if cfg.data.batch_size > per_process:
            warnings.warn(f"data.batch_size {cfg.data.batch_size} is larger than the {per_process} training "
                          f"frames per process; using batch_size {per_process}", stacklevel=3)
            cfg.data.batch_size = per_process
        self.use_forces = self.data.has_forces and cfg.loss.force_weight > 0
        self.use_stress = self.data.has_stress and cfg.loss.stress_weight > 0
        self.use_hvp = self.data.dataset.max_probes > 0 and cfg.loss.hvp_weight > 0
        if cfg.loss.hvp_weight > 0 and not self.use_hvp:
            warnings.warn(f"loss.hvp_weight is {cfg.loss.hvp_weight} but {cfg.data.path} has no curvature "
                          "labels (distill: labelling.hvp_fraction > 0 or labelling.hessian_at_minima); "
                          "training on the other terms", stacklevel=3)
        state = read_training_state(self.run_dir / "last.pt", cfg, self._fingerprint())

        torch.manual_seed(cfg.run.seed)  # the initial weights are a function of the seed alone
        model = StudentForceField(**dataclasses.asdict(cfg.model))
        atom_ref, scale, shift = fit_energy_statistics(self.data, cfg.model.max_z)
        with torch.no_grad():  # a fresh model starts at the right energy offset and force magnitude
            model.atom_ref.copy_(torch.from_numpy(atom_ref))
            model.scale.fill_(scale)
            model.shift.fill_(shift)
        self.model = model.to(device=device, dtype=dtype)
        if init_from is not None and state is None:
            atom_ref, scale, shift = self._warm_start(Path(init_from))
        else:
            shift += self._initial_offset()
            with torch.no_grad():
                self.model.shift.fill_(shift)
        self.ema_model = copy.deepcopy(self.model).eval()
        self.ema = EMA(self.model, self.ema_model, cfg.optim.ema_decay)
        # foreach: one multi-tensor kernel per update step (torch picks it only for CUDA by default).
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.optim.lr,
                                           weight_decay=cfg.optim.weight_decay, foreach=True)
        bs, cutoff = cfg.data.batch_size, cfg.model.cutoff
        self.train_loader = make_loader(self.data, self.data.train, bs, cutoff, shuffle=True,
                                        seed=cfg.run.seed, rank=d.rank, world=d.world)
        self.val_loader = make_loader(self.data, self.data.val, bs, cutoff, shuffle=False, seed=0,
                                      rank=d.rank, world=d.world)
        self.schedule = LRSchedule(cfg.optim, len(self.train_loader), cfg.run.epochs, cfg.run.max_time)
        self.progress: dict[str, Any] = {"epoch": 0, "step": 0, "train_time": 0.0, "best_loss": math.inf,
                                         "best_epoch": 0, "bad_epochs": 0, "best_val": {}, "history": []}
        self.metadata = {
            "teacher": self.data.teacher,
            "elements": self.data.elements,
            "reference_energies": {int(z): float(atom_ref[z]) for z in self.data.elements},
            "energy_scale": scale, "energy_shift": shift,
            "data": self.data.summary,
            "training": {"config": cfg.to_dict(), "world_size": d.world},
        }
        if state is not None:
            restore_training_state(self, state)
        self.net = self.model
        if d.active:
            # Forces come from autograd.grad(create_graph=True) inside forward; that inner grad only
            # differentiates with respect to positions, so DDP's gradient hooks fire once, in backward().
            self.net = torch.nn.parallel.DistributedDataParallel(self.model)

    def _warm_start(self, path: Path) -> tuple[np.ndarray, float, float]:
        """Start from the weights of ``path`` (on-policy rounds); returns its energy statistics."""
        previous = StudentForceField.load(path)
        if previous.config != self.model.config:
            raise InputError(f"cannot warm-start from {path}: its model settings {previous.config} differ "
                             f"from config model {self.model.config}")
        self.model.load_state_dict(previous.state_dict())
        return (previous.atom_ref.double().numpy(), float(previous.scale), float(previous.shift))

    @torch.no_grad()
    def _initial_offset(self, n: int = 64) -> float:
        """Mean per-atom energy error (eV/atom) of the fresh model on up to ``n`` training frames.

        The random readout has a non-zero mean output; removing it from ``shift`` makes the first
        predictions sit at the right energies, so the (lightly weighted) energy term does not spend
        epochs learning a constant.
        """
        from ..data.torch_dataset import N_ATOMS, collate

        items = [self.data.dataset[int(i)] for i in self.data.train[:n]]
        batch = {k: v.to(self.device) for k, v in collate(items, cutoff=self.cfg.model.cutoff).items()}
        pred = self.model.eval()(batch[K.GRAPH], compute_forces=False)
        return -float(((pred["energy"] - batch["energy"]) / batch[N_ATOMS]).mean())

    def _fingerprint(self) -> dict[str, Any]:
        """Identifies the dataset a state was trained on (a file that grew changes the split)."""
        fingerprint = {"uid": self.data.summary["uid"], "n_frames": len(self.data.dataset)}
        if "train_only" in self.data.summary:  # absent otherwise: states saved before it existed still match
            fingerprint["train_only_uid"] = self.data.summary["train_only"]["uid"]
        return fingerprint

    # ---- loop ----------------------------------------------------------------------------------------
    def _stop_reason(self, now: float) -> str | None:
        p, r = self.progress, self.cfg.run
        if p["epoch"] >= r.epochs:
            return "epochs"
        if r.patience and p["bad_epochs"] >= r.patience:
            return "early_stopping"
        if r.max_time and now >= r.max_time:
            return "max_time"
        return None

    def _now(self, start: float, base: float) -> float:
        """Training seconds so far, the same on every process (the slowest one's clock)."""
        t = torch.tensor([base + time.monotonic() - start], dtype=torch.float64, device=self.device)
        if self.d.active:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t.item())

    def _predict(self, net, batch: dict, compute_forces: bool, random_probes: bool) -> dict:
        """The model's outputs for ``batch``; with curvature labels in use, also ``hvp`` of one combined
        probe per structure (its label goes into ``batch`` as ``hvp_target``)."""
        probe = None
        if self.use_hvp and bool(batch[K.N_PROBES].any()):  # no probed frame in the batch: no 2nd derivative
            probe, batch[K.HVP_TARGET] = combined_probe(batch, random=random_probes)
        return net(batch[K.GRAPH], compute_forces=compute_forces, compute_stress=self.use_stress, probe=probe)

    def evaluate(self, model: StudentForceField, loader) -> dict[str, float]:
        """Errors of ``model`` over ``loader`` (summed over processes)."""
        model.eval()
        sums = ErrorSums(self.device)
        for batch in loader:
            batch = {k: v.to(self.device) for k, v in batch.items()}
            pred = self._predict(model, batch, self.data.has_forces, random_probes=False)
            sums.add(pred, batch)
        self.d.all_reduce_sum(sums.sums)
        return sums.metrics(self.cfg.loss)

    def train_epoch(self, epoch: int, start: float, base: float, reserve: float) -> tuple[dict, bool, int]:
        """One pass over the training split; stops early (``out_of_time``) when the budget is reached."""
        cfg, p = self.cfg, self.progress
        self.model.train()
        set_epoch(self.train_loader, epoch)
        sums, n_batches, out_of_time = ErrorSums(self.device), 0, False
        from tqdm import tqdm

        bar = tqdm(self.train_loader, desc=f"epoch {epoch}", leave=False, disable=self.quiet, unit="batch")
        for batch in bar:
            now = self._now(start, base) if cfg.run.max_time else 0.0
            if cfg.run.max_time and now + reserve >= cfg.run.max_time:
                out_of_time = True
                break
            lr = self.schedule.lr(p["step"], now)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            batch = {k: v.to(self.device) for k, v in batch.items()}
            pred = self._predict(self.net, batch, self.use_forces, random_probes=True)
            loss = batch_loss(pred, batch, cfg.loss, self.use_forces, self.use_stress)
            if not torch.isfinite(loss):
                raise ModelOutputError(f"epoch {epoch}, step {p['step']}: the loss is {loss.item()}; "
                                   f"training diverged (try a lower optim.lr than {cfg.optim.lr})")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
            self.optimizer.step()
            self.ema.update()
            p["step"] += 1
            n_batches += 1
            sums.add({k: v.detach() for k, v in pred.items()}, batch)
            bar.set_postfix(loss=f"{loss.item():.3g}", refresh=False)
        bar.close()
        self.d.all_reduce_sum(sums.sums)
        return sums.metrics(cfg.loss), out_of_time, n_batches

    def run(self) -> TrainResult:
        cfg, p, d = self.cfg, self.progress, self.d
        if d.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, self.run_dir / "config.yaml")
        if not self.quiet:
            s = self.data.summary
            extra = s.get("train_only")
            extra = f" (+ {extra['n_frames']} train-only frames x {extra['repeat']})" if extra else ""
            print(f"training on {s['path']}: {s['n_train']} train{extra} / {s['n_val']} val / {s['n_test']} "
                  f"test frames, {self.model.num_parameters()} parameters, device {self.device}, "
                  f"{d.world} process(es)")
        start, base = time.monotonic(), p["train_time"]
        stop, reserve = self._stop_reason(base), 0.0
        while stop is None:
            epoch, t0 = p["epoch"] + 1, time.monotonic()
            train_metrics, out_of_time, n_batches = self.train_epoch(epoch, start, base, reserve)
            if n_batches == 0:  # the budget ran out before this epoch started: nothing new to record
                stop = "max_time"
                break
            t1 = time.monotonic()
            val = self.evaluate(self.ema_model, self.val_loader)
            reserve = time.monotonic() - t1  # the next epoch stops early enough to leave time to validate
            self.schedule.end_epoch(val["loss"])
            p["epoch"], p["train_time"] = epoch, self._now(start, base)
            improved = val["loss"] < p["best_loss"]
            if improved:
                p.update(best_loss=val["loss"], best_epoch=epoch, bad_epochs=0, best_val=val)
                if d.main:
                    self.ema_model.save(self.run_dir / "student.pt",
                                        metadata={**self.metadata, "validation": {"epoch": epoch, **val}})
            else:
                p["bad_epochs"] += 1
            p["history"].append({
                "epoch": epoch, "train_loss": train_metrics["loss"], "val_loss": val["loss"],
                **{f"train_{k}": train_metrics[k]
                   for k in ("energy_mae_ev_per_atom", "force_mae_ev_per_ang")},
                **{f"val_{k}": val[k] for k in ("energy_mae_ev_per_atom", "force_mae_ev_per_ang",
                                                 "force_rmse_ev_per_ang")},
                "lr": self.optimizer.param_groups[0]["lr"], "epoch_time_s": time.monotonic() - t0,
                "train_time_s": p["train_time"],
            })
            if d.main:
                save_training_state(self)  # after student.pt: a kill in between just repeats this epoch
                write_metrics_csv(self.run_dir / "metrics.csv", p["history"])
            if not self.quiet:
                row = p["history"][-1]
                print(f"epoch {epoch:4d}  loss {row['train_loss']:.4g} / val {row['val_loss']:.4g}  "
                      f"E {1e3 * row['val_energy_mae_ev_per_atom']:.2f} meV/atom  "
                      f"F {1e3 * row['val_force_mae_ev_per_ang']:.1f} meV/Å  lr {row['lr']:.2e}  "
                      f"{row['epoch_time_s']:.1f} s" + ("  *" if improved else ""),
                      flush=True)
            stop = "max_time" if out_of_time else self._stop_reason(p["train_time"])
        return self.finish(stop)

    def _calibrate_uncertainty(self, model: StudentForceField, max_frames: int = 5000) -> None:
        """Every student.pt carries its uncertainty calibration (:mod:`mlff_calc.uncertainty`): feature
        covariances over the training split, scales over the validation split."""
        from .. import uncertainty

        model.metadata.pop(uncertainty.METADATA_KEY, None)  # a stale one (warm start) never survives
        if not len(self.data.val) or not self.data.has_forces:
            warnings.warn("no validation frames with forces: the student has no uncertainty calibration "
                          "(mlff-calc calibrate can add one later)", stacklevel=2)
            return
        train = np.unique(self.data.train)  # a frame repeated per epoch (data.train_only) counts once
        if len(train) > max_frames:  # the covariance converges long before; keep this step cheap
            train = train[np.linspace(0, len(train) - 1, max_frames).astype(np.int64)]
        frame = self.data.dataset._frame
        try:
            uncertainty.attach(model, uncertainty.fit(model, [frame(int(i)) for i in train],
                                                      [frame(int(i)) for i in self.data.val]))
        except InputError as exc:  # never lose a finished training to its calibration
            warnings.warn(f"the student has no uncertainty calibration: {exc}", stacklevel=2)

    def _refit_references(self, model: StudentForceField) -> dict:
        """Per-element reference energies refit on the training split (:mod:`.references`), in place.
        Returns the metadata to save with the student: ``reference_energies`` and ``reference_refit``
        (with the validation errors after the refit; ``validation`` keeps the best epoch's). Run on every
        process (the same numbers on each), so the test evaluation sees the refit weights everywhere."""
        from .references import refit_references

        def loader(indices):
            return make_loader(self.data, indices, self.cfg.data.batch_size, self.cfg.model.cutoff,
                               shuffle=False, seed=0)

        # Each frame once (train-only frames are repeated in the split, data.train_only_repeat).
        record = refit_references(model, self.data, np.unique(self.data.train), loader, self.device)
        if len(self.data.val):
            val = self.evaluate(model, self.val_loader)
            keys = ("energy_mae_ev_per_atom", "force_mae_ev_per_ang")
            record["validation_after"] = {k: val[k] for k in keys}
        refs = model.atom_ref.double().cpu().numpy()
        return {"reference_energies": {int(z): float(refs[z]) for z in self.data.elements},
                "reference_refit": record}

    def finish(self, stop: str) -> TrainResult:
        """Evaluate the best weights on the test split; write metrics.json, the plot, final student.pt."""
        p, d = self.progress, self.d
        checkpoint = self.run_dir / "student.pt"
        d.barrier()
        if p["best_epoch"] == 0 or not checkpoint.exists():
            raise InputError(f"training stopped ({stop}) before the first epoch finished; no student was "
                               "written (raise --max-time)")
        if not parameters_in_sync(self.model, d):
            raise RuntimeError("DDP processes ended with different weights: gradients were not synchronised")
        best = StudentForceField.load(checkpoint).to(device=self.device, dtype=self.dtype)
        references = self._refit_references(best)
        test = None
        if len(self.data.test):
            loader = make_loader(self.data, self.data.test, self.cfg.data.batch_size, self.cfg.model.cutoff,
                                 shuffle=False, seed=0, rank=d.rank, world=d.world)
            test = self.evaluate(best, loader)
        if d.main:
            summary = {"epochs": p["epoch"], "best_epoch": p["best_epoch"], "stop_reason": stop,
                       "train_time_s": p["train_time"], "world_size": d.world}
            training = {**self.metadata["training"], **summary}
            self._calibrate_uncertainty(best)
            best.save(checkpoint, metadata={"test": test, "training": training, **references})
            write_json(self.run_dir / "metrics.json", {"test": test, "validation": p["best_val"], **summary,
                                                       **references})
            plot_learning_curve(self.run_dir / "learning_curve.png", p["history"])
            if not self.cfg.run.quiet:
                print(f"stopped: {stop} after {p['epoch']} epochs, {p['train_time']:.0f} s; best epoch "
                      f"{p['best_epoch']}")
                if test is not None:
                    print(f"test ({len(self.data.test)} frames): "
                          f"energy MAE {1e3 * test['energy_mae_ev_per_atom']:.2f} meV/atom, "
                          f"force MAE {1e3 * test['force_mae_ev_per_ang']:.1f} meV/Å, "
                          f"RMSE {1e3 * test['force_rmse_ev_per_ang']:.1f} meV/Å, "
                          f"cosine {test['force_cosine_mean']:.4f}")
        return TrainResult(self.run_dir, checkpoint, p["epoch"], p["best_epoch"], stop, p["train_time"],
                           p["best_val"], test, p["history"])
