"""Run outputs besides checkpoints: ``metrics.csv``, ``metrics.json``, ``learning_curve.png``."""

from __future__ import annotations

import csv
import json
import math
from io import StringIO
from pathlib import Path
from typing import Any

from .. import io

CSV_COLUMNS = ("epoch", "train_loss", "val_loss", "train_energy_mae_ev_per_atom",
               "val_energy_mae_ev_per_atom", "train_force_mae_ev_per_ang", "val_force_mae_ev_per_ang",
               "val_force_rmse_ev_per_ang", "lr", "epoch_time_s", "train_time_s")


def write_metrics_csv(path: Path, history: list[dict[str, Any]]) -> None:
    """One row per epoch (rewritten whole: a resumed run drops the rows of an epoch that was lost)."""
    buf = StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    io.write_text(path, buf.getvalue())


def write_json(path: Path, payload: dict[str, Any]) -> None:
    clean = json.loads(json.dumps(payload, default=float), parse_constant=lambda c: None)  # NaN -> null
    io.write_json(path, clean, indent=2)


def plot_learning_curve(path: Path, history: list[dict[str, Any]]) -> None:
    """Losses and validation errors per epoch (matplotlib's Agg canvas: no global backend change)."""
    if not history:
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    for key, label in (("train_loss", "train"), ("val_loss", "validation (EMA)")):
        ax1.plot(epochs, [row[key] for row in history], label=label)
    ax1.set(xlabel="epoch", ylabel="loss", yscale="log", title="loss")
    ax1.legend()
    curves = (("val_force_mae_ev_per_ang", "force MAE (eV/Å)"),
              ("val_energy_mae_ev_per_atom", "energy MAE (eV/atom)"))
    for key, label in curves:
        values = [row[key] for row in history]
        if any(math.isfinite(v) for v in values):
            ax2.plot(epochs, values, label=label)
    ax2.set(xlabel="epoch", yscale="log", title="validation errors")
    ax2.legend()
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
