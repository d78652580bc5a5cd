"""``distill`` with on-policy rounds (recipe ``onpolicy:``), EMT teacher on the tiny Cu3Al cell of
test_distill: the per-round table and records, rounds 0 = the offline run unchanged, raising ``rounds``
continues in place, the teacher-call budget, and a SIGKILL during a round's labelling resumes without
relabelling or retraining the finished rounds."""

from collections import Counter

import ase.io
import pytest
import yaml
from test_distill import (ALL, cli, counting_teacher, frames_committed, kill_when, position_hash,  # noqa: F401
                          recipe_file, seed_file, stage_records, start)

from mlff_calc.data.hdf5 import DatasetReader
from mlff_calc.pipeline import distill, format_summary

ROUNDS = {"rounds": 2, "md_steps": 40, "candidates": 8, "frames": 6, "timestep": 2.0,
          "temperature_factors": [1.0, 2.0], "train_epochs": 3, "train_max_time": None}


def onpolicy_recipe(tmp_path, name="onpolicy.yaml", **changes):
    path = recipe_file(tmp_path, name)
    raw = yaml.safe_load(path.read_text())
    raw["onpolicy"] = {**ROUNDS, **changes}
    path.write_text(yaml.safe_dump(raw))
    return path


def rounds_of(run) -> dict:
    return {k: v for k, v in stage_records(run).items() if k.startswith("onpolicy.round_")}


def test_rounds_table_records_and_continuing(tmp_path, seed_file):  # noqa: F811
    run = tmp_path / "run"
    offline = distill("emt", [seed_file], run, preset="quick", recipe=recipe_file(tmp_path), quiet=True)
    assert offline.ran == ALL and "onpolicy" not in stage_records(run)
    # An explicit `rounds: 0` is the offline run: nothing re-runs, no record appears.
    zero = distill("emt", [seed_file], run, recipe=onpolicy_recipe(tmp_path, rounds=0), quiet=True)
    assert zero.ran == [] and "onpolicy" not in stage_records(run)

    two = distill("emt", [seed_file], run, recipe=onpolicy_recipe(tmp_path), quiet=True)
    assert two.ran == ["onpolicy", "evaluate", "md", "vibrations"]  # the first student is reused
    records = rounds_of(run)
    assert sorted(records) == ["onpolicy.round_00", "onpolicy.round_01", "onpolicy.round_02"]
    info = stage_records(run)["onpolicy"]["info"]
    rows = info["rounds"]
    assert [r["teacher_calls"] for r in rows[1:]] == [6, 6]
    assert rows[2]["teacher_calls_total"] == rows[0]["teacher_calls"] + 12
    # Every student.pt the trainer writes is calibrated, so "auto" scores by the student's own
    # uncertainty (the committee and diversity fallbacks are covered in test_onpolicy_select).
    assert rows[1]["scorer"] == "uncertainty" and rows[2]["scorer"] == "uncertainty"
    assert rows[2]["max_score"] > 0 and all(r["md_runs"] == 2 for r in rows[1:])
    with DatasetReader(run / "onpolicy/round_02/train.h5") as reader:  # every label so far
        assert len(reader) == 24 + 6 + 6
    # student.pt is the last round's student; the first one stays in train/.
    assert (run / "student.pt").read_bytes() == (run / "onpolicy/round_02/train/student.pt").read_bytes()
    assert (run / "student.pt").read_bytes() != (run / "train/student.pt").read_bytes()
    report = (run / "report/report.md").read_text()
    assert "On-policy rounds" in report and "| 2 | 6 (" in report
    assert two.summary["onpolicy"]["teacher_calls"] == rows[2]["teacher_calls_total"]
    printed = format_summary(two.summary)
    assert "on-policy             " in printed
    # The training line says what the rounds added to the first student's training.
    assert two.summary["onpolicy"]["rounds"] == 2 and two.summary["onpolicy"]["labelled"] == 12
    round_s = sum(r["train"]["train_time_s"] for r in rows[1:])
    assert f"then 12 frames and {round_s:.0f} s of warm-start training in 2 on-policy round(s)" in printed
    stages = sum(t for name, t in two.summary["stage_seconds"].items() if "." not in name)
    assert f"(stages {stages / 60:.1f} min;" in printed  # the rounds are not counted twice
    # The selected frames came from the student's MD, not from the teacher's sampling.
    picked = {position_hash(a.positions) for a in ase.io.read(run / "onpolicy/round_01/selected.extxyz", ":")}
    assert len(picked) == 6
    assert not picked & {position_hash(a.positions) for a in ase.io.read(run / "frames/train.extxyz", ":")}

    # More rounds continue in place: rounds 0..2 are not redone.
    three = distill("emt", [seed_file], run, recipe=onpolicy_recipe(tmp_path, rounds=3), quiet=True)
    assert three.ran == ["onpolicy", "evaluate", "md", "vibrations"]
    after = rounds_of(run)
    assert all(after[k] == records[k] for k in records) and after["onpolicy.round_03"]["status"] == "done"

    # Back to 0 rounds: the offline student is the run's student again, round outputs are kept aside.
    back = distill("emt", [seed_file], run, recipe=onpolicy_recipe(tmp_path, rounds=0), quiet=True)
    assert back.ran == ["evaluate", "md", "vibrations"] and not rounds_of(run)
    assert (run / "student.pt").read_bytes() == (run / "train/student.pt").read_bytes()
    assert list((run / "superseded").glob("*/onpolicy/round_03/labels.h5"))


