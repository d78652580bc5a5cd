"""Curvature distillation: student HVPs by double autograd, HVP labels in the dataset, labelling, the loss."""

import json

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.io import read, write

from mlff_calc import _keys as K
from mlff_calc.calculator import StudentCalculator
from mlff_calc.data.hdf5 import DatasetReader, DatasetWriter
from mlff_calc.data.torch_dataset import H5Dataset, collate
from mlff_calc.errors import DataError, InputError
from mlff_calc.model.student import StudentForceField, randomize_parameters
from mlff_calc.teachers.hvp import fd_hvp, probe_directions
from mlff_calc.training.config import config_from_dict
from mlff_calc.training.loss import combined_probe
from mlff_calc.workflow.labelling import label_file


def _student():
    torch.manual_seed(0)
    model = randomize_parameters(StudentForceField(hidden_dim=16, num_interactions=2, cutoff=4.0).double())
    return model.eval()


def test_fd_hvp_of_the_student_converges_to_its_autograd_hvp_at_second_order():
    # The student as a teacher: its exact H v (double autograd) against fd_hvp on its own forces.
    model, atoms = _student(), molecule("CH3CH2OH")
    v = probe_directions(len(atoms), 1, seed=0)
    graph = model.prepare({K.ATOMIC_NUMBERS: atoms.numbers, K.POSITIONS: atoms.positions})
    exact = model(graph, probe=torch.tensor(v[0]))[K.HVP].numpy()
    calc = StudentCalculator(model=model, dtype="float64")
    errors = [np.abs(fd_hvp(calc, atoms, v, eps)[0] - exact).max() for eps in (0.02, 0.01, 0.005)]
    assert np.abs(exact).max() > 0.1  # a real curvature, not a vanishing one
    assert errors[0] > 1e-5  # the truncation error dominates float64 noise at these steps
    assert errors[0] / errors[1] == pytest.approx(4.0, rel=0.1)
    assert errors[1] / errors[2] == pytest.approx(4.0, rel=0.1)


def test_batched_hvp_equals_single_and_a_zero_probe_gives_zero():
    model = _student()
    a, b = molecule("CH3CH2OH"), molecule("H3CNH2")
    va = torch.tensor(probe_directions(len(a), 1, seed=1)[0])

    def graph(*mols):
        return model.prepare({K.ATOMIC_NUMBERS: np.concatenate([m.numbers for m in mols]),
                              K.POSITIONS: np.concatenate([m.positions + 20 * k for k, m in enumerate(mols)]),
                              K.BATCH: np.repeat(np.arange(len(mols)), [len(m) for m in mols])})

    single = model(graph(a), probe=va)[K.HVP]
    both = model(graph(a, b), probe=torch.cat([va, torch.zeros(len(b), 3, dtype=va.dtype)]))
    torch.testing.assert_close(both[K.HVP][: len(a)], single, rtol=1e-9, atol=1e-10)
    assert torch.all(both[K.HVP][len(a):] == 0)
    torch.testing.assert_close(both[K.FORCES][: len(a)], model(graph(a))[K.FORCES], rtol=1e-9, atol=1e-10)


def _frame(atoms, index, hvp=None):
    calc = EMT()
    frame = {"atomic_numbers": atoms.numbers, "positions": atoms.positions, "cell": np.asarray(atoms.cell),
             "pbc": atoms.pbc, "input_index": index, "energy": calc.get_potential_energy(atoms),
             "forces": calc.get_forces(atoms), "stress": None}
    if hvp is not None:
        frame["hvp"] = hvp
    return frame


def _cu(seed):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=seed)
    return atoms


def _hvp(atoms, k, value):
    return {"probes": probe_directions(len(atoms), k, seed=k), "values": np.full((k, len(atoms), 3), value),
            "epsilon": np.full(k, 0.01)}


