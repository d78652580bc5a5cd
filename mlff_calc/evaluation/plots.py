"""PNG figures of a comparison (matplotlib's Agg canvas on a bare Figure: no pyplot, no global state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import io

MAX_POINTS = 50_000  # scatter points drawn at most (a random subset beyond that: same picture, small file)


def _figure(ncols: int = 1, width: float = 5.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, 4.6))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def parity(path: Path, f_teacher, f_student, de_teacher, de_student, force_mae: float,
           deviation_mae: float) -> None:
    """Student vs teacher force components (eV/Å), and per-structure energy deviations from each seed's
    mean (eV/atom; see ``comparison.energy_deviations``), with y = x."""
    fig, (ax, ax_e) = _figure(2, width=5.0)
    t, s = np.ravel(f_teacher), np.ravel(f_student)
    if t.size > MAX_POINTS:
        keep = np.random.default_rng(0).choice(t.size, MAX_POINTS, replace=False)
        t, s = t[keep], s[keep]
    for axis, x, y, mae, unit, what in ((ax, t, s, force_mae, "eV/Å", "force component"),
                                        (ax_e, de_teacher, de_student, deviation_mae, "eV/atom",
                                         "E/atom − seed mean")):
        x, y = np.asarray(x), np.asarray(y)
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        pad = 0.05 * (hi - lo or 1.0)
        axis.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.5", lw=1, ls="--", label="y = x")
        # Few points: big and opaque enough to see; many: small and translucent to show density.
        axis.scatter(x, y, s=12 if x.size < 2000 else 3, alpha=0.8 if x.size < 2000 else 0.3, color="C0",
                     edgecolors="none",
                     label=f"{len(x)} values, MAE {mae:.3g} {unit}")
        axis.set(xlabel=f"teacher {what} ({unit})", ylabel=f"student {what} ({unit})",
                 xlim=(lo - pad, hi + pad), ylim=(lo - pad, hi + pad), aspect="equal")
        axis.legend(loc="upper left", fontsize=9)
    ax.set_title("forces: student vs teacher")
    ax_e.set_title("energy deviations from each seed's mean")
    _save(fig, path)


def error_histogram(path: Path, f_teacher, f_student) -> None:
    """Histogram of per-atom force error norms |F_student - F_teacher| (eV/Å), mean and 95th percentile."""
    err = np.linalg.norm(np.reshape(f_student, (-1, 3)) - np.reshape(f_teacher, (-1, 3)), axis=1)
    fig, (ax,) = _figure()
    ax.hist(err, bins=min(60, max(10, err.size // 5)), color="C0", alpha=0.8)
    mean, p95 = float(np.mean(err)), float(np.percentile(err, 95))
    ax.axvline(mean, color="C1", lw=1.5, label=f"mean {mean:.3g} eV/Å")
    ax.axvline(p95, color="C3", lw=1.5, ls="--", label=f"95th percentile {p95:.3g} eV/Å")
    ax.set(xlabel="per-atom force error |F_student − F_teacher| (eV/Å)", ylabel="atoms",
           title=f"force errors ({err.size} atoms)")
    ax.legend(loc="best")
    _save(fig, path)


def energy_drift(path: Path, runs: dict[str, dict], timestep_fs: float, dtype_note: str = "") -> None:
    """Total energy per atom relative to t = 0 (meV/atom) vs time (ps) for each NVE run in ``runs``."""
    fig, (ax,) = _figure(width=7.0)
    for i, (name, run) in enumerate(runs.items()):
        t, e = np.asarray(run["times_ps"]), np.asarray(run["total_energies_ev"])
        if t.size == 0:
            continue
        e = (e - e[0]) * 1000.0 / run["n_atoms"]
        if run["ok"]:
            label = (f"{name}: drift {run['drift_mev_per_atom_ps']:+.3g} meV/atom/ps, "
                     f"max |ΔE| {run['max_deviation_mev_per_atom']:.3g} meV/atom")
        else:
            label = f"{name}: BLEW UP at {t[-1]:.3g} ps"
        ax.plot(t, e, color=f"C{i}", lw=1.2, label=label)
    ax.axhline(0.0, color="0.5", lw=0.8, ls=":")
    ax.set(xlabel="time (ps)", ylabel="E_tot(t) − E_tot(0) (meV/atom)",
           title=f"NVE energy conservation (velocity Verlet, {timestep_fs:g} fs){dtype_note}")
    ax.legend(fontsize=9)
    _save(fig, path)


def rdf_overlay(path: Path, r, curves: dict[str, np.ndarray], kind: str, note: str = "") -> None:
    """RDF of each run on the same bins; ``kind`` is ``"g(r)"`` or ``"n(r)"`` (see ``metrics.rdf``)."""
    fig, (ax,) = _figure(width=7.0)
    for i, (name, values) in enumerate(curves.items()):
        ax.plot(r, values, color=f"C{i}", lw=1.5, ls="-" if i == 0 else "--", label=name)
    ylabel = "g(r)" if kind == "g(r)" else "n(r): neighbours per atom per Å (1/Å)"
    ax.set(xlabel="r (Å)", ylabel=ylabel, title=f"radial distribution in NVE (all atom pairs){note}")
    ax.legend()
    _save(fig, path)


def reliability(path: Path, atoms: dict, structures: dict | None = None) -> None:
    """Predicted vs observed force error (eV/Å), binned by prediction (``uncertainty.reliability`` dicts:
    per atom, and optionally per structure), with y = x: a calibrated uncertainty lies on the diagonal."""
    fig, (ax,) = _figure(width=4.6)
    series = [("per atom |ΔF_i|", atoms, "C0")] + ([("per structure, RMS over atoms", structures, "C1")]
                                                   if structures else [])
    values = []
    for label, rel, color in series:
        ax.plot(rel["predicted_rms"], rel["observed_rms"], "o-", color=color, ms=4,
                label=f"{label} ({sum(rel['count'])} values, {len(rel['count'])} bins)")
        values += rel["predicted_rms"] + rel["observed_rms"]
    positive = [v for v in values if v > 0]
    lo, hi = (min(positive) / 1.5, max(positive) * 1.5) if positive else (1e-3, 1.0)
    ax.plot([lo, hi], [lo, hi], color="0.5", lw=1, ls="--", label="y = x (calibrated)")
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), aspect="equal",
           xlabel="predicted force uncertainty (eV/Å, bin RMS)", ylabel="observed force error (eV/Å, bin RMS)",
           title="uncertainty reliability")
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    for axis in (ax.xaxis, ax.yaxis):  # 1-2-5 ticks in plain numbers: the range is often under a decade
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FormatStrFormatter("%g"))
        axis.set_minor_formatter(NullFormatter())
    ax.legend(loc="upper left", fontsize=7)
    _save(fig, path)
