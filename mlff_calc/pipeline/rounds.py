"""On-policy rounds of ``distill`` (recipe section ``onpolicy:``; ``rounds: 0`` = offline distill, no stage).

After ``train`` has made a first student from the recipe's (small) teacher budget, round r = 1, 2, ...:

1. student Langevin MD (``fixcm=False``) from every seed at every temperature x factor; blown-up or
   bond-breaking trajectories keep their frames up to the failure (:mod:`mlff_calc.workflow.onpolicy`);
2. score the candidates (uncertainty, committee of the last two students, or none) and select a diverse,
   high-scored subset -> ``onpolicy/round_XX/selected.extxyz`` (an ordinary ``mlff-calc label`` input,
   so it can also be labelled with ``--shard`` elsewhere and merged into ``labels.h5``);
3. label it with the teacher in crash-safe batches -> ``onpolicy/round_XX/labels.h5`` (the journal);
4. warm-start training from the previous student on every label so far (``data/train.h5`` + all rounds'
   ``labels.h5`` -> ``round_XX/train.h5``) -> ``round_XX/train/student.pt``;
5. held-out force MAE on ``data/heldout.h5``.

Rounds stop at ``rounds``, at the teacher-call budget (sampling MD steps + labels of the first student,
plus every round's labels; the held-out set is not counted: it is the same for any recipe), or at
convergence. Each round is one record ``onpolicy.round_XX`` in ``state.json`` whose key hashes the
stage's key and the round number: a finished round is never relabelled or retrained; a killed one resumes
its step (selection files are written atomically, labelling and training resume in place). ``rounds``,
the budget and the convergence settings only enter the stage's digest: raising them continues in place.
The last finished round's student becomes ``student.pt`` (the first one stays in ``train/student.pt``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from .. import io
from ..evaluation.report import json_safe
from .stages import Context, Stage, _torch_threads, set_train_only
from .state import digest

CONTINUABLE = ("rounds", "teacher_budget", "converge_mae_change", "converge_score")
# Keys added after runs existed: left out of the stage's key while unset, so those runs keep their key.
UNSET_UNHASHED = ("train_lr", "failure_score")


@dataclass
class OnPolicyConfig:
    """Recipe section ``onpolicy`` (documented in ``mlff_calc/recipes/standard.yaml``)."""

    rounds: int = 0  # 0 = offline distill (no on-policy stage, digests of existing runs unchanged)
    temperatures: Optional[list[float]] = None  # K; None = sampling.temperatures
    temperature_factors: list[float] = dataclasses.field(default_factory=lambda: [1.0, 1.5])
    md_steps: int = 1000  # student Langevin steps per trajectory per round
    timestep: float = 0.5  # fs
    friction: float = 0.01  # 1/fs
    candidates: int = 20  # candidate frames per trajectory (evenly spaced)
    frames: int = 50  # frames selected and labelled per round
    pool_factor: float = 3.0  # diversity among the pool_factor x frames best-scored candidates
    scorer: str = "auto"  # auto | uncertainty | committee | diversity
    teacher_budget: Optional[int] = None  # total teacher calls incl. the first student's; None = no budget
    converge_mae_change: float = 0.0  # stop when the held-out force MAE improves by less than this fraction
    converge_score: Optional[float] = None  # stop when no candidate scores above this (eV/Å)
    failure_score: Optional[float] = None  # eV/Å: a student trajectory ends at its first frame above it
    train_epochs: int = 100000  # warm-start training per round
    # s per round; a list gives round 1, 2, ... their own budgets (the last entry repeats), e.g. short
    # rounds that only need to move the student's MD, then a long last one that settles it
    train_max_time: Union[float, list[float], None] = 60.0
    train_lr: Optional[float] = None  # peak learning rate of the warm starts; None = training.optim.lr
    seed: int = 0

    def checks(self):
        from ..workflow.onpolicy import SCORERS

        t, f = self.temperatures, self.temperature_factors
        return [("rounds", self.rounds >= 0, "must be >= 0 (0 = offline distill)"),
                ("temperatures", t is None or (len(t) > 0 and min(t) > 0),
                 "must be temperatures > 0 K or null"),
                ("temperature_factors", len(f) > 0 and min(f) > 0, "must be a list of factors > 0"),
                ("md_steps", self.md_steps >= 1, "must be >= 1"),
                ("timestep", 0 < self.timestep <= 10, "must be in (0, 10] fs"),
                ("friction", self.friction > 0, "must be > 0 (1/fs)"),
                ("candidates", self.candidates >= 1, "must be >= 1"),
                ("frames", self.frames >= 1, "must be >= 1"),
                ("pool_factor", self.pool_factor >= 1, "must be >= 1"),
                ("scorer", self.scorer in SCORERS, f"must be one of {', '.join(SCORERS)}"),
                ("teacher_budget", self.teacher_budget is None or self.teacher_budget >= 1,
                 "must be >= 1 or null"),
                ("converge_mae_change", 0 <= self.converge_mae_change < 1, "must be in [0, 1)"),
                ("failure_score", self.failure_score is None or self.failure_score > 0, "must be > 0 or null"),
                ("train_epochs", self.train_epochs >= 1, "must be >= 1"),
                ("train_max_time", _positive_times(self.train_max_time),
                 "must be > 0 s, a non-empty list of them (round 1, 2, ...; the last repeats), or null"),
                ("train_lr", self.train_lr is None or self.train_lr > 0, "must be > 0 or null")]


def _positive_times(value) -> bool:
    """``train_max_time`` (already typed by the recipe schema): None, a number or a list, all > 0."""
    if value is None:
        return True
    values = value if isinstance(value, list) else [value]
    return len(values) > 0 and min(values) > 0


def round_max_time(value, r: int) -> Optional[float]:
    """``onpolicy.train_max_time`` for round ``r`` (1-based): a number, None, or a per-round list whose
    last entry repeats."""
    if isinstance(value, list):
        return float(value[min(r, len(value)) - 1])
    return None if value is None else float(value)


def default_section() -> dict[str, Any]:
    """The section a recipe without ``onpolicy:`` gets (recipes written before it existed)."""
    return dataclasses.asdict(OnPolicyConfig())


# ---- stage -----------------------------------------------------------------------------------------------
def _key(ctx: Context) -> dict:
    from .stages import _train_key

    cfg = {k: v for k, v in ctx.recipe["onpolicy"].items()
           if k not in CONTINUABLE and not (k in UNSET_UNHASHED and v is None)}
    # Round training replaces training.run's epochs/max_time by onpolicy.train_*; device/threads unhashed.
    return {"teacher": ctx.teacher_spec(), "seeds": ctx.seeds_sha256, "onpolicy": cfg,
            "training": _train_key(ctx), "heldout_frames": ctx.recipe["evaluation"]["max_frames"],
            "sampling": ctx.recipe["sampling"]["temperatures"]}


def _continuable(ctx: Context) -> dict:
    return {k: ctx.recipe["onpolicy"][k] for k in CONTINUABLE}


def initial_teacher_calls(ctx: Context) -> int:
    """Teacher calls of the first student: one force call per teacher MD step planned (plus the start),
    and one per labelled or failed training frame."""
    from .stages import _sampling_config

    config = _sampling_config(ctx, heldout=False)
    md = sum(config.warmup + config.interval * n + 1 for _, atoms in ctx.seeds
             for mode, _, _, n in config.plan(atoms) if mode == "md")
    label = ctx.state.stages.get("label", {}).get("info", {})
    return int(md + label.get("labelled", 0) + label.get("failed", 0))


def run_rounds(ctx: Context) -> dict:
    with _torch_threads(ctx):
        return _run_rounds(ctx)


def _run_rounds(ctx: Context) -> dict:
    cfg = ctx.recipe["onpolicy"]
    stage_key = ctx.state.stages["onpolicy"]["key"]
    if not ctx.path("onpolicy").is_dir():  # new, or moved aside (superseded): no round's outputs exist
        ctx.state.forget([n for n in list(ctx.state.stages) if n.startswith("onpolicy.round_")])
    students = [ctx.path("train/student.pt")]
    rows = [_record(ctx, 0, stage_key, lambda: {
        "round": 0, "teacher_calls": initial_teacher_calls(ctx), "scorer": None,
        "heldout": heldout_errors(ctx, students[0])})]
    rows[0]["teacher_calls_total"] = rows[0]["teacher_calls"]
    stop = f"{cfg['rounds']} rounds done"
    for r in range(1, cfg["rounds"] + 1):
        used = rows[-1]["teacher_calls_total"]
        left = np.inf if cfg["teacher_budget"] is None else cfg["teacher_budget"] - used
        if left <= 0:
            stop = f"teacher-call budget ({cfg['teacher_budget']}) spent"
            break
        previous = students[-2] if len(students) > 1 else None
        n = int(min(cfg["frames"], left))
        row = _record(ctx, r, stage_key, lambda: _one_round(ctx, r, students[-1], previous, n))
        row["teacher_calls_total"] = used + row["teacher_calls"]
        rows.append(row)
        if row.get("converged"):
            stop = row["converged"]
            break
        students.append(ctx.path(f"onpolicy/round_{r:02d}/train/student.pt"))
        before, now = rows[-2]["heldout"]["force_mae_ev_per_ang"], row["heldout"]["force_mae_ev_per_ang"]
        if cfg["converge_mae_change"] > 0 and (before - now) < cfg["converge_mae_change"] * before:
            stop = (f"converged: held-out force MAE {before:.4f} -> {now:.4f} eV/Å, less than "
                    f"{100 * cfg['converge_mae_change']:g}% better")
            break
    with io.atomic_path(ctx.path("student.pt")) as tmp:
        shutil.copyfile(students[-1], tmp)
    io.write_text(ctx.path("onpolicy/report.md"), section(rows, stop))
    return json_safe({"rounds": rows, "stop_reason": stop, "teacher_calls": rows[-1]["teacher_calls_total"],
                      "student": str(students[-1].relative_to(ctx.run_dir))})


def _record(ctx: Context, r: int, stage_key: str, work) -> dict:
    """The round's record in state.json: reused when done under the same key, else ``work()`` is run."""
    name, key = f"onpolicy.round_{r:02d}", digest({"stage": stage_key, "round": r})
    rec = ctx.state.stages.get(name)
    if rec and rec.get("status") == "done" and rec.get("key") == key:
        ctx.log(f"  round {r}: done, skipped")
        return dict(rec["info"])
    ctx.log(f"  round {r}" + (": interrupted earlier; resuming" if rec and rec.get("key") == key else ""))
    ctx.state.start(name, key, key)
    info = json_safe(work())
    ctx.state.finish(name, info)
    return dict(info)


