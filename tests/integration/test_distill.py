"""``mlff-calc distill`` end to end with EMT on a tiny Cu/Al cell: outputs and summary, skipping finished
stages, SIGKILL during labelling and during training then resuming (nothing finished is redone, no label
is lost), changed settings (re-run downstream only, old labels kept), bad recipes, the shipped presets."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
import yaml
from ase.build import bulk
from ase.calculators.emt import EMT

from mlff_calc.cli import main
from mlff_calc.data.hdf5 import DatasetReader, pending_frames
from mlff_calc.pipeline import distill, load_recipe
from mlff_calc.pipeline.stages import STAGES

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ALL = [s.name for s in STAGES]
# Seconds per stage at most: a 4-atom cell, tens of frames, a 2-layer 16-feature student, short MD.
TINY = {
    "sampling": {"temperatures": [300.0], "frames": 24, "interval": 2, "timestep": 2.0, "friction": 0.05,
                 "warmup": 0, "rattle": 0.05, "strain": 0.02, "seed": 0},
    "heldout": {"frames": 8, "seed": 1, "temperatures": None},
    # The quick preset's Hessians at the seed minima off: these tests are about the other stages (a periodic
    # seed gets none anyway); test_hessian_at_minima.py turns them on.
    "labelling": {"batch_size": 4, "commit_interval": 5.0, "hessian_at_minima": {"enabled": False}},
    "training": {"model": {"hidden_dim": 16, "num_interactions": 2, "num_rbf": 8, "cutoff": 3.5},
                 "loss": {"hvp_weight": 0.0},
                 "data": {"batch_size": 4, "val_size": 4, "test_size": 0},
                 "optim": {"lr": 5e-3, "warmup_epochs": 0.5, "ema_decay": 0.9},
                 "run": {"epochs": 6, "num_threads": 1, "max_time": None}},
    "evaluation": {"max_frames": 8, "nve_steps": 20, "teacher_md": False},
    "md": {"steps": 50, "timestep": 1.0, "temperature": 300.0, "dtypes": ["float32", "float64"],
           "structures": None, "seed": 0},
    "onpolicy": {"rounds": 0},  # the offline pipeline (the quick preset runs on-policy rounds)
}


def position_hash(positions) -> str:
    """Identifies a geometry across an extxyz round trip (8 decimals written; compared at 5)."""
    return hashlib.sha1(np.round(np.asarray(positions, float), 5).tobytes()).hexdigest()[:16]


class CountingEMT(EMT):
    """EMT that logs every calculation (pid and geometry hash) to ``log`` and sleeps ``delay`` s first."""

    def __init__(self, log: str, delay: float = 0.0):
        super().__init__()
        self.log, self.delay = log, float(delay)

    def calculate(self, atoms=None, *args, **kwargs):
        time.sleep(self.delay)
        super().calculate(atoms, *args, **kwargs)
        with open(self.log, "a") as fh:  # one short append per call: whole lines even under SIGKILL
            fh.write(f"{os.getpid()} {position_hash(self.atoms.positions)}\n")


def counting_emt(log: str, delay: float = 0.0) -> CountingEMT:
    return CountingEMT(log, delay)


def counting_teacher(log: Path) -> tuple[str, ...]:
    """CLI options of a slow (50 ms per call) EMT that logs every call to ``log``: kill tests count calls."""
    return ("--teacher", "test_distill:counting_emt", "--teacher-option", f"log={log}",
            "--teacher-option", "delay=0.05")


def frames_committed(h5: Path, frames: int):
    """A predicate for ``kill_when``: at least ``frames`` frames of ``h5`` committed (False before it exists)."""
    def ready() -> bool:
        try:
            return pending_frames(h5)[0] >= frames
        except OSError:
            return False

    return ready


@pytest.fixture(scope="module")
def seed_file(tmp_path_factory) -> Path:
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.symbols[0] = "Al"  # Cu3Al: two elements, periodic (stress labels), 4 atoms
    path = tmp_path_factory.mktemp("seeds") / "cu3al.extxyz"
    ase.io.write(path, atoms)
    return path


def recipe_file(tmp_path: Path, name: str = "tiny.yaml", **changes) -> Path:
    raw = json.loads(json.dumps(TINY))
    for dotted, value in changes.items():
        section, *keys = dotted.split(".")
        node = raw[section]
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def stage_records(run: Path) -> dict:
    return json.loads((run / "state.json").read_text())["stages"]


def cli(seed_file, run, recipe, *teacher, extra=()) -> list[str]:
    teacher = teacher or ("--teacher", "emt")
    return [sys.executable, "-m", "mlff_calc", "distill", *teacher, "--structures", str(seed_file),
            "--out", str(run), "--preset", "quick", "--recipe", str(recipe), *extra]


def subprocess_env() -> dict:
    path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def start(cmd: list[str], stderr: Path) -> subprocess.Popen:
    """``cmd`` in the background, stderr to a file (an unread pipe would fill up and block it)."""
    with open(stderr, "wb") as fh:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=fh, env=subprocess_env())


def kill_when(proc: subprocess.Popen, ready, what: str, stderr: Path, timeout: float = 90.0) -> None:
    """SIGKILL ``proc`` as soon as ``ready()``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(0.005)
    if proc.poll() is not None:
        pytest.fail(f"distill ended before it could be killed {what}:\n"
                    + stderr.read_text()[-3000:])
    proc.send_signal(signal.SIGKILL)
    proc.wait()