def test_hvp_labels_survive_journal_batches_and_reach_the_torch_dataset(tmp_path):
    path = tmp_path / "d.h5"
    frames = [_cu(0), _cu(1), _cu(2)]
    with DatasetWriter(path, {"name": "emt"}, {}, compact_interval=float("inf")) as w:
        w.add(_frame(frames[0], 0, _hvp(frames[0], 2, 1.0)))
        w.commit()  # separate batches: structure rows must be shifted when they are folded in
        w.add(_frame(frames[1], 1))
        w.add(_frame(frames[2], 2, _hvp(frames[2], 1, 3.0)))
    reader = DatasetReader(path)
    np.testing.assert_array_equal(reader.hvp_structure, [0, 0, 2])
    np.testing.assert_array_equal(reader.n_probes, [2, 0, 1])
    assert json.loads(__import__("h5py").File(path)["/"].attrs["units"])["hvp"] == "eV/Angstrom^2"
    for preload in (True, False):
        ds = H5Dataset(path, preload=preload)
        item = ds[2]
        assert item[K.HVP].shape == (4, 2, 3) and int(item[K.N_PROBES]) == 1
        assert torch.all(item[K.HVP][:, 0] == 3.0) and torch.all(item[K.HVP][:, 1] == 0)
        np.testing.assert_allclose(item[K.HVP_PROBES][:, 0].numpy(), _hvp(frames[2], 1, 3.0)["probes"][0])
        assert int(ds[1][K.N_PROBES]) == 0
        batch = collate([ds[0], ds[1], ds[2]])
        probe, label = combined_probe(batch, random=True)
        norms = [probe[batch[K.BATCH] == s].norm().item() for s in range(3)]
        assert norms == pytest.approx([1.0, 0.0, 1.0])  # orthonormal probes: the signed sum / sqrt(K) is unit
        assert torch.all(label[4:8] == 0)


def test_a_dataset_without_curvature_has_no_hvp_datasets_and_items(tmp_path):
    path = tmp_path / "d.h5"
    with DatasetWriter(path, {"name": "emt"}, {}) as w:
        w.add(_frame(_cu(0), 0))
    assert "labels/hvp" not in __import__("h5py").File(path)
    ds = H5Dataset(path)
    assert ds.max_probes == 0 and K.HVP not in ds[0]


@pytest.mark.parametrize("bad, message", [
    ({"values": np.zeros((2, 3, 3))}, "hvp values has shape"),
    ({"values": np.full((2, 4, 3), np.nan)}, "non-finite"),
    ({"epsilon": np.array([0.01, 0.0])}, "epsilon must be > 0"),
])
def test_bad_curvature_labels_are_refused(tmp_path, bad, message):
    atoms = _cu(0)
    with pytest.raises(DataError, match=message):
        with DatasetWriter(tmp_path / "d.h5", {"name": "emt"}, {}) as w:
            w.add(_frame(atoms, 0, _hvp(atoms, 2, 1.0) | bad))


def test_labelling_a_fraction_with_probes_counts_calls_and_stores_fd_hvps(tmp_path):
    frames = [_cu(s) for s in range(4)]
    write(tmp_path / "in.extxyz", frames)
    out = tmp_path / "d.h5"
    report = label_file(tmp_path / "in.extxyz", out, "emt", hvp_fraction=0.5, hvp_probes=2, hvp_epsilon=0.01,
                        progress=False)
    assert report.hvp_frames_now == 2
    assert report.teacher_calls == 4 + 2 * 2 * 2  # one per frame, two per probe
    reader = DatasetReader(out)
    assert sorted(reader.n_probes.tolist()) == [0, 0, 2, 2]
    s = int(reader.hvp_structure[0])
    item = H5Dataset(out)[s]
    probes = item[K.HVP_PROBES].numpy().transpose(1, 0, 2)
    stored = read(tmp_path / "in.extxyz", index=int(reader.input_index[s]))  # the positions labelled
    expected = fd_hvp(EMT(), stored, probes, 0.01)
    np.testing.assert_allclose(item[K.HVP].numpy().transpose(1, 0, 2), expected, rtol=1e-10, atol=1e-10)
    with pytest.raises(DataError, match="curvature settings"):
        label_file(tmp_path / "in.extxyz", out, "emt", hvp_fraction=0.25, progress=False)
    with pytest.raises(InputError, match="hvp_fraction"):
        label_file(tmp_path / "in.extxyz", tmp_path / "e.h5", "emt", hvp_fraction=1.5, progress=False)