def _one_round(ctx: Context, r: int, student: Path, previous: Path | None, n: int) -> dict:
    from ..data.structures import write_extxyz

    cfg = ctx.recipe["onpolicy"]
    rdir = ctx.path(f"onpolicy/round_{r:02d}")
    selected, meta_path = rdir / "selected.extxyz", rdir / "select.json"
    if not (selected.is_file() and meta_path.is_file()):
        meta, frames = _propose(ctx, r, student, previous, n)
        io.write_json(meta_path, meta)  # before selected.extxyz: both present means the selection is final
        if frames:
            write_extxyz(selected, frames)
        else:
            io.write_text(selected, "")
    meta = json.loads(meta_path.read_text())
    row = {"round": r, **{k: meta[k] for k in ("scorer", "candidates", "max_score", "md_runs", "md_stable",
                                               "md_failures")}, "selected": meta["selected"]}
    if cfg["converge_score"] is not None and meta["scorer"] != "diversity" \
            and meta["max_score"] is not None and meta["max_score"] < cfg["converge_score"]:
        return {**row, "teacher_calls": 0, "converged": f"converged: no candidate scored above "
                                                         f"{cfg['converge_score']:g} eV/Å"}
    if meta["selected"] == 0:
        return {**row, "teacher_calls": 0, "converged": "no new candidate frames"}
    row.update(_label(ctx, selected, rdir / "labels.h5"))
    data = rdir / "train.h5"
    if not data.is_file():
        _combine(ctx, r, data)
    result = _train(ctx, data, rdir / "train", init_from=student, r=r)
    row.update(train=result, heldout=heldout_errors(ctx, rdir / "train" / "student.pt"))
    ctx.log(f"  round {r}: {row['teacher_calls']} teacher calls, held-out force MAE "
            f"{row['heldout']['force_mae_ev_per_ang']:.4f} eV/Å")
    return row


