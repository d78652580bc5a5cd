"""The distill stages: sample -> heldout -> label -> label_heldout -> train -> evaluate -> md -> vibrations.

Each stage is a :class:`Stage`: the settings it hashes, the stages it depends on, the paths it owns
(relative to RUN_DIR) and a ``run(ctx) -> info`` function whose ``info`` goes into ``state.json``.
Outputs of every stage (paths below RUN_DIR)::

    seeds.extxyz                    the seed structures (written by distill, input of sampling and MD)
    frames/train.extxyz             sample: teacher MD frames (unlabelled)
    frames/heldout.extxyz           heldout: frames of independent trajectories (other random seed)
    data/train.h5, data/heldout.h5  label, label_heldout: teacher labels (crash-safe, resumable)
    train/                          train: `mlff-calc train` run dir (last.pt, metrics, curve)
    student.pt                      train: copy of train/student.pt (the best EMA weights)
    report/                         evaluate: evaluate.md (its section), figures, metrics.json
    md/                             md: md.json, report.md (its section), one .traj/.log per seed and dtype
    vibrations/                     vibrations: student vs teacher harmonic frequencies (molecules <= 30 atoms)
    report/report.md                assembled by distill from the stages' sections, in stage order
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import io
from ..errors import InputError, TeacherError
from ..evaluation.report import json_safe


@dataclass
class Context:
    """What every stage may read: the run directory, the recipe, the teacher, the seeds, run options."""

    run_dir: Path
    recipe: dict[str, Any]
    teacher: str
    teacher_options: dict[str, Any]
    seeds: list  # [(source, Atoms)]
    seeds_sha256: str
    device: str = "auto"
    quiet: bool = False
    state: Any = None  # the run's RunState (the on-policy stage keeps one record per round in it)
    _teacher: Any = None

    @property
    def progress(self) -> bool:
        return not self.quiet

    def path(self, relative: str) -> Path:
        return self.run_dir / relative

    def log(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def teacher_calc(self):
        """The teacher calculator, built once per call (Orb-v2 takes seconds to load)."""
        if self._teacher is None:
            from ..teachers import load_teacher

            self._teacher = load_teacher(self.teacher, **self.teacher_options)
        return self._teacher

    def teacher_spec(self) -> dict[str, Any]:
        from ..teachers import teacher_spec

        return teacher_spec(self.teacher, self.teacher_options)


@dataclass(frozen=True)
class Stage:
    """``key(ctx)``: settings that define the outputs; ``continuable(ctx)``: settings the stage can take
    up in place from its existing outputs (hashed into the digest only); ``deps``: stages whose digests
    enter the key; ``outputs``: what is moved aside (or, for cheap stages, deleted) when the key changes."""

    name: str
    title: str
    deps: tuple[str, ...]
    outputs: tuple[str, ...]
    key: Callable[[Context], dict]
    run: Callable[[Context], dict]
    continuable: Callable[[Context], dict] = lambda ctx: {}
    keep_old: bool = True  # move superseded outputs aside (teacher work, training); False: just delete
    section: str | None = None  # the stage's own markdown section of report/report.md (see assemble_report)


# ---- sampling ---------------------------------------------------------------------------------------------
def _sampling_config(ctx: Context, heldout: bool):
    from ..workflow.sampling import SamplingConfig

    values = dict(ctx.recipe["sampling"])
    if heldout:
        h = ctx.recipe["heldout"]
        values.update(frames=h["frames"], seed=h["seed"])
        if h["temperatures"] is not None:
            values["temperatures"] = h["temperatures"]
    values["temperatures"] = tuple(values["temperatures"])
    return SamplingConfig(**values)


def _sample(ctx: Context, heldout: bool) -> dict:
    from tqdm.auto import tqdm

    from ..data.structures import write_extxyz
    from ..workflow.sampling import sample_structures

    config = _sampling_config(ctx, heldout)
    out = ctx.path("frames/heldout.extxyz" if heldout else "frames/train.extxyz")
    requested = sum(n for _, atoms in ctx.seeds for *_, n in config.plan(atoms))
    calc = ctx.teacher_calc()
    counts: dict[str, int] = {}
    with tqdm(total=requested, unit="frame", desc="heldout" if heldout else "sample",
              disable=not ctx.progress, dynamic_ncols=True) as bar:
        def on_frame(frame) -> None:
            counts[frame.info["mode"]] = counts.get(frame.info["mode"], 0) + 1
            bar.update(1)

        # write_extxyz renames a complete file into place: a killed stage leaves no truncated output.
        written = write_extxyz(out, sample_structures(ctx.seeds, calc, config, on_frame=on_frame))
    if written == 0:
        raise TeacherError(f"sampling produced no frames (every MD trajectory blew up at once; see the "
                           f"warnings above): check the seed structures and the teacher {ctx.teacher!r}")
    return {"frames": written, "requested": requested, "modes": counts,
            "file": str(out.relative_to(ctx.run_dir))}


def _sample_key(ctx: Context, heldout: bool) -> dict:
    import dataclasses

    return {"teacher": ctx.teacher_spec(), "seeds": ctx.seeds_sha256,
            "sampling": dataclasses.asdict(_sampling_config(ctx, heldout))}


# ---- labelling --------------------------------------------------------------------------------------------
def _label(ctx: Context, name: str) -> dict:
    from ..workflow.labelling import label_file

    lab = ctx.recipe["labelling"]
    # curvature labels for training frames only: the held-out set measures forces as before
    curvature = {k: v for k, v in lab.items() if k.startswith("hvp_")} if name == "train" else {}
    report = label_file(ctx.path(f"frames/{name}.extxyz"), ctx.path(f"data/{name}.h5"), ctx.teacher,
                        ctx.teacher_options, batch_size=lab["batch_size"],
                        commit_interval=lab["commit_interval"], progress=ctx.progress, **curvature)
    if report.done == 0:
        reasons = sorted(set(report.failed_total.values()))[:3]
        raise TeacherError(f"the teacher failed on every frame of frames/{name}.extxyz: {'; '.join(reasons)}")
    if report.failed_total:
        ctx.log(f"  {len(report.failed_total)} of {report.shard_frames} frames failed in the teacher and are "
                f"skipped (reasons in data/{name}.h5 /failures)")
    return {"labelled": report.done, "labelled_now": report.labelled_now, "failed": len(report.failed_total),
            "frames": report.shard_frames, "file": f"data/{name}.h5",
            "teacher_calls_now": report.teacher_calls, "hvp_frames_now": report.hvp_frames_now}


def _label_key(ctx: Context, curvature: bool = False) -> dict:
    # batch_size / commit_interval change how often labels are committed, never the labels.
    lab = ctx.recipe["labelling"]
    if curvature and lab["hvp_fraction"] > 0:  # off: the key of runs made before curvature labels existed
        return {"teacher": ctx.teacher_spec(), "hvp": {k: v for k, v in lab.items() if k.startswith("hvp_")}}
    return {"teacher": ctx.teacher_spec()}


# ---- training ---------------------------------------------------------------------------------------------
# Training settings that change nothing about the result (where and how it runs) are not hashed; the
# time/epoch budget changes the result but a finished or killed run continues with a new budget in place.
_TRAIN_UNHASHED = {"run": ("device", "num_threads", "quiet")}
_TRAIN_CONTINUABLE = {"run": ("epochs", "max_time", "patience")}
# Loss settings added after runs existed, with the value that means "off": left out of the key while off,
# so those runs keep their key.
_LOSS_OFF = {"hvp_weight": 0, "force_huber": None}


def _train_sections(ctx: Context, picked: dict[str, tuple[str, ...]], keep: bool) -> dict:
    out = {}
    for section, values in ctx.recipe["training"].items():
        names = picked.get(section, ())
        out[section] = {k: v for k, v in values.items() if (k in names) == keep}
    return out


def _train_key(ctx: Context) -> dict:
    from .minima import enabled

    skip = {s: _TRAIN_UNHASHED.get(s, ()) + _TRAIN_CONTINUABLE.get(s, ()) for s in ctx.recipe["training"]}
    key = _train_sections(ctx, skip, keep=False)
    for name, off in _LOSS_OFF.items():
        if name in key["loss"] and key["loss"][name] == off:
            del key["loss"][name]
    if enabled(ctx.recipe):  # off: no entry, the key of runs made before the option existed
        key["hessian_at_minima_copies"] = ctx.recipe["labelling"]["hessian_at_minima"]["copies"]
    return key


def _train_continuable(ctx: Context) -> dict:
    return _train_sections(ctx, _TRAIN_CONTINUABLE, keep=True)


def _train(ctx: Context) -> dict:
    from ..training import train
    from ..training.config import config_from_dict

    raw = json.loads(json.dumps(ctx.recipe["training"]))  # a deep copy of plain data
    raw["data"]["path"] = str(ctx.path("data/train.h5"))
    raw["run"]["out"] = str(ctx.path("train"))
    if ctx.device != "auto":
        raw["run"]["device"] = ctx.device
    raw["run"]["quiet"] = raw["run"]["quiet"] or ctx.quiet
    set_train_only(ctx, raw)
    result = train(config_from_dict(raw))
    with io.atomic_path(ctx.path("student.pt")) as tmp:
        shutil.copyfile(result.checkpoint, tmp)
    return {"epochs": result.epochs, "best_epoch": result.best_epoch, "stop_reason": result.stop_reason,
            "train_time_s": result.train_time, "validation": result.val_metrics, "test": result.test_metrics,
            "checkpoint": "student.pt"}


def set_train_only(ctx: Context, raw: dict) -> None:
    """The frames of labelling.hessian_at_minima (``data/minima.h5``) into the training config ``raw``:
    training split only, ``copies`` times per epoch."""
    from .minima import train_only

    extra = train_only(ctx)
    if extra is not None:
        raw["data"]["train_only"], raw["data"]["train_only_repeat"] = extra


@contextlib.contextmanager
def _torch_threads(ctx: Context):
    """``training.run.num_threads`` for the student's evaluation and MD too, restored afterwards: on a
    small CPU a small student is fastest on one thread, and several threads stall under contention."""
    import torch

    n, before = ctx.recipe["training"]["run"]["num_threads"], torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---- evaluation -------------------------------------------------------------------------------------------
def _student_sha256(ctx: Context) -> str | None:
    """The student these metrics describe: a student.pt replaced by hand (e.g. ``mlff-calc train --out
    RUN_DIR --overwrite``) re-runs the evaluation and the MD check, so old numbers never sit beside it."""
    import hashlib

    path = ctx.path("student.pt")
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _evaluate_key(ctx: Context) -> dict:
    return {"teacher": ctx.teacher_spec(), "evaluation": ctx.recipe["evaluation"],
            "md": {k: ctx.recipe["md"][k] for k in ("timestep", "temperature")},
            "student": _student_sha256(ctx)}


def _evaluate(ctx: Context) -> dict:
    from ase.io import write

    from ..evaluation import compare

    ev, md = ctx.recipe["evaluation"], ctx.recipe["md"]
    report = ctx.path("report")
    md_structure = None
    if ev["nve_steps"] > 0:  # compare's own NVE starts from the first seed the md stage checks
        first = md["structures"][0] if md["structures"] is not None else 0
        report.mkdir(parents=True, exist_ok=True)
        md_structure = report / "nve_start.extxyz"
        write(md_structure, ctx.seeds[first][1], format="extxyz")
    with _torch_threads(ctx):
        metrics = compare(  # by name, so the report names the teacher (a calculator would be "TBLite")
            str(ctx.path("student.pt")), ctx.teacher, teacher_options=dict(ctx.teacher_options),
            data=str(ctx.path("data/heldout.h5")), out=str(report), max_frames=ev["max_frames"],
            nve_steps=ev["nve_steps"], timestep=md["timestep"], temperature=md["temperature"],
            teacher_md=ev["teacher_md"], md_structure=md_structure, device=ctx.device, progress=ctx.progress,
        )
    # compare's report.md is this stage's section; report/report.md is assembled from all sections.
    (report / "report.md").replace(report / "evaluate.md")
    keep = ("errors", "speed", "nve", "rdf")  # headline numbers; the rest stays in report/metrics.json
    return {"metrics": json_safe({k: metrics.get(k) for k in keep}), "report": "report/report.md"}


# ---- MD stability check -----------------------------------------------------------------------------------
def _md_key(ctx: Context) -> dict:
    return {"md": ctx.recipe["md"], "seeds": ctx.seeds_sha256, "student": _student_sha256(ctx)}


def _md(ctx: Context) -> dict:
    """Student NVE from each chosen seed structure in each dtype; a blow-up is a result, not an error."""
    with _torch_threads(ctx):
        return _md_runs(ctx)


def _md_runs(ctx: Context) -> dict:
    from ..calculator import StudentCalculator
    from ..evaluation.nve import run_nve

    md = ctx.recipe["md"]
    indices = md["structures"] if md["structures"] is not None else range(len(ctx.seeds))
    out_dir = ctx.path("md")
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for i in indices:
        if i >= len(ctx.seeds):
            raise InputError(f"recipe md.structures: index {i}, but there are only {len(ctx.seeds)} seed "
                             "structures")
        source, atoms = ctx.seeds[i]
        for dtype in md["dtypes"]:
            calc = StudentCalculator.from_checkpoint(ctx.path("student.pt"), device=ctx.device, dtype=dtype)
            name = f"{i:02d}_{atoms.get_chemical_formula()}_{dtype}"
            res = run_nve(atoms, calc, temperature=md["temperature"], timestep=md["timestep"],
                          steps=md["steps"], interval=10, traj=out_dir / f"{name}.traj",
                          log=out_dir / f"{name}.log", seed=md["seed"], progress=ctx.progress)
            row = {"structure": i, "source": source, "formula": atoms.get_chemical_formula(),
                   "n_atoms": len(atoms), "dtype": dtype, "steps": md["steps"], "timestep_fs": md["timestep"],
                   "temperature_k": md["temperature"], "traj": f"md/{name}.traj", "stable": res["ok"],
                   "steps_done": res["steps_done"], "wall_s": res["wall_s"],
                   **{k: res[k] for k in ("drift_mev_per_atom_ps", "max_deviation_mev_per_atom",
                                          "mean_temperature_k", "ns_per_day")}}
            if not res["ok"]:
                row["error"] = res["error"]
            runs.append(json_safe(row))
            drift = row.get("drift_mev_per_atom_ps")
            verdict = (f"stable, drift {drift:+.3f} meV/atom/ps" if row["stable"] and drift is not None
                       else f"UNSTABLE: {row.get('error')}")
            ctx.log(f"  NVE {row['formula']} ({dtype}): {verdict}")
    info = {"runs": runs, "stable": all(r["stable"] for r in runs)}
    io.write_json(out_dir / "md.json", info)
    io.write_text(out_dir / "report.md", md_section(runs))
    return info


def md_section(runs: list[dict]) -> str:
    """The MD check's section of the distill report (``md/report.md``; :mod:`.report` assembles them)."""
    lines = ["## MD stability check (`mlff-calc distill`)", "",
             "Student NVE (velocity Verlet, Maxwell-Boltzmann start) from each seed structure; drift is the "
             "slope of a line fitted to the total energy per atom.", "",
             "| structure | atoms | dtype | steps x fs | stable | drift (meV/atom/ps) "
             "| max abs dE (meV/atom) | mean T (K) |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        def f(key, fmt):
            return "n/a" if r.get(key) is None else format(r[key], fmt)

        stable = "yes" if r["stable"] else "NO: " + r.get("error", "")
        lines.append(f"| {r['formula']} | {r['n_atoms']} | {r['dtype']} "
                     f"| {r['steps']} x {r['timestep_fs']:g} "
                     f"| {stable} | {f('drift_mev_per_atom_ps', '+.4f')} "
                     f"| {f('max_deviation_mev_per_atom', '.4f')} "
                     f"| {f('mean_temperature_k', '.0f')} |")
    return "\n".join(lines) + "\n"


def _vibrations(ctx: Context) -> dict:
    from .vibrations import run_vibrations

    with _torch_threads(ctx):
        return run_vibrations(ctx)


def assemble_report(run_dir: Path) -> Path | None:
    """``report/report.md`` = the sections the stages wrote, in stage order (each stage owns its section
    file and rewrites only that; nothing edits another stage's output). None before the evaluation ran."""
    from .rounds import STAGE as ONPOLICY

    parts = [run_dir / s.section for s in (*STAGES, ONPOLICY)
             if s.section and (run_dir / s.section).is_file()]
    if not (run_dir / "report").is_dir() or not parts:
        return None
    text = "\n".join(part.read_text(encoding="utf-8").rstrip() + "\n" for part in parts)
    report = run_dir / "report" / "report.md"
    if not report.is_file() or report.read_text(encoding="utf-8") != text:
        io.write_text(report, text)
    return report


STAGES: tuple[Stage, ...] = (
    Stage("sample", "sample training frames (teacher MD)", (), ("frames/train.extxyz",),
          key=lambda ctx: _sample_key(ctx, heldout=False), run=lambda ctx: _sample(ctx, heldout=False)),
    Stage("heldout", "sample held-out frames (independent trajectories)", (), ("frames/heldout.extxyz",),
          key=lambda ctx: _sample_key(ctx, heldout=True), run=lambda ctx: _sample(ctx, heldout=True)),
    Stage("label", "label training frames", ("sample",), ("data/train.h5", "data/train.h5.journal"),
          key=lambda ctx: _label_key(ctx, curvature=True), run=lambda ctx: _label(ctx, "train")),
    Stage("label_heldout", "label held-out frames", ("heldout",),
          ("data/heldout.h5", "data/heldout.h5.journal"), key=_label_key,
          run=lambda ctx: _label(ctx, "heldout")),
    Stage("train", "train the student", ("label",), ("train", "student.pt"), key=_train_key, run=_train,
          continuable=_train_continuable),
    Stage("evaluate", "compare student and teacher on held-out frames", ("train", "label_heldout"),
          ("report",), key=_evaluate_key, run=_evaluate, keep_old=False, section="report/evaluate.md"),
    # After evaluate, so that the sections of report/report.md always come from the same run.
    Stage("md", "student NVE stability check", ("train", "evaluate"), ("md",), key=_md_key, run=_md,
          keep_old=False, section="md/report.md"),
    Stage("vibrations", "harmonic frequencies, student vs teacher (molecules)", ("train",), ("vibrations",),
          key=lambda ctx: {"teacher": ctx.teacher_spec(), "seeds": ctx.seeds_sha256,
                           "student": _student_sha256(ctx)},
          run=_vibrations, keep_old=False, section="vibrations/report.md"),
)


def active_stages(recipe: dict[str, Any]) -> tuple[Stage, ...]:
    """``STAGES``, with ``label_minima`` after the labels (``train`` and ``vibrations`` then depend on it)
    when ``labelling.hessian_at_minima.enabled``, and the on-policy rounds after ``train`` when
    ``onpolicy.rounds > 0``. Off, nothing changes: no stage, no record, the same digests as before the
    options existed."""
    import dataclasses

    from .minima import STAGE as MINIMA, enabled as minima_enabled
    from .rounds import STAGE as ONPOLICY

    stages = list(STAGES)
    if minima_enabled(recipe):
        stages = [dataclasses.replace(s, deps=(*s.deps, MINIMA.name)) if s.name in ("train", "vibrations")
                  else s for s in stages]
        stages.insert([s.name for s in stages].index("label_heldout") + 1, MINIMA)
    if recipe["onpolicy"]["rounds"]:
        stages.insert([s.name for s in stages].index("train") + 1, ONPOLICY)
    return tuple(stages)
