"""On-policy frame selection (mlff_calc.workflow.onpolicy): score order, diversity, no near-duplicates,
descriptor invariances, bond checks and the scorer fallbacks (uncertainty -> committee -> diversity)."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

from mlff_calc.errors import InputError
from mlff_calc.workflow import onpolicy
from mlff_calc.workflow.onpolicy import (LAST_FRAMES, bonds_intact, cut_at_failure_score, descriptors,
                                        make_scorer, select_frames)


def rattled(base: Atoms, n: int, std: float, seed: int = 0) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = base.copy()
        a.positions += rng.normal(0, std, a.positions.shape)
        out.append(a)
    return out


def test_descriptor_is_invariant_to_rotation_translation_and_permutation():
    a = rattled(molecule("CH3CH2OH"), 1, 0.05)[0]
    b = a.copy()
    b.rotate(37, "x", center="COM")
    b.translate([1.0, -2.0, 3.0])
    perm = np.random.default_rng(1).permutation(len(b))
    b = b[perm]
    x = descriptors([a, b])
    assert np.allclose(x[0], x[1], atol=1e-10)
    c = rattled(a, 1, 0.2, seed=3)[0]
    assert np.linalg.norm(descriptors([a, c])[0] - descriptors([a, c])[1]) > 1e-3


def test_highest_score_first_and_no_near_identical_pair():
    base = rattled(molecule("CH3CH2OH"), 6, 0.1, seed=2)
    frames = base + [f.copy() for f in base]  # every frame twice
    scores = np.arange(12, dtype=float)  # the copies score higher
    picked = select_frames(frames, scores, 12, pool_factor=1)
    assert picked[0] == 11
    x = descriptors([frames[i] for i in picked])
    d = np.linalg.norm(x[:, None] - x[None], axis=-1) + np.eye(len(picked)) * 1e9
    assert d.min() > 1e-6, "two identical frames were both selected"
    assert len(picked) == 6  # only the six distinct geometries


def test_pool_limits_to_top_scored_and_must_consider_joins_it():
    frames = rattled(molecule("CH3CH2OH"), 30, 0.1, seed=4)
    scores = np.linspace(0, 1, 30)
    picked = select_frames(frames, scores, 3, pool_factor=2)
    assert set(picked) <= set(range(24, 30))
    picked = select_frames(frames, scores, 3, pool_factor=1, must_consider=[0])
    assert len(picked) == 3 and set(picked) <= {0, 27, 28, 29}
    far = [f.copy() for f in frames]
    far[0].positions *= 1.3  # now frame 0 is far from everything: diversity must take it from the pool
    assert 0 in select_frames(far, scores, 2, pool_factor=1, must_consider=[0])


def test_diversity_alone_spreads_over_distinct_geometries():
    small = rattled(molecule("CH3CH2OH"), 10, 0.01, seed=5)  # a tight cluster
    big = rattled(molecule("CH3CH2OH"), 3, 0.25, seed=6)  # three far-away frames
    picked = select_frames(small + big, None, 4)
    assert sum(i >= 10 for i in picked) >= 3


def test_bad_arguments_are_refused():
    frames = rattled(molecule("H2O"), 3, 0.05)
    with pytest.raises(InputError, match="scores of shape"):
        select_frames(frames, np.zeros(2), 1)
    with pytest.raises(InputError):
        select_frames(frames, None, -1)
    assert select_frames([], None, 3) == [] and select_frames(frames, None, 0) == []


def test_non_finite_score_is_picked_first():
    frames = rattled(molecule("H2O"), 5, 0.05)
    assert select_frames(frames, np.array([0.1, np.nan, 0.3, 0.2, 0.0]), 1) == [1]


def test_bonds_intact_finds_the_first_broken_frame():
    ref = molecule("CH3CHO")
    frames = rattled(ref, 3, 0.01)
    broken = ref.copy()
    broken.positions[0] += [4.0, 0, 0]
    assert bonds_intact(frames, ref) is None
    assert bonds_intact(frames + [broken] + frames, ref) == 3
    periodic = ref.copy()
    periodic.cell, periodic.pbc = [10, 10, 10], True
    assert bonds_intact([broken], periodic) is None


def trajectories(scores_per_run: list[list[float]], interval: int = 10):
    """Candidates, scores and runs as student_md_candidates + a scorer give them."""
    frames, scores, runs = [], [], []
    for t, run_scores in enumerate(scores_per_run):
        for k, score in enumerate(run_scores):
            a = molecule("H2O")
            a.info = {"seed_index": 0, "temperature": 300.0 + t, "step": (k + 1) * interval,
                      "trajectory": t, "pre_failure": False}
            frames.append(a)
            scores.append(score)
        runs.append({"stable": True, "steps_done": interval * len(run_scores), "reason": None})
    return frames, np.array(scores), runs


def test_failure_score_ends_each_trajectory_at_its_first_frame_above_it():
    frames, scores, runs = trajectories([[0.1, 0.2, 0.3],            # never above: untouched
                                         [0.1, 0.5, 9.0, 50.0, 0.2],  # ends at step 30 (9.0 kept)
                                         [np.nan, 0.1]])              # a non-finite score is a failure
    kept, kept_scores, new_runs = cut_at_failure_score(frames, scores, runs, 1.0)
    steps = [(a.info["trajectory"], a.info["step"]) for a in kept]
    assert steps == [(0, 10), (0, 20), (0, 30), (1, 10), (1, 20), (1, 30), (2, 10)]
    assert kept_scores.tolist()[:6] == [0.1, 0.2, 0.3, 0.1, 0.5, 9.0] and np.isnan(kept_scores[6])
    pre = [a.info["pre_failure"] for a in kept]
    assert pre == [False] * 3 + [False] + [True] * LAST_FRAMES + [True]
    assert new_runs[0] == runs[0] and runs[1]["stable"]  # the inputs are left alone
    assert not frames[4].info["pre_failure"]
    assert new_runs[1]["stable"] is False and new_runs[1]["steps_done"] == 30
    assert "9 eV/Å above failure_score 1 at step 30" in new_runs[1]["reason"]
    assert new_runs[2]["steps_done"] == 10 and "nan" in new_runs[2]["reason"]


def test_failure_score_and_an_earlier_or_same_step_failure():
    # Both trajectories broke a bond at step 30 (their frames end there); the first one's score crosses
    # at that same frame (the bond reason stays), the second's already at step 20 (the score's reason wins).
    frames, scores, runs = trajectories([[0.1, 0.2, 5.0], [0.1, 5.0, 0.3]])
    for run in runs:
        run.update(stable=False, steps_done=30, reason="bonds changed at step 30")
    kept, _, new_runs = cut_at_failure_score(frames, scores, runs, 1.0)
    assert new_runs[0]["reason"] == "bonds changed at step 30"
    assert new_runs[1]["steps_done"] == 20 and "failure_score" in new_runs[1]["reason"]
    assert [a.info["step"] for a in kept if a.info["trajectory"] == 1] == [10, 20]
    with pytest.raises(InputError, match="scores of shape"):
        cut_at_failure_score(frames, scores[:2], runs, 1.0)


class FakeUncertain:
    """A calculator that reports forces_uncertainty = |x| of each atom, as the `unc` branch will."""

    def __init__(self):
        self.results = {}

    def calculate(self, atoms, properties):
        self.results = {"energy": 0.0, "forces": np.zeros((len(atoms), 3)),
                        "forces_uncertainty": np.abs(atoms.positions[:, 0])}


def test_scorer_uses_the_uncertainty_when_the_calculator_has_it(monkeypatch):
    from mlff_calc import calculator

    def fake(path, device="cpu", uncertainty=False, **kw):
        if not uncertainty:
            raise AssertionError("uncertainty=True expected")
        return FakeUncertain()

    monkeypatch.setattr(calculator.StudentCalculator, "from_checkpoint", staticmethod(fake))
    probe = molecule("H2O")
    name, scorer = make_scorer("auto", "s.pt", None, probe)
    assert name == "uncertainty"
    frames = [probe.copy(), probe.copy()]
    frames[1].positions[0, 0] = 7.0
    assert scorer(frames)[1] == pytest.approx(7.0)


@pytest.mark.parametrize("error", [TypeError("unexpected keyword 'uncertainty'"),
                                   InputError("checkpoint has no uncertainty calibration")])
def test_scorer_falls_back_without_uncertainty(monkeypatch, error):
    from mlff_calc import calculator

    def fake(path, device="cpu", **kw):
        if kw.get("uncertainty"):
            raise error
        return "calc"

    monkeypatch.setattr(calculator.StudentCalculator, "from_checkpoint", staticmethod(fake))
    monkeypatch.setattr(onpolicy, "committee_scorer", lambda a, b, device="cpu": ("committee of", a, b))
    probe = molecule("H2O")
    assert make_scorer("auto", "s.pt", None, probe) == ("diversity", None)
    assert make_scorer("auto", "s.pt", "p.pt", probe) == ("committee", ("committee of", "s.pt", "p.pt"))
    with pytest.warns(UserWarning, match="no calibrated uncertainty"):
        assert make_scorer("uncertainty", "s.pt", None, probe)[0] == "diversity"
    assert make_scorer("diversity", "s.pt", "p.pt", probe) == ("diversity", None)
    with pytest.raises(InputError, match="onpolicy.scorer"):
        make_scorer("bogus", "s.pt", None, probe)


def test_ase_swallowing_the_keyword_is_not_mistaken_for_uncertainty(monkeypatch):
    """ASE's Calculator stores unknown keywords as parameters: no forces_uncertainty -> no scorer."""
    from mlff_calc import calculator

    class Plain(FakeUncertain):
        def calculate(self, atoms, properties):
            self.results = {"energy": 0.0, "forces": np.zeros((len(atoms), 3))}

    monkeypatch.setattr(calculator.StudentCalculator, "from_checkpoint",
                        staticmethod(lambda path, device="cpu", **kw: Plain()))
    assert make_scorer("auto", "s.pt", None, molecule("H2O")) == ("diversity", None)