def _propose(ctx: Context, r: int, student: Path, previous: Path | None, n: int) -> tuple[dict, list]:
    """Student MD, scores and the selection of round ``r``: ``(select.json contents, frames)``."""
    from ..calculator import StudentCalculator
    from ..workflow.onpolicy import (cut_at_failure_score, make_scorer, select_frames,
                                     student_md_candidates)

    cfg = ctx.recipe["onpolicy"]
    temps = cfg["temperatures"] or ctx.recipe["sampling"]["temperatures"]
    temps = sorted({float(t) * float(f) for t in temps for f in cfg["temperature_factors"]})
    calc = StudentCalculator.from_checkpoint(student, device=ctx.device)
    candidates, runs = student_md_candidates(
        ctx.seeds, calc, temps, cfg["md_steps"], cfg["candidates"], cfg["timestep"], cfg["friction"],
        seed=cfg["seed"] + 7919 * r, out_dir=ctx.path(f"onpolicy/round_{r:02d}/md"))
    name, scorer = make_scorer(cfg["scorer"], student, previous, ctx.seeds[0][1], device=ctx.device)
    scores = scorer(candidates) if scorer is not None and candidates else None
    max_score = None if scores is None or not len(scores) else float(np.max(scores))
    if cfg["failure_score"] is not None and scores is not None:
        candidates, scores, runs = cut_at_failure_score(candidates, scores, runs, cfg["failure_score"])
    for run in runs:
        ctx.log(f"    student MD {run['formula']} {run['temperature_k']:g} K: "
                + ("stable" if run["stable"] else f"FAILED ({run['reason']})"))
    pre = [k for k, c in enumerate(candidates) if c.info["pre_failure"]]
    picked = select_frames(candidates, scores, n, pool_factor=cfg["pool_factor"], must_consider=pre)
    frames = [candidates[k] for k in picked]
    for k, frame in zip(picked, frames):
        frame.info["score"] = float(scores[k]) if scores is not None else 0.0
    meta = {"scorer": name, "temperatures_k": temps, "candidates": len(candidates), "selected": len(frames),
            "max_score": max_score,
            "selected_scores": [f.info["score"] for f in frames], "pre_failure_candidates": len(pre),
            "md_runs": len(runs), "md_stable": sum(x["stable"] for x in runs),
            "md_failures": [x for x in runs if not x["stable"]]}
    return json_safe(meta), frames


