"""Training pieces: config schema, label checks, splits, reference energies, loss/metrics, schedule, EMA."""

import math

import h5py
import numpy as np
import pytest
import torch

from mlff_calc import _keys as K
from mlff_calc.data.hdf5 import write_frames
from mlff_calc.data.torch_dataset import N_ATOMS
from mlff_calc.training import TrainConfig, load_config, train
from mlff_calc.training.config import config_from_dict, dump_config, incompatible_settings
from mlff_calc.training.data import fit_energy_statistics, load_training_data, split_frames, split_sizes
from mlff_calc.training.loss import ErrorSums, batch_loss
from mlff_calc.training.optim import EMA, LRSchedule

TINY = {"model": {"hidden_dim": 8, "num_interactions": 1, "num_rbf": 4, "cutoff": 3.0},
        "data": {"batch_size": 4}, "run": {"epochs": 2, "quiet": True, "num_threads": 1}}


def synthetic_frames(n, refs=None, seed=0):
    """Cu/Al clusters whose energy is exactly Σ n_Z ref_Z + a little noise; forces random."""
    refs = refs or {29: -3.5, 13: -2.0}
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        k = 2 + i % 3
        z = rng.choice([29, 13], size=k)
        positions = rng.uniform(0, 4, (k, 3)) + np.arange(k)[:, None] * 2.0
        frames.append({"atomic_numbers": z, "positions": positions,
                       "cell": np.zeros((3, 3)), "pbc": np.zeros(3, bool),
                       "energy": sum(refs[int(a)] for a in z) + 1e-3 * rng.normal(),
                       "forces": rng.normal(size=(k, 3)), "stress": None, "input_index": i})
    return frames


def make_file(path, n=20, **kw):
    write_frames(path, synthetic_frames(n, **kw), {"name": "emt", "options": {}}, {})
    return str(path)


def config(path, out, **sections):
    raw = {k: dict(v) for k, v in TINY.items()}
    raw["data"] = {**raw["data"], "path": str(path)}
    raw["run"] = {**raw["run"], "out": str(out)}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return config_from_dict(raw)


