"""Learning-rate schedule and exponential moving average of the weights; both save plain state."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .config import OptimConfig


class LRSchedule:
    """Per-step learning rate: linear warm-up from ``lr/100``, then cosine / plateau / constant.

    The cosine runs over ``epochs * steps_per_epoch`` steps, or, with a wall-clock budget ``max_time``,
    reaches its end at whichever comes first, the last step or the budget (progress = max of the two
    fractions): a run stopped by ``--max-time`` still ends at a small learning rate. Without a budget the
    schedule depends on the step alone, which keeps resumed runs bit-identical.
    """

    def __init__(self, config: OptimConfig, steps_per_epoch: int, epochs: int, max_time: float | None):
        self.config = config
        self.warmup = config.warmup_epochs * steps_per_epoch
        self.total = max(epochs * steps_per_epoch, 1)
        self.max_time = max_time
        self.plateau_scale, self.plateau_best, self.plateau_bad = 1.0, math.inf, 0

    def lr(self, step: int, elapsed: float) -> float:
        """Learning rate for optimiser step ``step`` (0-based) after ``elapsed`` s of training."""
        c = self.config
        if step < self.warmup:
            return c.lr * (0.01 + 0.99 * (step + 1) / self.warmup)
        if c.schedule == "cosine":
            progress = (step - self.warmup) / max(self.total - self.warmup, 1)
            if self.max_time:
                progress = max(progress, elapsed / self.max_time)
            progress = min(progress, 1.0)
            return c.lr * (c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
        if c.schedule == "plateau":
            return c.lr * self.plateau_scale
        return c.lr

    def end_epoch(self, val_loss: float) -> None:
        """Plateau bookkeeping: scale the lr down after ``plateau_patience`` epochs without improvement."""
        if val_loss < self.plateau_best * (1 - 1e-4):
            self.plateau_best, self.plateau_bad = val_loss, 0
        else:
            self.plateau_bad += 1
            if self.plateau_bad > self.config.plateau_patience:
                scale = self.plateau_scale * self.config.plateau_factor
                self.plateau_scale = max(scale, self.config.min_lr_ratio)
                self.plateau_bad = 0

    def state_dict(self) -> dict[str, Any]:
        return {"plateau_scale": self.plateau_scale, "plateau_best": self.plateau_best,
                "plateau_bad": self.plateau_bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau_scale = float(state["plateau_scale"])
        self.plateau_best = float(state["plateau_best"])
        self.plateau_bad = int(state["plateau_bad"])


class EMA:
    """``ema = d * ema + (1 - d) * weights`` after every step, ``d = min(decay, (1 + n) / (10 + n))``.

    The warm-up of ``d`` keeps the average from remembering the random initial weights for long.
    Buffers (reference energies, scale, shift) are copied, not averaged. ``decay = 0`` copies everything.
    """

    def __init__(self, model: nn.Module, ema_model: nn.Module, decay: float):
        self.model, self.ema_model, self.decay, self.updates = model, ema_model, decay, 0
        for p in ema_model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        # One fused call instead of a Python loop over ~70 small tensors (the loop costs ms per step on CPU).
        torch._foreach_lerp_(list(self.ema_model.parameters()), [p.detach() for p in self.model.parameters()],
                             1.0 - d)
        for e, b in zip(self.ema_model.buffers(), self.model.buffers()):
            e.copy_(b)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "weights": {k: v.detach().cpu().clone()
                                                      for k, v in self.ema_model.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        self.ema_model.load_state_dict(state["weights"])