def _label(ctx: Context, selected: Path, out: Path) -> dict:
    from ..workflow.labelling import label_file

    lab = ctx.recipe["labelling"]
    rep = label_file(selected, out, ctx.teacher, ctx.teacher_options, batch_size=lab["batch_size"],
                     commit_interval=lab["commit_interval"], progress=ctx.progress)
    return {"labelled": rep.done, "failed": len(rep.failed_total),
            "teacher_calls": rep.done + len(rep.failed_total)}


def _combine(ctx: Context, r: int, out: Path) -> None:
    """``out`` = data/train.h5 + the labels of rounds 1..r, numbered in that order (written atomically)."""
    from ..data.hdf5 import DatasetReader, write_frames

    sources = [ctx.path("data/train.h5")] + [ctx.path(f"onpolicy/round_{k:02d}/labels.h5")
                                             for k in range(1, r + 1)]
    sources = [p for p in sources if p.is_file()]
    readers = [DatasetReader(p) for p in sources]
    try:
        def frames():
            n = 0
            for reader in readers:
                for i in range(len(reader)):
                    frame = reader.frame(i)
                    if not np.isfinite(frame["stress"]).all():
                        frame["stress"] = None
                    frame["input_index"] = n
                    n += 1
                    yield frame

        provenance = {"command": "distill onpolicy", "round": r,
                      "merged_from": [str(p.relative_to(ctx.run_dir)) for p in sources]}
        with io.atomic_path(out) as tmp:
            tmp.unlink()  # write_frames makes a new file (and its journal) at the temporary name
            write_frames(tmp, frames(), readers[0].teacher, provenance)
    finally:
        for reader in readers:
            reader.close()