def test_teacher_call_budget_stops_the_rounds(tmp_path, seed_file):  # noqa: F811
    run = tmp_path / "run"
    first = distill("emt", [seed_file], run, preset="quick", recipe=recipe_file(tmp_path), quiet=True)
    del first
    initial = 24 + 8 * 2 + 1  # labels + teacher MD steps planned (8 MD frames x interval 2, plus the start)
    recipe = onpolicy_recipe(tmp_path, rounds=4, teacher_budget=initial + 8)
    res = distill("emt", [seed_file], run, recipe=recipe, quiet=True)
    rows = stage_records(run)["onpolicy"]["info"]["rounds"]
    assert rows[0]["teacher_calls"] == initial
    assert [r["teacher_calls"] for r in rows[1:]] == [6, 2]  # the last round gets what is left
    assert rows[-1]["teacher_calls_total"] == initial + 8
    assert "budget" in res.summary["onpolicy"]["stop_reason"]


def test_kill_during_a_round_resumes_without_relabelling_or_retraining(tmp_path, seed_file):  # noqa: F811
    run, log = tmp_path / "run", tmp_path / "teacher_calls.log"
    recipe = onpolicy_recipe(tmp_path)
    teacher = counting_teacher(log)
    labels = run / "onpolicy/round_02/labels.h5"
    round_two_labelling = frames_committed(labels, 4)  # one committed batch of 4 of its 6 frames
    proc = start(cli(seed_file, run, recipe, *teacher, extra=["--quiet"]), tmp_path / "stderr.txt")
    kill_when(proc, round_two_labelling, "during round 2's labelling", tmp_path / "stderr.txt", timeout=240)
    records = rounds_of(run)
    assert records["onpolicy.round_01"]["status"] == "done"
    assert records["onpolicy.round_02"]["status"] == "running"
    round1_student = (run / "onpolicy/round_01/train/student.pt").stat().st_mtime_ns
    selected2 = (run / "onpolicy/round_02/selected.extxyz").read_bytes()

    proc = start(cli(seed_file, run, recipe, *teacher, extra=["--quiet"]), tmp_path / "stderr2.txt")
    assert proc.wait(timeout=240) == 0, (tmp_path / "stderr2.txt").read_text()[-3000:]
    after = rounds_of(run)
    assert after["onpolicy.round_01"] == records["onpolicy.round_01"]  # not redone: same record
    assert after["onpolicy.round_02"]["status"] == "done" and after["onpolicy.round_02"]["runs"] == 2
    assert (run / "onpolicy/round_01/train/student.pt").stat().st_mtime_ns == round1_student
    assert (run / "onpolicy/round_02/selected.extxyz").read_bytes() == selected2  # the same selection
    calls = Counter(line.split()[1] for line in log.read_text().splitlines())
    for r in (1, 2):
        frames = ase.io.read(run / f"onpolicy/round_{r:02d}/selected.extxyz", ":")
        # Committed labels are never recomputed; at most the 2 not yet committed at the kill are.
        twice = [a for a in frames if calls[position_hash(a.positions)] > 1]
        assert len(twice) <= (0 if r == 1 else 2), f"round {r}: {len(twice)} frames labelled twice"
        with DatasetReader(run / f"onpolicy/round_{r:02d}/labels.h5") as reader:
            assert len(reader) == 6
    info = stage_records(run)["onpolicy"]["info"]
    assert [r["round"] for r in info["rounds"]] == [0, 1, 2]


