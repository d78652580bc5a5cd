"""``distill``: seed structures + a teacher -> a trained, evaluated, MD-checked student in RUN_DIR.

Resumability (``RUN_DIR/state.json``, see :mod:`.state`). Every stage has a *key*, the hash of the
settings that define its outputs plus the digests of the stages it depends on, and a *digest*, the key
plus settings it can continue with in place (only the training budget: ``run.max_time``, ``run.epochs``,
``run.patience``). On every call, stage by stage:

* recorded ``done`` with the same digest and its outputs present: skipped;
* recorded with the same key (killed mid-way, or only the budget changed): run again in place, which
  resumes: labelling skips committed frames, training continues from ``train/last.pt``; sampling, the
  evaluation and the MD check start over (they are minutes at most and write their outputs atomically);
* a different key (a changed setting, teacher or seed structure, or a re-run stage it depends on): the
  stage's old outputs are moved to ``RUN_DIR/superseded/<time>/`` (sampled frames, teacher labels and
  training runs are never deleted; the cheap evaluation report and MD check are simply redone) and the
  stage runs from scratch.

Changes propagate along dependencies only: a new held-out frame count re-samples, re-labels and
re-evaluates the held-out set but keeps the trained student; a new sampling temperature redoes everything
downstream of it. Settings that cannot change a result (device, threads, commit batch sizes, quiet) are
not hashed. A stage whose finished outputs were removed by hand is re-run, and so is everything downstream
of a stage that re-ran.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from io import StringIO
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from .. import io
from ..errors import InputError
from .recipe import dump_recipe, load_recipe, read_yaml
from ..evaluation.gates import check_summary, report_lines
from .stages import Context, active_stages, assemble_report
from .state import RunState, digest


@dataclass
class DistillResult:
    """What a distill call produced. ``summary``: the numbers printed at the end (also summary.json)."""

    run_dir: Path
    checkpoint: Path  # RUN_DIR/student.pt
    report: Path  # RUN_DIR/report/report.md
    summary: dict[str, Any]
    ran: list[str] = field(default_factory=list)  # stages run in this call
    skipped: list[str] = field(default_factory=list)  # stages already done


def resolve_recipe(run_dir: Path, preset: str | None, recipe: str | Path | None,
                   overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The recipe of a run: ``preset`` (default: RUN_DIR/recipe.yaml of an earlier call, else
    ``standard``) <- the ``recipe`` file <- dotted ``overrides``."""
    previous = run_dir / "recipe.yaml"
    if preset is None and previous.is_file():
        return load_recipe(path=recipe, overrides=overrides, base=read_yaml(previous))
    return load_recipe(preset or "standard", recipe, overrides)


def read_seeds(structures: Sequence[str | os.PathLike | Any]) -> list:
    """Seed structures from files (every frame) or ``ase.Atoms``: ``[(source, Atoms)]``."""
    from ase import Atoms

    from ..data.structures import check_structure
    from ..workflow.sampling import read_seed_files

    seeds = []
    for k, item in enumerate(structures):
        if isinstance(item, Atoms):
            check_structure(item, f"structure {k}")
            seeds.append((f"<Atoms {k}: {item.get_chemical_formula()}>", item.copy()))
        else:
            seeds.extend(read_seed_files([item]))
    if not seeds:
        raise InputError("no seed structures given (--structures)")
    return seeds