# ---- config ------------------------------------------------------------------------------------------
def test_config_rejects_unknown_keys_and_bad_values_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key model\.hiden_dim"):
        config_from_dict({"model": {"hiden_dim": 3}})
    with pytest.raises(ValueError, match=r"unknown section 'modle'"):
        config_from_dict({"modle": {}})
    with pytest.raises(ValueError, match=r"optim\.lr: must be > 0"):
        config_from_dict({"optim": {"lr": -1.0}})
    with pytest.raises(ValueError, match=r"data\.batch_size: expected int"):
        config_from_dict({"data": {"batch_size": "16"}})
    with pytest.raises(ValueError, match=r"optim\.schedule"):
        config_from_dict({"optim": {"schedule": "linear"}})
    with pytest.raises(ValueError, match=r"run\.max_time"):
        config_from_dict({"run": {"max_time": 0}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2]\n")
    with pytest.raises(ValueError, match="model"):
        load_config(bad)


def test_union_values_take_the_first_kind_that_fits_and_name_all_kinds():
    from typing import Optional, Union

    from mlff_calc.schema import coerce

    kind = Union[float, list[float], None]
    assert coerce(3, kind, "k") == 3.0 and isinstance(coerce(3, kind, "k"), float)
    assert coerce([1, 2.5], kind, "k") == [1.0, 2.5] and coerce(None, kind, "k") is None
    for bad in ("3", [1, "b"], True, float("nan")):
        with pytest.raises(ValueError, match=r"k: expected float or a list of float"):
            coerce(bad, kind, "k")
    with pytest.raises(ValueError, match=r"k: expected int, got 'a'"):  # Optional keeps its message
        coerce("a", Optional[int], "k")
    with pytest.raises(ValueError, match=r"k: expected float or a list of float, got \[1\.0, None\]"):
        coerce([1.0, None], Union[float, list[float]], "k")


def test_config_yaml_round_trip_and_overrides(tmp_path):
    cfg = config_from_dict({"model": {"hidden_dim": 32, "cutoff": 4}, "run": {"max_time": 60}})
    assert cfg.model.cutoff == 4.0 and isinstance(cfg.model.cutoff, float)
    dump_config(cfg, tmp_path / "c.yaml")
    back = load_config(tmp_path / "c.yaml", {"run.epochs": 7})
    assert back.model == cfg.model and back.run.max_time == 60 and back.run.epochs == 7
    assert back.to_dict()["optim"] == TrainConfig().to_dict()["optim"]
    # What may change on resumption and what may not.
    changed = load_config(tmp_path / "c.yaml", {"run.epochs": 9, "optim.lr": 0.5})
    assert incompatible_settings(cfg.to_dict(), changed) == ["optim.lr: 0.001 -> 0.5"]


# ---- data --------------------------------------------------------------------------------------------
def test_split_sizes_fractions_counts_and_too_few_frames():
    assert split_sizes(100, 0.1, 0.1) == (80, 10, 10)
    assert split_sizes(100, 5, 0) == (95, 5, 0)
    assert split_sizes(3, 0.1, 0.1) == (1, 1, 1)  # fractions give at least one frame
    with pytest.raises(ValueError, match="2 frames: too few"):
        split_sizes(2, 0.1, 0.1)


def test_reference_energies_are_fitted_by_least_squares(tmp_path):
    path = make_file(tmp_path / "d.h5", n=40)
    data = load_training_data(config(path, tmp_path / "r"), torch.float64)
    assert data.elements == [13, 29] and len(data.train) == 32
    assert set(data.train) | set(data.val) | set(data.test) == set(range(40))
    atom_ref, scale, shift = fit_energy_statistics(data, 118)
    assert atom_ref.shape == (119,)
    assert atom_ref[29] == pytest.approx(-3.5, abs=2e-3) and atom_ref[13] == pytest.approx(-2.0, abs=2e-3)
    assert abs(shift) < 1e-3 and scale == pytest.approx(1.0, rel=0.2)  # RMS of unit-normal forces


def _corrupt(path, name, index, value=np.nan):
    with h5py.File(path, "r+") as f:
        f[name][index] = value


@pytest.mark.parametrize("name,index,message", [
    ("labels/energy", 5, "frame 5 .* non-finite energy"),
    ("labels/forces", 1, "frame 0 .* non-finite forces on some of its atoms"),
    ("structures/positions", 2, "frame 1 .* non-finite positions"),
])
def test_nan_labels_are_refused_naming_the_frame(tmp_path, name, index, message):
    path = make_file(tmp_path / "d.h5")
    _corrupt(path, name, index)
    with pytest.raises(ValueError, match=message):
        train(config(path, tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_partial_stress_is_refused_and_nan_stress_means_unlabelled(tmp_path):
    path = make_file(tmp_path / "d.h5")  # every stress NaN (molecules): unlabelled, fine
    data = load_training_data(config(path, tmp_path / "r"), torch.float64)
    assert not data.has_stress
    _corrupt(path, "labels/stress", (3, 0, 0), 1.0)
    with pytest.raises(ValueError, match="frame 3 .* stress label with some but not all"):
        load_training_data(config(path, tmp_path / "r"), torch.float64)


def test_empty_dataset_and_too_few_frames(tmp_path):
    empty = tmp_path / "empty.h5"
    write_frames(empty, [], {"name": "emt", "options": {}}, {})
    with pytest.raises(ValueError, match="holds no frames"):
        train(config(empty, tmp_path / "r"))
    two = make_file(tmp_path / "two.h5", n=2)
    with pytest.raises(ValueError, match="too few"):
        train(config(two, tmp_path / "r"))


def test_no_forces_is_an_error_unless_training_on_energies_only(tmp_path):
    path = make_file(tmp_path / "d.h5", n=12)
    with h5py.File(path, "r+") as f:
        f["labels/forces"][...] = np.nan
    with pytest.raises(ValueError, match=r"no force labels \(every force is NaN\); set loss.force_weight: 0"):
        train(config(path, tmp_path / "r"))
    result = train(config(path, tmp_path / "r", loss={"force_weight": 0.0}))
    test = result.test_metrics
    assert math.isnan(test["force_mae_ev_per_ang"]) and math.isfinite(test["energy_mae_ev_per_atom"])


def test_batch_larger_than_the_training_set_is_clamped_with_a_warning(tmp_path):
    path = make_file(tmp_path / "d.h5", n=6)
    with pytest.warns(UserWarning, match="batch_size 16 is larger than the 4 training frames"):
        result = train(config(path, tmp_path / "r", data={"batch_size": 16}, run={"epochs": 1}))
    assert load_config(tmp_path / "r" / "config.yaml").data.batch_size == 4  # what was actually used
    assert result.epochs == 1


# ---- loss and metrics --------------------------------------------------------------------------------
def _batch(n_structures=3, stress_labelled=(True, False, True)):
    g = torch.Generator().manual_seed(0)
    n_atoms = torch.tensor([2, 3, 1][:n_structures])
    stress = torch.randn(n_structures, 3, 3, generator=g)
    stress[~torch.tensor(stress_labelled)] = float("nan")
    n = int(n_atoms.sum())
    return {K.ENERGY: torch.randn(n_structures, generator=g), K.FORCES: torch.randn(n, 3, generator=g),
            K.STRESS: stress, N_ATOMS: n_atoms}


def test_loss_masks_unlabelled_stress_and_metrics_add_up_over_batches():
    ref, pred = _batch(), _batch()
    pred = {k: v + 0.1 for k, v in pred.items() if k != N_ATOMS}
    pred[K.STRESS] = torch.nan_to_num(pred[K.STRESS])  # the model predicts stress everywhere
    w = TrainConfig().loss
    loss = batch_loss(pred, ref, w, use_forces=True, use_stress=True)
    labelled = [0, 2]
    want = (w.energy_weight * (((pred[K.ENERGY] - ref[K.ENERGY]) / ref[N_ATOMS]) ** 2).mean()
            + w.force_weight * ((pred[K.FORCES] - ref[K.FORCES]) ** 2).mean()
            + w.stress_weight * ((pred[K.STRESS][labelled] - ref[K.STRESS][labelled]) ** 2).mean())
    assert torch.isfinite(loss) and loss.item() == pytest.approx(want.item(), rel=1e-6)

    whole, parts = ErrorSums(), ErrorSums()
    whole.add(pred, ref)
    for sl, atoms in ((slice(0, 1), slice(0, 2)), (slice(1, 3), slice(2, 6))):
        parts.add({K.ENERGY: pred[K.ENERGY][sl], K.FORCES: pred[K.FORCES][atoms],
                   K.STRESS: pred[K.STRESS][sl]},
                  {K.ENERGY: ref[K.ENERGY][sl], K.FORCES: ref[K.FORCES][atoms], K.STRESS: ref[K.STRESS][sl],
                   N_ATOMS: ref[N_ATOMS][sl]})
    a, b = whole.metrics(w), parts.metrics(w)
    assert a == pytest.approx(b) and a["loss"] == pytest.approx(loss.item(), rel=1e-6)
    assert a["force_mae_ev_per_ang"] == pytest.approx((pred[K.FORCES] - ref[K.FORCES]).abs().mean().item())
    perfect = ErrorSums()
    perfect.add(ref | {K.STRESS: torch.nan_to_num(ref[K.STRESS])}, ref)
    assert perfect.metrics(w)["force_cosine_mean"] == pytest.approx(1.0) and perfect.metrics(w)["loss"] == 0



def test_force_huber_is_the_squared_error_below_delta_and_linear_beyond():
    ref = _batch()
    errors = torch.zeros_like(ref[K.FORCES])
    errors[0, 0], errors[1, 2], errors[3, 1] = 0.2, -3.0, 10.0  # one component below δ, two far beyond
    pred = {K.ENERGY: ref[K.ENERGY].clone(), K.FORCES: ref[K.FORCES] + errors}
    plain, huber = TrainConfig().loss, config_from_dict({"loss": {"force_huber": 0.5}}).loss
    squared = batch_loss(pred, ref, plain, use_forces=True, use_stress=False)
    bounded = batch_loss(pred, ref, huber, use_forces=True, use_stress=False)
    d = 0.5
    want = (0.2 ** 2 + (2 * d * 3.0 - d * d) + (2 * d * 10.0 - d * d)) / errors.numel()
    assert bounded.item() == pytest.approx(huber.force_weight * want, rel=1e-6)
    assert squared.item() == pytest.approx(plain.force_weight * (0.04 + 9 + 100) / errors.numel(), rel=1e-6)
    small = {K.ENERGY: ref[K.ENERGY], K.FORCES: ref[K.FORCES] + 0.1}  # every error below δ: the same loss
    assert batch_loss(small, ref, huber, True, False).item() == pytest.approx(
        batch_loss(small, ref, plain, True, False).item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"loss\.force_huber: must be > 0"):
        config_from_dict({"loss": {"force_huber": 0.0}})

# ---- schedule and EMA --------------------------------------------------------------------------------
def test_schedule_warms_up_then_follows_a_cosine_or_the_time_budget():
    cfg = TrainConfig().optim
    s = LRSchedule(cfg, steps_per_epoch=10, epochs=10, max_time=None)
    lrs = [s.lr(i, 0.0) for i in range(100)]
    assert lrs[0] == pytest.approx(cfg.lr * (0.01 + 0.099)) and lrs[9] == pytest.approx(cfg.lr)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(cfg.lr * 0.01, rel=0.05)
    timed = LRSchedule(cfg, steps_per_epoch=10, epochs=10, max_time=100.0)
    assert timed.lr(20, 100.0) == pytest.approx(cfg.lr * cfg.min_lr_ratio)  # the budget ends the cosine
    plateau_cfg = config_from_dict({"optim": {"schedule": "plateau", "plateau_patience": 1}}).optim
    plateau = LRSchedule(plateau_cfg, steps_per_epoch=10, epochs=10, max_time=None)
    for loss in (1.0, 1.0, 1.0):
        plateau.end_epoch(loss)
    assert plateau.lr(50, 0.0) == pytest.approx(cfg.lr * 0.5)
    state = plateau.state_dict()
    again = LRSchedule(plateau.config, 10, 10, None)
    again.load_state_dict(state)
    assert again.lr(50, 0.0) == plateau.lr(50, 0.0)


def test_ema_tracks_weights_and_copies_buffers():
    model, ema_model = torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2)
    ema = EMA(model, ema_model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.running_mean.fill_(5.0)
    ema.update()  # first update: d = 1/10
    assert ema_model.weight.tolist() == pytest.approx([1.9, 1.9])
    assert ema_model.running_mean.tolist() == [5.0, 5.0]
    assert not any(p.requires_grad for p in ema_model.parameters())
    other = EMA(model, torch.nn.BatchNorm1d(2), decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.ema_model.weight, ema_model.weight) and other.updates == 1


def test_split_is_deterministic_disjoint_and_complete():
    """The one split function (``split_frames``; the trainer's split and its old results unchanged)."""
    a = split_frames(101, 10, 10, seed=3)
    b = split_frames(101, 10, 10, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert [len(x) for x in a] == [81, 10, 10]
    assert np.array_equal(np.sort(np.concatenate(a)), np.arange(101))
    assert not any(np.array_equal(x, y) for x, y in zip(a, split_frames(101, 10, 10, seed=4)))
    assert [len(x) for x in split_frames(10, 0.2, 0)] == [8, 2, 0]  # fractions, and no test split
    # The split the trainer made before split_frames existed (seed 0, 12 frames, 2 + 2): unchanged.
    order = np.random.default_rng(0).permutation(12)
    assert [x.tolist() for x in split_frames(12, 2, 2)] == [sorted(order[:8]), sorted(order[8:10]),
                                                              sorted(order[10:])]
    with pytest.raises(ValueError, match="too few"):
        split_frames(10, 6, 4)


def test_issue14_11_max_z_below_an_element_is_an_input_error(tmp_path):
    """`model.max_z` below an element in the data used to end in an IndexError inside the embedding."""
    path = make_file(tmp_path / "d.h5")
    with pytest.raises(ValueError, match=r"config model\.max_z: 8 is below atomic number .* raise model"):
        train(config(path, tmp_path / "r", model={"max_z": 8}))
    assert not (tmp_path / "r").exists()