# ---------------------------------------------------------------------------------------------------------
def test_end_to_end_outputs_summary_and_rerun_skips_everything(tmp_path, seed_file, capsys):
    run = tmp_path / "run"
    result = distill("emt", [seed_file], run, preset="quick", recipe=recipe_file(tmp_path), quiet=True)
    assert result.ran == ALL and result.skipped == []
    for rel in ("student.pt", "recipe.yaml", "seeds.extxyz", "state.json", "summary.json", "report/report.md",
                "report/metrics.json", "report/force_parity.png", "md/md.json", "data/train.h5",
                "data/heldout.h5", "frames/train.extxyz", "frames/heldout.extxyz", "train/last.pt"):
        assert (run / rel).exists(), rel
    s = result.summary
    assert s["frames"] == {"train": 24, "heldout": 8}
    assert 0 < s["force_mae_ev_per_ang"] < 1 and s["energy_mae_ev_per_atom"] is not None
    assert s["speed_ratio"] > 0 and s["student_ms_per_call"] > 0 and s["teacher_ms_per_call"] > 0
    assert set(s["nve"]) == {"float32", "float64"} and all(d["stable"] for d in s["nve"].values())
    assert "MD stability check" in (run / "report/report.md").read_text()
    # Each stage writes only its own section; report.md is assembled from them in stage order.
    sections = [(run / rel).read_text() for rel in ("report/evaluate.md", "md/report.md",
                                                     "vibrations/report.md")]
    assert "MD stability check" not in sections[0] and "MD stability check" in sections[1]
    assert (run / "report/report.md").read_text() == "\n".join(t.rstrip() + "\n" for t in sections)
    # recipe.yaml is complete (every section) and loads back as a recipe.
    used = load_recipe(path=run / "recipe.yaml", base=load_recipe("quick"))
    assert used["training"]["model"]["hidden_dim"] == 16 and used["heldout"]["frames"] == 8
    # The held-out frames come from an independent trajectory: none equals a training frame.
    train = {position_hash(a.positions) for a in ase.io.read(run / "frames/train.extxyz", ":")}
    assert not train & {position_hash(a.positions) for a in ase.io.read(run / "frames/heldout.extxyz", ":")}

    before = stage_records(run)
    code = main(["distill", "--teacher", "emt", "--structures", str(seed_file), "--out", str(run), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert stage_records(run) == before  # nothing re-ran: same timestamps, same run counts
    for needle in ("force MAE vs teacher", "speed", "NVE float32", "NVE float64", "report/report.md"):
        assert needle in out, needle

    # Outputs removed by hand are re-made, with everything downstream of them; nothing else.
    shutil.rmtree(run / "report")
    again = distill("emt", [seed_file], run, quiet=True)
    assert again.ran == ["evaluate", "md"]
    assert "MD stability check" in (run / "report/report.md").read_text()

    # Issue 14.2: a student.pt replaced behind distill's back (e.g. `mlff-calc train --out RUN --overwrite`)
    # is re-evaluated: the summary never shows the old student's metrics beside the new student.
    from mlff_calc import StudentForceField

    student = StudentForceField.load(run / "student.pt")
    with torch.no_grad():
        student.shift.add_(0.5)  # eV/atom: every energy moves, forces stay
    student.save(run / "student.pt")
    replaced = distill("emt", [seed_file], run, quiet=True)
    assert replaced.ran == ["evaluate", "md", "vibrations"]
    assert replaced.summary["energy_mae_ev_per_atom"] > again.summary["energy_mae_ev_per_atom"] + 0.4


def test_kill_during_labelling_resumes_without_redoing_or_losing_anything(tmp_path, seed_file):
    run, log = tmp_path / "run", tmp_path / "teacher_calls.log"
    recipe = recipe_file(tmp_path)
    teacher = counting_teacher(log)
    h5 = run / "data/train.h5"
    labelling_started = frames_committed(h5, 8)  # two committed batches of 4
    proc = start(cli(seed_file, run, recipe, *teacher, extra=["--quiet"]), tmp_path / "stderr.txt")
    kill_when(proc, labelling_started, "during labelling", tmp_path / "stderr.txt")
    records = stage_records(run)
    assert records["sample"]["status"] == "done" and records["label"]["status"] == "running"
    with DatasetReader(h5) as reader:  # committed = compacted into the file + waiting in its journal
        committed = len(reader) + pending_frames(h5)[0]
    assert 8 <= committed < 24
    frames_mtime = (run / "frames/train.extxyz").stat().st_mtime_ns
    calls_before = len(log.read_text().splitlines())

    done = subprocess.run(cli(seed_file, run, recipe, *teacher, extra=["--quiet"]), cwd=ROOT,
                          capture_output=True, env=subprocess_env(), timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    after = stage_records(run)
    for stage in ("sample", "heldout"):  # finished before the kill: not redone
        assert after[stage] == records[stage]
    assert (run / "frames/train.extxyz").stat().st_mtime_ns == frames_mtime
    assert after["label"]["runs"] == 2 and after["label"]["info"]["labelled"] == 24

    # No committed label was recomputed: the resumed run never called the teacher on those geometries.
    frames = ase.io.read(run / "frames/train.extxyz", ":")
    hashes = [position_hash(a.positions) for a in frames]
    resumed_calls = [line.split()[1] for line in log.read_text().splitlines()[calls_before:]]
    assert set(resumed_calls) & set(hashes) == set(hashes[committed:])  # only the frames not committed
    # ... and none was lost: every frame exactly once, in input order, with EMT's own labels.
    with DatasetReader(h5) as reader:
        assert reader.input_index.tolist() == list(range(24))
        for i, atoms in enumerate(frames):
            atoms.calc = EMT()
            np.testing.assert_allclose(reader.frame(i)["forces"], atoms.get_forces(), atol=1e-10)


def test_kill_during_training_continues_the_run(tmp_path, seed_file):
    run = tmp_path / "run"
    recipe = recipe_file(tmp_path, **{"training.run.epochs": 40})
    proc = start(cli(seed_file, run, recipe), tmp_path / "stderr.txt")
    kill_when(proc, lambda: (run / "train/last.pt").exists(), "during training", tmp_path / "stderr.txt")
    records = stage_records(run)
    assert records["train"]["status"] == "running"
    label_mtime = (run / "data/train.h5").stat().st_mtime_ns

    done = subprocess.run(cli(seed_file, run, recipe), cwd=ROOT, capture_output=True, env=subprocess_env(),
                          timeout=120)
    err, out = done.stderr.decode(), done.stdout.decode()
    assert done.returncode == 0, err[-3000:]
    assert "train: train the student: interrupted earlier; resuming" in err
    assert re.search(r"resuming .* after epoch [1-9]", out)  # the trainer continued from last.pt
    after = stage_records(run)
    for stage in ("sample", "heldout", "label", "label_heldout"):
        assert after[stage] == records[stage], stage
    assert (run / "data/train.h5").stat().st_mtime_ns == label_mtime
    assert after["train"]["runs"] == 2 and after["train"]["info"]["epochs"] == 40
    assert len((run / "train/metrics.csv").read_text().splitlines()) == 1 + 40  # every epoch once


def test_changed_settings_rerun_downstream_and_keep_old_labels(tmp_path, seed_file):
    run = tmp_path / "run"
    distill("emt", [seed_file], run, preset="quick", recipe=recipe_file(tmp_path), quiet=True)
    first = stage_records(run)

    # More held-out frames: only the held-out branch and what reads it re-run; the student is kept.
    r = distill("emt", [seed_file], run, recipe=recipe_file(tmp_path, "b.yaml", **{"heldout.frames": 10}),
                quiet=True)
    assert r.ran == ["heldout", "label_heldout", "evaluate", "md"]
    assert stage_records(run)["train"] == first["train"]
    old = list((run / "superseded").glob("*/data/heldout.h5"))
    assert len(old) == 1 and len(DatasetReader(old[0])) == 8  # old labels moved aside, never deleted
    assert len(DatasetReader(run / "data/heldout.h5")) == 10

    # A larger training budget continues the trained student in place (no new sampling or labels).
    r = distill("emt", [seed_file], run, recipe=recipe_file(tmp_path, "c.yaml", **{"heldout.frames": 10,
                                                                                   "training.run.epochs": 8}),
                quiet=True)
    assert r.ran == ["train", "evaluate", "md", "vibrations"]
    assert r.summary["training"]["epochs"] == 8 and not list((run / "superseded").glob("*/train"))

    # A new architecture retrains from scratch; the old run is kept under superseded/.
    r = distill("emt", [seed_file], run, max_time=None,
                recipe=recipe_file(tmp_path, "d.yaml", **{"heldout.frames": 10, "training.run.epochs": 8,
                                                          "training.model.hidden_dim": 8}), quiet=True)
    assert r.ran == ["train", "evaluate", "md", "vibrations"]
    assert len(list((run / "superseded").glob("*/train/last.pt"))) == 1

    # Another teacher is another key for everything that calls it.
    r = distill("test_distill:counting_emt", [seed_file], run, teacher_options={"log": str(tmp_path / "l")},
                quiet=True)
    assert r.ran == ALL


@pytest.mark.parametrize("text, message", [
    ("sampling: {temprature: [300]}", r"unknown key sampling\.temprature"),
    ("md: {steps: 10, stride: 2}", r"unknown key md\.stride"),
    ("training: {model: {hidden: 8}}", r"unknown key training\.model\.hidden"),
    ("training: {optimizer: {lr: 1}}", r"unknown section training\.optimizer"),
    ("evaluate: {max_frames: 3}", r"unknown section 'evaluate'"),
    ("training: {run: {out: elsewhere}}", r"training\.run\.out: set by distill"),
    ("training: {optim: {lr: -1}}", r"training\.optim\.lr: must be > 0"),
    ("heldout: {seed: 0}", r"heldout\.seed: must differ from sampling\.seed"),
    ("md: {dtypes: [float16]}", r"md\.dtypes"),
    ("sampling: {frames: 2.5}", r"sampling\.frames: expected int"),
    ("- just a list", r"expected a mapping"),
    ("training: {run: [{epochs: 2}]}", r"recipe training\.run: expected a mapping of settings, got list"),
    ("md: [{steps: 10}]", r"recipe md: expected a mapping of settings, got list"),  # issue 14.9
])
def test_bad_recipes_are_refused_naming_the_key(tmp_path, seed_file, capsys, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ValueError, match=message):
        distill("emt", [seed_file], tmp_path / "run", recipe=bad)
    assert not (tmp_path / "run").exists()  # refused before anything was created
    code = main(["distill", "--teacher", "emt", "--structures", str(seed_file), "--out", str(tmp_path / "r2"),
                 "--recipe", str(bad)])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("mlff-calc distill: error: ") and len(err.strip().splitlines()) == 1


def test_refuses_foreign_directories_and_bad_input(tmp_path, seed_file):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "important.txt").write_text("not a distill run")
    with pytest.raises(ValueError, match="not empty and has no state.json"):
        distill("emt", [seed_file], foreign, preset="quick")
    with pytest.raises(FileNotFoundError, match="missing.xyz"):
        distill("emt", [tmp_path / "missing.xyz"], tmp_path / "r", preset="quick")
    with pytest.raises(ValueError, match="unknown preset"):
        distill("emt", [seed_file], tmp_path / "r", preset="huge")
    with pytest.raises(ValueError, match="unknown teacher 'orb-v3'"):
        distill("orb-v3", [seed_file], tmp_path / "r", preset="quick")
    assert not (tmp_path / "r").exists()


def test_presets_ship_as_package_data_and_validate():
    for name in ("quick", "standard"):
        recipe = load_recipe(name)
        assert recipe["md"]["steps"] == 2000 and recipe["md"]["timestep"] == 0.5
    assert load_recipe("quick")["training"]["run"]["max_time"] < load_recipe("standard")["training"]["run"][
        "max_time"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    section = pyproject.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    assert '"recipes/*.yaml"' in section  # presets ship in wheels, not only in editable installs