def distill(
    teacher: str,
    structures: Sequence[str | os.PathLike | Any],
    out: str | os.PathLike,
    *,
    teacher_options: dict[str, Any] | None = None,
    preset: str | None = None,
    recipe: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
    max_time: float | None = None,
    device: str = "auto",
    quiet: bool = False,
) -> DistillResult:
    """Sample, label, train, evaluate and MD-check a student of ``teacher`` for ``structures`` in ``out``.

    Args:
        teacher: teacher name (``orb-v2``, ``gfn2-xtb``, ``sevennet-0``, ``emt``, ``pkg.mod:callable``).
        structures: seed structure files (every frame is a seed) and/or ``ase.Atoms``.
        out: the run directory (created; an existing one is resumed, see the module docstring).
        teacher_options: teacher options (``{"weights": "orb.ckpt"}``).
        preset: ``quick`` or ``standard``; default: the run's own ``recipe.yaml``, else ``standard``.
        recipe: a YAML file merged over the preset.
        overrides: ``{"training.run.max_time": 600, ...}`` applied last.
        max_time: training budget in seconds (= ``training.run.max_time``).
        device: ``auto`` | ``cpu`` | ``cuda[:n]`` for training, evaluation and MD (not hashed).
        quiet: no progress bars or stage lines (the final summary is still returned).
    """
    from ..data.structures import fingerprint
    from ..teachers import TEACHERS

    t_start = time.monotonic()
    run_dir = Path(out)
    overrides = dict(overrides or {})
    if max_time is not None:
        overrides["training.run.max_time"] = float(max_time)
    # Everything that can be wrong with the inputs is checked before the first expensive step.
    config = resolve_recipe(run_dir, preset, recipe, overrides)
    seeds = read_seeds(structures)
    options = dict(teacher_options or {})
    if teacher.lower() not in TEACHERS and ":" not in teacher:  # options are checked when it is built
        raise InputError(f"unknown teacher {teacher!r}; choose one of {sorted(TEACHERS)} "
                         "or give package.module:callable")

    state = RunState.open(run_dir)
    try:
        _write_seeds(run_dir / "seeds.extxyz", seeds)
        io.write_text(run_dir / "recipe.yaml", _recipe_header(teacher, options) + dump_recipe(config))
        ctx = Context(run_dir, config, teacher, options, seeds, fingerprint([a for _, a in seeds]),
                      device=device, quiet=quiet, state=state)
        ran, skipped = _run_stages(ctx, state)
        assemble_report(run_dir)
        summary = make_summary(ctx, state, time.monotonic() - t_start)
        summary["gates"] = check_summary(config.get("gates"), summary)  # None: no gates in the recipe
        io.write_json(run_dir / "summary.json", summary)
    finally:
        state.close()
    return DistillResult(run_dir, run_dir / "student.pt", run_dir / "report" / "report.md", summary, ran,
                         skipped)


def _run_stages(ctx: Context, state: RunState) -> tuple[list[str], list[str]]:
    digests: dict[str, str] = {}
    ran, skipped = [], []
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    stages = active_stages(ctx.recipe)
    if "onpolicy" in state.stages and "onpolicy" not in {s.name for s in stages}:  # rounds set back to 0
        _supersede(ctx.run_dir, ("onpolicy",), stamp)
        state.forget([n for n in list(state.stages) if n.startswith("onpolicy")])
        if ctx.path("train/student.pt").is_file():  # the offline student is the run's student again
            with io.atomic_path(ctx.path("student.pt")) as tmp:
                shutil.copyfile(ctx.path("train/student.pt"), tmp)
    for number, stage in enumerate(stages, 1):
        key = digest({"stage": stage.name, "settings": stage.key(ctx),
                      "deps": {d: digests[d] for d in stage.deps}})
        stage_digest = digest({"key": key, "continue": stage.continuable(ctx)})
        digests[stage.name] = stage_digest
        rec = state.stages.get(stage.name)
        head = f"[{number}/{len(stages)}] {stage.name}: {stage.title}"
        missing = [rel for rel in stage.outputs  # a journal exists only while labels wait to be folded in
                   if not rel.endswith(".journal") and not (ctx.run_dir / rel).exists()]
        # An input re-made in this call (same settings, e.g. its file was removed) makes outputs built on the
        # old one stale even though no hash changed.
        forced = [d for d in stage.deps if d in ran]
        if (rec and rec.get("status") == "done" and rec.get("digest") == stage_digest and not missing
                and not forced):
            ctx.log(f"{head}: done ({_since(rec)}), skipped")
            skipped.append(stage.name)
            continue
        if rec and (rec.get("key") != key or forced):
            moved = _supersede(ctx.run_dir, stage.outputs, stamp if stage.keep_old else None)
            why = "settings or inputs changed since the last run" if rec.get("key") != key else \
                f"{', '.join(forced)} was re-run"
            ctx.log(f"{head}: {why}; re-running" + (f" (old outputs moved to {moved})" if moved else ""))
        elif rec and rec.get("status") == "done" and missing:
            ctx.log(f"{head}: {', '.join(missing)} missing (removed by hand?); re-running")
        elif rec and rec.get("status") == "done":
            ctx.log(f"{head}: budget changed; continuing in place")
        elif rec:
            ctx.log(f"{head}: interrupted earlier; resuming")
        else:
            ctx.log(f"{head}")
        state.start(stage.name, key, stage_digest)
        info = stage.run(ctx)
        state.finish(stage.name, info)
        ran.append(stage.name)
    return ran, skipped


