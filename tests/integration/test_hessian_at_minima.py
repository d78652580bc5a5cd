"""``labelling.hessian_at_minima``: the teacher's full Hessian at each molecular seed's minimum (EMT).

The labels (relaxed geometry, 3N Cartesian probes, H e_k equal to a finite-difference Hessian), the
periodic seed skipped, resuming without relabelling (also after an interruption), the training split
(those frames train, repeated, never validate), the distill stage and its records, and bad values."""

import json

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

from mlff_calc.data.hdf5 import DatasetReader, write_frames
from mlff_calc.evaluation.vibrations import harmonic_frequencies, hessian
from mlff_calc.pipeline import distill, load_recipe
from mlff_calc.training.config import config_from_dict
from mlff_calc.training.data import load_training_data, split_frames
from mlff_calc.workflow.minima import label_minima

from test_distill import TINY

SPEC = {"name": "emt", "options": {}}


def seeds():
    """Two molecules around a periodic cell (skipped): seed indices 0 and 2 get Hessians."""
    return [molecule("CH4"), bulk("Cu", "fcc", a=3.6, cubic=True), molecule("H2O")]


class Counting(EMT):
    """EMT that counts its calculations and raises ``KeyboardInterrupt`` (a kill) at call ``stop_at``."""

    def __init__(self, stop_at: int | None = None):
        super().__init__()
        self.calls, self.stop_at = 0, stop_at

    def calculate(self, *args, **kwargs):
        self.calls += 1
        if self.stop_at is not None and self.calls >= self.stop_at:
            raise KeyboardInterrupt
        super().calculate(*args, **kwargs)


def test_writes_the_full_hessian_at_each_molecular_minimum(tmp_path):
    out = tmp_path / "minima.h5"
    logged = []
    rep = label_minima(seeds(), out, EMT, SPEC, epsilon=0.005, log=logged.append)
    assert rep.labelled == rep.labelled_now == 2 and not rep.failed
    assert rep.skipped == [(1, "periodic: phonons, not molecular vibrations (not supported)")]
    with DatasetReader(out) as reader:
        assert reader.input_index.tolist() == [0, 2] and reader.n_probes.tolist() == [15, 9]
        assert reader.provenance["minima"]["epsilon"] == 0.005
        for row, atoms in ((0, molecule("CH4")), (1, molecule("H2O"))):
            frame, relaxed = reader.frame(row), reader.atoms(row)
            n = len(atoms)
            assert np.linalg.norm(frame["forces"], axis=1).max() < 1e-3  # at the teacher's minimum
            assert np.array_equal(frame["hvp"]["probes"].reshape(3 * n, 3 * n), np.eye(3 * n))
            h = hessian(relaxed, EMT(), delta=0.005)  # symmetrised FD Hessian at the stored geometry
            stored = frame["hvp"]["values"].reshape(3 * n, 3 * n).T
            np.testing.assert_allclose(0.5 * (stored + stored.T), h, atol=1e-8)
            # the same minimum the vibrations stage finds (same relaxation)
            ref = harmonic_frequencies(atoms, EMT())
            np.testing.assert_allclose(relaxed.positions, ref.atoms.positions, atol=1e-10)
    assert sum("its Hessian along" in line for line in logged) == 2


def test_mode_probes_weigh_each_mode_by_its_frequency_error():
    """``probes: modes``: values are H p exactly, no rigid-body motion, and to first order the error of
    H along a probe's own direction is the frequency error of its mode, times one common factor."""
    from mlff_calc.evaluation.vibrations import _TO_INVCM, internal_frequencies, relax
    from mlff_calc.workflow.minima import MIN_FREQUENCY, mode_probes

    atoms, _ = relax(molecule("CH3OH"), EMT())
    h = hessian(atoms, EMT())
    probes, values = mode_probes(atoms, h)
    n = len(atoms)
    assert probes.shape == values.shape == (3 * n - 6, n, 3)
    p = probes.reshape(len(probes), -1)
    np.testing.assert_allclose(values.reshape(len(values), -1), p @ h, atol=1e-12)  # h symmetric
    masses = atoms.get_masses()
    assert np.abs(np.einsum("kia,i->ka", probes, masses)).max() < 1e-10  # the centre of mass stays
    assert np.isclose(np.sqrt(np.mean(np.sum(p**2, axis=1))), 1.0)
    rng = np.random.default_rng(0)
    dh = rng.normal(size=h.shape) * 1e-4
    dh = dh + dh.T
    freqs = internal_frequencies(atoms, h)  # EMT's methanol: two imaginary and one soft mode
    exact = internal_frequencies(atoms, h + dh) - freqs
    along = np.einsum("ka,ab,kb->k", p / np.linalg.norm(p, axis=1)[:, None], dh, p) * _TO_INVCM
    ratio = exact / along
    above, soft = freqs >= MIN_FREQUENCY, (freqs > 0) & (freqs < MIN_FREQUENCY)
    assert above.sum() >= 8 and soft.sum() >= 1
    # one common factor: every mode weighs its own frequency error alike ...
    assert np.allclose(ratio[above], np.median(ratio[above]), rtol=0.02), ratio
    assert (ratio[soft] > 1.2 * np.median(ratio[above])).all()  # ... but modes below the floor less