def test_hvp_weight_is_checked_and_named():
    with pytest.raises(InputError, match="loss.hvp_weight"):
        config_from_dict({"loss": {"hvp_weight": -1.0}})
    assert config_from_dict({}).loss.hvp_weight == 0.0


@pytest.mark.slow
def test_training_with_hvp_weight_fits_curvature_and_reports_it(tmp_path):
    from mlff_calc.training import train

    frames = [_cu(s) for s in range(12)]
    write(tmp_path / "in.extxyz", frames)
    label_file(tmp_path / "in.extxyz", tmp_path / "d.h5", "emt", hvp_fraction=1.0, hvp_probes=2, progress=False)
    base = {"model": {"hidden_dim": 8, "num_interactions": 1, "cutoff": 4.0},
            "data": {"path": str(tmp_path / "d.h5"), "val_size": 2, "test_size": 2, "batch_size": 4},
            "run": {"epochs": 4, "quiet": True, "num_threads": 1, "dtype": "float64"}}
    with_hvp = train(config_from_dict(base | {"loss": {"hvp_weight": 0.1}, "run": {**base["run"],
                                                                                     "out": str(tmp_path / "a")}}))
    assert np.isfinite(with_hvp.test_metrics["hvp_mae_ev_per_ang2"])
    without = train(config_from_dict(base | {"run": {**base["run"], "out": str(tmp_path / "b")}}))
    assert "hvp_mae_ev_per_ang2" not in without.test_metrics  # the term is off: no second derivative


def test_vibrations_stage_compares_molecules_and_says_why_others_are_skipped(tmp_path):
    from types import SimpleNamespace

    from ase import Atoms

    from mlff_calc.pipeline.vibrations import run_vibrations

    model = _student()
    model.save(tmp_path / "student.pt")
    teacher = StudentCalculator(model=model, dtype="float64")  # the student as its own teacher: errors 0
    seeds = [("a", molecule("H2O")), ("b", bulk("Cu", "fcc", a=3.6)), ("c", Atoms("H40", positions=[
        (0.9 * i, 0.0, 0.0) for i in range(40)]))]
    ctx = SimpleNamespace(path=lambda rel: tmp_path / rel, seeds=seeds, device="cpu", log=lambda m: None,
                          teacher_calc=lambda: teacher, recipe={})  # recipe: no hessian_at_minima
    info = run_vibrations(ctx)
    assert info["summary"]["seeds"] == 1 and info["summary"]["modes"] == 3  # 3N - 6 for water
    assert info["summary"]["max_error_cm1"] < 1e-3
    assert [k["reason"].split(":")[0] for k in info["skipped"]] == ["periodic", "40 atoms > 30"]
    text = (tmp_path / "vibrations/report.md").read_text()
    assert "MAE **0.00 cm⁻¹**" in text and "skipped (periodic" in text
    assert (tmp_path / "vibrations/frequencies.png").stat().st_size > 1000


def test_probes_added_to_an_older_file_and_carried_by_merge(tmp_path):
    from mlff_calc.data.convert import merge_datasets

    path, frames = tmp_path / "d.h5", [_cu(0), _cu(1)]
    with DatasetWriter(path, {"name": "emt"}, {"input": {"sha256": "x"}}) as w:
        w.add(_frame(frames[0], 0))  # a file from before curvature labels: no hvp datasets, no hvp units
    with DatasetWriter(path) as w:  # a resumed writer adds the first probes: the datasets appear then
        w.add(_frame(frames[1], 1, _hvp(frames[1], 2, 5.0)))
    reader = DatasetReader(path)
    assert reader.hvp(0) is None and reader.hvp(1)["values"].shape == (2, 4, 3)
    n, _ = merge_datasets(tmp_path / "m.h5", [path])
    merged = DatasetReader(tmp_path / "m.h5")
    assert n == 2 and merged.n_probes.tolist() == [0, 2]
    np.testing.assert_array_equal(merged.hvp(1)["probes"], reader.hvp(1)["probes"])