def _since(rec: dict) -> str:
    return f"finished {rec.get('finished', '?')[:19].replace('T', ' ')} UTC"


def _supersede(run_dir: Path, outputs: Sequence[str], stamp: str | None) -> str | None:
    """Move a stage's outputs to ``RUN_DIR/superseded/<stamp>/`` (teacher work is never deleted), or
    delete them when ``stamp`` is None (cheap stages: the evaluation and the MD check)."""
    dest_root = run_dir / "superseded" / (stamp or "")
    moved = False
    for rel in outputs:
        src = run_dir / rel
        if not src.exists():
            continue
        if stamp is None:
            shutil.rmtree(src) if src.is_dir() else src.unlink()
            continue
        dest = dest_root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)  # same file system: atomic, and labels are never copied half-way
        moved = True
    return str(dest_root.relative_to(run_dir)) if moved else None


def _write_seeds(path: Path, seeds: list) -> None:
    from ase.io import write

    buf = StringIO()
    for source, atoms in seeds:
        frame = atoms.copy()
        frame.calc = None
        frame.info = {**{k: v for k, v in atoms.info.items() if isinstance(v, (str, int, float))},
                      "source": source}
        write(buf, frame, format="extxyz")
    if not path.exists() or path.read_text() != buf.getvalue():
        io.write_text(path, buf.getvalue())


def _recipe_header(teacher: str, options: dict[str, Any]) -> str:
    opts = " ".join(f"--teacher-option {k}={v}" for k, v in sorted(options.items()))
    return (f"# mlff-calc distill recipe: every setting this run used (teacher: {teacher}"
            f"{' ' + opts if opts else ''}).\n# Feed it back with --recipe; a re-run without --preset "
            f"or --recipe uses it as its base.\n")


# ---- summary ----------------------------------------------------------------------------------------------
def make_summary(ctx: Context, state: RunState, wall_s: float) -> dict[str, Any]:
    """The headline numbers of the run, from the stage records."""
    info = {name: rec.get("info", {}) for name, rec in state.stages.items()}
    m = info.get("evaluate", {}).get("metrics", {})  # compare's metric names (evaluation/comparison.py)
    errors, speed = m.get("errors") or {}, m.get("speed") or {}
    md_runs = info.get("md", {}).get("runs", [])
    drifts = {}
    for dtype in ctx.recipe["md"]["dtypes"]:
        rows = [r for r in md_runs if r["dtype"] == dtype]
        if rows:
            worst = max(rows, key=lambda r: abs(r.get("drift_mev_per_atom_ps") or float("inf")))
            drifts[dtype] = {"stable": all(r["stable"] for r in rows), "structures": len(rows),
                             "worst_drift_mev_per_atom_ps": worst.get("drift_mev_per_atom_ps"),
                             "worst_structure": worst["formula"],
                             "max_deviation_mev_per_atom": max((r.get("max_deviation_mev_per_atom") or 0.0)
                                                               for r in rows)}
    return {
        "run_dir": str(ctx.run_dir),
        "teacher": ctx.teacher_spec(),
        "seed_structures": [a.get_chemical_formula() for _, a in ctx.seeds],
        "frames": {"train": info.get("label", {}).get("labelled"), "heldout": info.get("label_heldout", {})
                   .get("labelled")},
        "training": {k: info.get("train", {}).get(k) for k in ("epochs", "stop_reason", "train_time_s")},
        "heldout_frames_compared": errors.get("n_frames"),
        **{k: errors.get(k) for k in ("force_mae_ev_per_ang", "force_rmse_ev_per_ang", "force_cosine_mean",
                                      "energy_mae_ev_per_atom")},
        **{k: speed.get(k) for k in ("student_ms_per_call", "teacher_ms_per_call", "speed_ratio")},
        "nve": drifts,
        "frequencies": info.get("vibrations", {}).get("summary"),  # cm⁻¹, student vs teacher (molecules)
        "onpolicy": _onpolicy_summary(info["onpolicy"]) if info.get("onpolicy") else None,
        "md_steps": ctx.recipe["md"]["steps"],
        "md_timestep_fs": ctx.recipe["md"]["timestep"],
        "checkpoint": str(ctx.path("student.pt")),
        "report": str(ctx.path("report/report.md")),
        "wall_s": wall_s,  # this call
        "stage_seconds": {name: rec.get("seconds") for name, rec in state.stages.items()},  # last run of each
    }