def test_resume_labels_only_unfinished_seeds(tmp_path):
    out = tmp_path / "minima.h5"
    first = Counting(stop_at=60)  # CH4 takes ~36 calls: interrupted during H2O
    with pytest.raises(KeyboardInterrupt):
        label_minima(seeds(), out, lambda: first, SPEC, epsilon=0.005)
    with DatasetReader(out) as reader:
        assert reader.input_index.tolist() == [0]  # the finished seed is committed
    again = Counting()
    rep = label_minima(seeds(), out, lambda: again, SPEC, epsilon=0.005)
    assert rep.labelled_now == 1 and rep.labelled == 2
    alone = Counting()
    label_minima([molecule("H2O")], tmp_path / "h2o.h5", lambda: alone, SPEC, epsilon=0.005)
    assert again.calls == alone.calls  # H2O only: CH4 was not relabelled
    built = []
    rep = label_minima(seeds(), out, lambda: built.append(1) or EMT(), SPEC, epsilon=0.005)
    assert rep.labelled_now == 0 and rep.labelled == 2 and not built  # nothing to do: no teacher built
    with pytest.raises(ValueError, match="other seeds, settings or teacher"):
        label_minima(seeds(), out, EMT, SPEC, epsilon=0.01)
    with pytest.raises(ValueError, match=r"epsilon must be in \(0, 0.1\]"):
        label_minima(seeds(), tmp_path / "x.h5", EMT, SPEC, epsilon=0.0)


def test_teacher_failure_is_recorded_and_not_retried(tmp_path):
    class Broken(EMT):
        def calculate(self, *args, **kwargs):
            raise RuntimeError("SCF did not converge")

    rep = label_minima([molecule("H2O")], tmp_path / "m.h5", Broken, SPEC, epsilon=0.005)
    assert rep.labelled == 0 and "SCF did not converge" in rep.failed[0]
    built = []
    rep = label_minima([molecule("H2O")], tmp_path / "m.h5", lambda: built.append(1) or EMT(), SPEC,
                       epsilon=0.005)
    assert rep.labelled == 0 and 0 in rep.failed and not built


def _training_config(main, extra, out, **data):
    return config_from_dict({"model": {"hidden_dim": 8, "num_interactions": 1, "num_rbf": 4, "cutoff": 3.0},
                             "data": {"path": str(main), "train_only": str(extra), "batch_size": 4,
                                      "val_size": 3, "test_size": 2, **data},
                             "loss": {"hvp_weight": 1.0},
                             "run": {"out": str(out), "epochs": 2, "quiet": True, "num_threads": 1}})


def _md_frames(n):
    rng = np.random.default_rng(0)
    frames = []
    for i in range(n):
        atoms = molecule("H2O")
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        atoms.calc = EMT()
        frames.append({"atomic_numbers": atoms.numbers, "positions": atoms.positions, "cell": np.zeros((3, 3)),
                       "pbc": atoms.pbc, "energy": atoms.get_potential_energy(), "forces": atoms.get_forces(),
                       "stress": None, "input_index": i})
    return frames