def test_label_cli_flags_and_dataset_info_show_curvature(tmp_path, capsys):
    from mlff_calc.cli import main

    write(tmp_path / "in.extxyz", [_cu(s) for s in range(5)])
    assert main(["label", "--teacher", "emt", "--structures", str(tmp_path / "in.extxyz"), "--out",
                 str(tmp_path / "d.h5"), "--hvp-fraction", "0.4", "--hvp-probes", "3", "--quiet"]) == 0
    assert "curvature labels on 2 frames now; 17 teacher calls" in capsys.readouterr().out  # 5 + 2*3*2
    assert main(["dataset", "info", str(tmp_path / "d.h5")]) == 0
    assert "6 Hessian-vector products on 2 structures" in capsys.readouterr().out
    assert main(["label", "--teacher", "emt", "--structures", str(tmp_path / "in.extxyz"), "--out",
                 str(tmp_path / "e.h5"), "--hvp-fraction", "-1", "--quiet"]) != 0
    assert "hvp_fraction must be in [0, 1]" in capsys.readouterr().err


def test_probed_frames_are_spread_over_the_training_and_validation_splits():
    from mlff_calc.training.data import split_frames
    from mlff_calc.workflow.labelling import _hvp_settings, _probed_frames

    probed = _probed_frames(500, _hvp_settings(0.2, 2, None))
    train, val, _ = split_frames(500, 0.1, 0.0)
    assert len(probed) == 100
    assert 5 <= len(probed & set(val.tolist())) <= 20  # ~10 expected; the same seed stream would give 0


@pytest.mark.slow
def test_distill_with_curvature_labels_trains_on_them_and_counts_the_calls(tmp_path):
    from mlff_calc.pipeline import distill

    seed = bulk("Cu", "fcc", a=3.6, cubic=True)
    overrides = {"sampling.temperatures": [300.0], "sampling.frames": 16, "sampling.interval": 2,
                 "sampling.timestep": 2.0, "sampling.warmup": 0, "heldout.frames": 4,
                 "labelling.hvp_fraction": 0.5, "labelling.hvp_probes": 2,
                 "training.model.hidden_dim": 8, "training.model.num_interactions": 1, "training.model.cutoff": 3.5,
                 "training.data.val_size": 4, "training.data.batch_size": 4, "training.loss.hvp_weight": 0.1,
                 "training.run.max_time": None, "training.run.epochs": 2, "evaluation.max_frames": 4,
                 "evaluation.nve_steps": 0, "md.steps": 10, "md.dtypes": ["float64"],
                 "onpolicy.rounds": 0}  # offline: the quick preset's on-policy rounds are not under test
    result = distill("emt", [seed], tmp_path / "run", preset="quick", overrides=overrides, quiet=True)
    state = json.loads((tmp_path / "run/state.json").read_text())["stages"]
    assert state["label"]["info"]["teacher_calls_now"] == 16 + 8 * 2 * 2  # 16 frames, 8 of them 2 probes
    assert DatasetReader(tmp_path / "run/data/train.h5").n_probes.sum() == 16
    assert DatasetReader(tmp_path / "run/data/heldout.h5").n_probes.sum() == 0  # evaluation: forces only
    assert "hvp_mae_ev_per_ang2" in state["train"]["info"]["validation"]
    assert "skipped (periodic" in (tmp_path / "run/report/report.md").read_text()
    assert result.summary["frequencies"]["modes"] == 0