def _onpolicy_summary(info: dict) -> dict:
    """The on-policy stage in the summary: how it stopped, teacher calls, and what its rounds added."""
    rounds = [r for r in info.get("rounds", []) if r.get("round", 0) > 0]
    return {**{k: info.get(k) for k in ("stop_reason", "teacher_calls", "student")}, "rounds": len(rounds),
            "labelled": sum(r.get("labelled") or 0 for r in rounds),
            "train_time_s": sum((r.get("train") or {}).get("train_time_s") or 0.0 for r in rounds)}


def format_summary(s: dict[str, Any]) -> str:
    """The summary as the lines ``mlff-calc distill`` prints."""
    def num(value, fmt, unit="", factor=1.0):
        return "n/a" if value is None else f"{factor * value:{fmt}}{unit}"

    # "onpolicy.round_XX" records are parts of the onpolicy stage: not counted twice
    total = sum(t or 0.0 for name, t in s["stage_seconds"].items() if "." not in name)
    op = s.get("onpolicy") or {}
    rounds_added = (f" for the first student; then {op['labelled']} frames and "
                    f"{num(op['train_time_s'], '.0f', ' s')} of warm-start training in {op['rounds']} "
                    f"on-policy round(s)" if op.get("rounds") else "")  # summaries before this key: none
    lines = [f"distill summary: {s['run_dir']} (stages {total / 60:.1f} min; this call "
             f"{s['wall_s'] / 60:.1f} min)",
             f"  teacher               {s['teacher']['name']}; seeds: {', '.join(s['seed_structures'])}",
             f"  frames                {s['frames']['train']} training, {s['frames']['heldout']} held-out "
             f"(independent trajectories)",
             f"  training              {s['training']['epochs']} epochs, "
             f"{num(s['training']['train_time_s'], '.0f', ' s')} ({s['training']['stop_reason']}){rounds_added}",
             f"  force MAE vs teacher  {num(s['force_mae_ev_per_ang'], '.4f', ' eV/Å')} on "
             f"{s['heldout_frames_compared'] or s['frames']['heldout']} held-out frames "
             f"(RMSE {num(s['force_rmse_ev_per_ang'], '.4f')}, cosine {num(s['force_cosine_mean'], '.4f')})",
             f"  energy MAE            {num(s['energy_mae_ev_per_atom'], '.2f', ' meV/atom', 1e3)}",
             f"  speed                 student {num(s['student_ms_per_call'], '.2f', ' ms')}, teacher "
             f"{num(s['teacher_ms_per_call'], '.2f', ' ms')} per force call: speed ratio (teacher/student) "
             f"{num(s['speed_ratio'], '.2f', 'x')}"]
    for dtype, d in s["nve"].items():
        state = "stable" if d["stable"] else "UNSTABLE"
        lines.append(f"  NVE {dtype:<8}          {state}, {s['md_steps']} steps x {s['md_timestep_fs']:g} fs "
                     f"on {d['structures']} structure(s); worst drift "
                     f"{num(d['worst_drift_mev_per_atom_ps'], '+.3f', ' meV/atom/ps')} "
                     f"({d['worst_structure']}), "
                     f"max |ΔE| {num(d['max_deviation_mev_per_atom'], '.3f', ' meV/atom')}")
    freq = s.get("frequencies") or {}
    if freq.get("modes"):
        lines.append(f"  frequencies           MAE {freq['mae_cm1']:.2f} cm⁻¹, max {freq['max_error_cm1']:.2f} cm⁻¹ "
                     f"vs teacher over {freq['modes']} modes of {freq['seeds']} molecule(s)")
    if op:
        lines.append(f"  on-policy             {op['teacher_calls']} teacher calls in all; stopped: "
                     f"{op['stop_reason']} (per-round table in the report)")
    lines += report_lines(s.get("gates"))
    lines += [f"  student               {s['checkpoint']}",
              f"  report                {s['report']}"]
    return "\n".join(lines)


def print_summary(result: DistillResult, file=None) -> None:
    print(format_summary(result.summary), file=file or sys.stdout, flush=True)