def _train(ctx: Context, data: Path, out: Path, init_from: Path, r: int) -> dict:
    from ..training import train
    from ..training.config import config_from_dict

    cfg = ctx.recipe["onpolicy"]
    raw = json.loads(json.dumps(ctx.recipe["training"]))
    raw["data"]["path"], raw["run"]["out"] = str(data), str(out)
    set_train_only(ctx, raw)  # the Hessians at the seed minima, when the recipe asks for them
    raw["run"].update(epochs=cfg["train_epochs"], max_time=round_max_time(cfg["train_max_time"], r))
    if cfg["train_lr"] is not None:
        raw["optim"]["lr"] = cfg["train_lr"]
    if ctx.device != "auto":
        raw["run"]["device"] = ctx.device
    raw["run"]["quiet"] = raw["run"]["quiet"] or ctx.quiet
    result = train(config_from_dict(raw), init_from=init_from)
    return {"epochs": result.epochs, "stop_reason": result.stop_reason, "train_time_s": result.train_time}


def heldout_errors(ctx: Context, student: Path) -> dict:
    """Force errors of ``student`` on (up to ``evaluation.max_frames`` evenly spaced) held-out frames."""
    from ..calculator import StudentCalculator
    from ..data.hdf5 import DatasetReader
    from ..evaluation.metrics import force_errors

    calc = StudentCalculator.from_checkpoint(student, device=ctx.device)
    with DatasetReader(ctx.path("data/heldout.h5")) as reader:
        n = min(len(reader), ctx.recipe["evaluation"]["max_frames"])
        idx = np.unique(np.linspace(0, len(reader) - 1, n).round().astype(int))
        images = [reader.atoms(int(i)) for i in idx]
    ref = np.concatenate([a.get_forces() for a in images])
    for a in images:
        a.calc = None
    pred = np.concatenate([res["forces"] for res in calc.batch_calculate(images)])
    return {"n_frames": len(images), **force_errors(pred, ref)}


def section(rows: list[dict], stop: str) -> str:
    """``onpolicy/report.md``: one row per student (round 0 = the first, offline one)."""
    lines = ["## On-policy rounds (`mlff-calc distill`, recipe `onpolicy:`)", "",
             "Round 0 is the first student (teacher MD sampling). Each later round ran student Langevin MD "
             "with the previous student, scored the frames, labelled the selected ones and warm-started "
             "training. *MD stable* and *max score* describe the previous student's MD in that round.", "",
             "| round | teacher calls (total) | held-out force MAE (eV/Å) | MD stable | scorer | max score "
             "(eV/Å) | candidates -> selected |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        mae = (row.get("heldout") or {}).get("force_mae_ev_per_ang")
        md = f"{row['md_stable']}/{row['md_runs']}" if "md_runs" in row else "n/a"
        score = "n/a" if row.get("max_score") is None else f"{row['max_score']:.3f}"
        sel = f"{row['candidates']} -> {row['selected']}" if "candidates" in row else "n/a"
        lines.append(f"| {row['round']} | {row['teacher_calls']} ({row['teacher_calls_total']}) "
                     f"| {'n/a' if mae is None else format(mae, '.4f')} | {md} "
                     f"| {row.get('scorer') or 'n/a'} "
                     f"| {score} | {sel} |")
    failures = [f for row in rows for f in row.get("md_failures", [])]
    if failures:
        lines += ["", "Student MD failures: " + "; ".join(
            f"{f['formula']} at {f['temperature_k']:g} K ({f['reason']})" for f in failures[:10])]
    return "\n".join(lines + ["", f"Stopped: {stop}.", ""])


STAGE = Stage("onpolicy", "on-policy rounds (student MD, selection, teacher labels, warm start)",
              ("train", "label_heldout"), ("onpolicy",), key=_key, run=run_rounds, continuable=_continuable,
              section="onpolicy/report.md")