def test_train_only_frames_train_repeated_and_never_validate(tmp_path):
    import torch

    from mlff_calc.training import train

    main = tmp_path / "train.h5"
    write_frames(main, _md_frames(20), SPEC, {})
    extra = tmp_path / "minima.h5"
    label_minima([molecule("H2O"), molecule("CH4")], extra, EMT, SPEC, epsilon=0.005)
    data = load_training_data(_training_config(main, extra, tmp_path / "r", train_only_repeat=4),
                              torch.float64)
    train_idx, val, test = split_frames(20, 3, 2)
    assert np.array_equal(data.val, val) and np.array_equal(data.test, test)  # the split is unchanged
    assert data.train[:len(train_idx)].tolist() == train_idx.tolist()
    assert sorted(data.train[len(train_idx):].tolist()) == [20] * 4 + [21] * 4
    assert data.dataset.max_probes == 15 and len(data.dataset) == 22
    item = data.dataset[21]  # CH4 at its minimum: 15 probes; an MD frame: padded, none
    assert item["n_probes"].item() == 15 and data.dataset[0]["n_probes"].item() == 0
    assert data.summary["train_only"]["n_frames"] == 2 and data.summary["hvp_frames"] == 2
    assert data.elements == [1, 6, 8]
    result = train(_training_config(main, extra, tmp_path / "r", train_only_repeat=4))
    assert result.epochs == 2 and np.isfinite(result.val_metrics["force_mae_ev_per_ang"])
    # The reference refit at the end of training reads the joined dataset, each frame once.
    from mlff_calc import StudentForceField

    refit = StudentForceField.load(result.checkpoint).metadata["reference_refit"]
    assert refit["frames"] == len(train_idx) + 2 and np.isfinite(refit["energy_mae_ev_per_atom_after"])

    # Bad values and files: clear errors naming the setting.
    with pytest.raises(ValueError, match=r"data\.train_only_repeat: must be >= 1"):
        _training_config(main, extra, tmp_path / "r", train_only_repeat=0)
    other = tmp_path / "other.h5"
    write_frames(other, _md_frames(2), {"name": "gfn2-xtb", "options": {}}, {})
    with pytest.raises(ValueError, match="from teacher"):
        load_training_data(_training_config(main, other, tmp_path / "r2"), torch.float64)
    empty = tmp_path / "empty.h5"
    write_frames(empty, [], SPEC, {})
    with pytest.raises(ValueError, match="holds no frames"):
        load_training_data(_training_config(main, empty, tmp_path / "r3"), torch.float64)


def test_recipe_values_are_checked_naming_the_key():
    assert load_recipe("standard")["labelling"]["hessian_at_minima"]["enabled"] is False
    for key, value, message in (("copies", 0, r"hessian_at_minima\.copies: must be >= 1"),
                                ("epsilon", 0.5, r"hessian_at_minima\.epsilon: must be in \(0, 0\.1\]"),
                                ("probes", "random", r"hessian_at_minima\.probes: must be one of cartesian"),
                                ("enabled", "yes", r"hessian_at_minima\.enabled: expected bool")):
        with pytest.raises(ValueError, match=message):
            load_recipe("quick", overrides={f"labelling.hessian_at_minima.{key}": value})
    with pytest.raises(ValueError, match=r"training\.data\.train_only: set by distill"):
        load_recipe("quick", overrides={"training.data.train_only": "x.h5"})


def recipe(tmp_path, name, enabled=True, copies=3):
    import yaml

    from mlff_calc.pipeline.recipe import merge

    raw = merge(TINY, {"labelling": {"hessian_at_minima": {"enabled": enabled, "copies": copies,
                                                           "epsilon": 0.005}},
                       "training": {"loss": {"hvp_weight": 1.0}}})
    (tmp_path / name).write_text(yaml.safe_dump(raw))
    return tmp_path / name


@pytest.mark.slow
def test_distill_stage_records_resumes_and_feeds_training(tmp_path):
    run = tmp_path / "run"
    r = distill("emt", seeds(), run, preset="quick", recipe=recipe(tmp_path, "a.yaml"), quiet=True)
    assert "label_minima" in r.ran and r.ran.index("label_minima") < r.ran.index("train")
    state = json.loads((run / "state.json").read_text())["stages"]
    info = state["label_minima"]["info"]
    assert info["labelled"] == 2 and [s["seed"] for s in info["skipped"]] == [1]
    cfg = (run / "train/config.yaml").read_text()
    assert f"train_only: {run / 'data/minima.h5'}" in cfg and "train_only_repeat: 3" in cfg
    vib = json.loads((run / "vibrations/vibrations.json").read_text())
    assert [row["teacher_from"] for row in vib["per_seed"]] == ["data/minima.h5"] * 2
    assert "in-sample" in (run / "report/report.md").read_text()

    # A re-run skips everything; more copies retrain the student but keep the Hessians.
    assert distill("emt", seeds(), run, quiet=True).ran == []
    r = distill("emt", seeds(), run, recipe=recipe(tmp_path, "b.yaml", copies=5), quiet=True)
    assert r.ran == ["train", "evaluate", "md", "vibrations"]
    # Off again: no such stage, and the student is trained on the MD frames alone.
    r = distill("emt", seeds(), run, recipe=recipe(tmp_path, "c.yaml", enabled=False), quiet=True)
    assert "label_minima" not in r.ran and "train" in r.ran
    assert "train_only: ''" in (run / "train/config.yaml").read_text()