@pytest.mark.parametrize("bad, message", [({"rounds": -1}, "onpolicy.rounds"),
                                          ({"scorer": "oracle"}, "onpolicy.scorer"),
                                          ({"teacher_budget": 0}, "onpolicy.teacher_budget"),
                                          ({"train_max_time": []}, "onpolicy.train_max_time"),
                                          ({"train_max_time": [30, -1]}, "onpolicy.train_max_time"),
                                          ({"train_max_time": "long"}, "onpolicy.train_max_time"),
                                          ({"train_lr": 0}, "onpolicy.train_lr"),
                                          ({"failure_score": -1.0}, "onpolicy.failure_score"),
                                          ({"bogus": 1}, "bogus")])
def test_bad_onpolicy_recipes_are_refused(tmp_path, seed_file, bad, message):  # noqa: F811
    with pytest.raises(ValueError, match=message):
        distill("emt", [seed_file], tmp_path / "run", preset="quick", recipe=onpolicy_recipe(tmp_path, **bad),
                quiet=True)
    assert not (tmp_path / "run" / "state.json").exists()


def test_per_round_training_budgets_and_warm_start_lr(tmp_path, seed_file, monkeypatch):  # noqa: F811
    """``train_max_time`` as a list gives each round its own budget (the last entry repeats) and
    ``train_lr`` the warm starts' peak learning rate; the first student keeps ``training:``'s."""
    import mlff_calc.training as training
    from mlff_calc.pipeline.rounds import round_max_time

    assert [round_max_time([5.0, 9.0], r) for r in (1, 2, 3)] == [5.0, 9.0, 9.0]
    assert round_max_time(7.0, 4) == 7.0 and round_max_time(None, 1) is None
    seen, real = [], training.train

    def spy(config, **kwargs):
        seen.append((config.run.max_time, config.optim.lr, "init_from" in kwargs))
        return real(config, **kwargs)

    monkeypatch.setattr(training, "train", spy)
    run = tmp_path / "run"
    distill("emt", [seed_file], run, recipe=onpolicy_recipe(tmp_path, rounds=3, train_max_time=[500.0, 900.0],
                                                            train_lr=2.5e-4), quiet=True)
    first_lr = yaml.safe_load((run / "recipe.yaml").read_text())["training"]["optim"]["lr"]
    rounds = [x for x in seen if x[2]]
    assert [x[:2] for x in rounds] == [(500.0, 2.5e-4), (900.0, 2.5e-4), (900.0, 2.5e-4)]
    assert [x[1] for x in seen if not x[2]] == [first_lr] and first_lr != 2.5e-4


def test_failure_score_ends_student_trajectories_and_counts_them_failed(tmp_path, seed_file):  # noqa: F811
    """A ``failure_score`` below every score ends each student trajectory at its first candidate: one
    candidate per trajectory, every run failed with the score named, and those frames are labelled."""
    run = tmp_path / "run"
    distill("emt", [seed_file], run, recipe=onpolicy_recipe(tmp_path, rounds=1, failure_score=1e-9), quiet=True)
    row = stage_records(run)["onpolicy"]["info"]["rounds"][1]
    meta = yaml.safe_load((run / "onpolicy/round_01/select.json").read_text())
    assert row["md_runs"] == 2 and row["md_stable"] == 0 and row["candidates"] == 2
    assert all("above failure_score 1e-09" in f["reason"] for f in row["md_failures"])
    assert meta["pre_failure_candidates"] == 2 and row["teacher_calls"] == row["selected"] == 2
    assert meta["max_score"] > 1e-9
    steps = sorted(a.info["step"] for a in ase.io.read(run / "onpolicy/round_01/selected.extxyz", ":"))
    assert steps == [5, 5]  # md_steps 40 / candidates 8: the first candidate of each trajectory