def test_train_only_frames_are_batched_among_themselves():
    from mlff_calc.training.data import GroupedBatches

    group = np.arange(20, 26)  # 6 train-only positions among 26, batches of 4
    batches = list(GroupedBatches(26, group, 4, seed=0))
    assert sorted(i for b in batches for i in b) == list(range(26))  # each position once per epoch
    assert all(set(b) <= set(group.tolist()) or not set(b) & set(group.tolist()) for b in batches)
    assert sum(bool(set(b) & set(group.tolist())) for b in batches) == 2  # ceil(6 / 4): as few as possible
    assert len(batches) == len(GroupedBatches(26, group, 4, seed=0)) == 7
    again, other = GroupedBatches(26, group, 4, seed=0), GroupedBatches(26, group, 4, seed=0)
    other.set_epoch(1)
    assert list(again) == batches and list(other) != batches  # a function of (seed, epoch) alone
    ranks = [list(GroupedBatches(26, group, 4, seed=0, rank=r, world=3)) for r in range(3)]
    assert [len(r) for r in ranks] == [3, 3, 3]  # 7 batches padded to 9: every process steps alike


@pytest.mark.parametrize("probes", ["cartesian", "modes"])
def test_vibrations_stage_reads_the_teacher_side_back_unchanged(tmp_path, probes):
    """The teacher's frequencies from data/minima.h5 are those the vibrations stage would compute."""
    from types import SimpleNamespace

    from mlff_calc.data.structures import fingerprint
    from mlff_calc.evaluation.vibrations import DELTA, FMAX
    from mlff_calc.pipeline.minima import FILE, teacher_frequencies

    atoms = [molecule("CH4"), bulk("Cu", "fcc", a=3.6, cubic=True), molecule("H2O")]
    (tmp_path / "data").mkdir()
    label_minima(atoms, tmp_path / FILE, EMT, SPEC, epsilon=DELTA, probes=probes)
    ctx = SimpleNamespace(path=lambda rel: tmp_path / rel, seeds_sha256=fingerprint(atoms),
                          teacher_spec=lambda: SPEC,
                          recipe={"labelling": {"hessian_at_minima": {"enabled": True}}})
    for i in (0, 2):
        known, ref = teacher_frequencies(ctx, i, FMAX, DELTA), harmonic_frequencies(atoms[i], EMT())
        np.testing.assert_allclose(known.frequencies, ref.frequencies, atol=1e-6)
        np.testing.assert_allclose(known.atoms.positions, ref.atoms.positions, atol=1e-12)
    assert teacher_frequencies(ctx, 1, FMAX, DELTA) is None  # the periodic seed has none
    assert teacher_frequencies(ctx, 0, FMAX, 2 * DELTA) is None  # made with another step: recomputed
    ctx.seeds_sha256 = "other seeds"
    assert teacher_frequencies(ctx, 0, FMAX, DELTA) is None


def test_quickstart_checks_the_frequency_bar():
    from mlff_calc.demo import acceptance

    summary = {"force_mae_ev_per_ang": 0.02, "nve": {}, "md_steps": 2000,
               "frequencies": {"seeds": 3, "modes": 51, "mae_cm1": 1.1, "max_error_cm1": 3.9}}
    assert [ok for _, ok in acceptance(summary)] == [True, True]
    for bad in ({"mae_cm1": 3.2, "max_error_cm1": 3.9}, {"mae_cm1": 1.1, "max_error_cm1": 15.5}, None):
        freq = None if bad is None else {**summary["frequencies"], **bad}
        assert acceptance({**summary, "frequencies": freq})[1][1] is False
