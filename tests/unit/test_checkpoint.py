"""Checkpoints: bit-identical round trip, and every unusable file refused without running code."""

import pickle
import re
import zipfile

import numpy as np
import pytest
import torch

from mlff_calc import StudentCalculator, StudentForceField
from mlff_calc.checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint, save_checkpoint
from mlff_calc.model.student import randomize_parameters
from mlff_calc.testing.structures import small_triclinic_cell


def test_round_trip_bit_identical(tmp_path):
    model = randomize_parameters(StudentForceField(hidden_dim=16, num_interactions=2, num_rbf=8), seed=5)
    model.atom_ref[1] = -13.6
    model.metadata = {"elements": [1, 6, 8, 14], "teacher": {"name": "emt", "options": {}}}
    path = tmp_path / "student.pt"
    model.save(path)
    loaded = StudentForceField.load(path)
    assert loaded.config == model.config
    assert loaded.metadata["elements"] == [1, 6, 8, 14]
    assert "package_version" in loaded.metadata
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    atoms = small_triclinic_cell()
    results = []
    for calc in (StudentCalculator(model, device="cpu"), StudentCalculator.from_checkpoint(path, device="cpu")):
        atoms.calc = calc
        results.append((atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()))
    assert results[0][0] == results[1][0]
    assert np.array_equal(results[0][1], results[1][1]) and np.array_equal(results[0][2], results[1][2])
    # The file itself is loadable with weights_only=True (plain containers and tensors only).
    raw = torch.load(path, weights_only=True)
    assert raw["format_version"] == FORMAT_VERSION and set(raw) >= {"model_config", "state_dict", "metadata"}


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        StudentForceField.load(tmp_path / "nope.pt")


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"\x00\x01 this is not a checkpoint" * 100)
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        StudentForceField.load(path)
    (tmp_path / "truncated.pt").write_bytes(b"PK\x03\x04" + b"\x00" * 30)
    with pytest.raises(CheckpointError):
        StudentForceField.load(tmp_path / "truncated.pt")


def test_not_a_student_checkpoint(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="missing"):
        StudentForceField.load(path)
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="not a mlff_calc checkpoint"):
        StudentForceField.load(path)


def test_newer_format_refused(tmp_path):
    path = tmp_path / "future.pt"
    model = StudentForceField(hidden_dim=8, num_interactions=1, num_rbf=4)
    save_checkpoint(path, model.config, model.state_dict(), {})
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="newer than this mlff_calc"):
        StudentForceField.load(path)


def test_mismatched_weights_refused(tmp_path):
    path = tmp_path / "mismatch.pt"
    model = StudentForceField(hidden_dim=8, num_interactions=1, num_rbf=4)
    save_checkpoint(path, {**model.config, "hidden_dim": 16}, model.state_dict(), {})
    with pytest.raises(ValueError, match="do not match its model_config"):
        StudentForceField.load(path)


class _Payload:
    """Unpickling this would create a marker file: proof of code execution."""

    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_payload_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    _Payload.marker = marker
    model = StudentForceField(hidden_dim=8, num_interactions=1, num_rbf=4)
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "model_config": model.config, "state_dict": model.state_dict(),
                "metadata": {"x": _Payload()}}, path)
    assert zipfile.is_zipfile(path)
    with pytest.raises(CheckpointError, match="could run code"):
        StudentForceField.load(path)
    assert not marker.exists()
    # An old-style (non-zip) pickle file as well.
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(CheckpointError):
        StudentForceField.load(legacy)
    assert not marker.exists()


def test_save_refuses_non_plain_metadata(tmp_path):
    model = StudentForceField(hidden_dim=8, num_interactions=1, num_rbf=4)
    with pytest.raises(TypeError, match="not a plain container"):
        model.save(tmp_path / "m.pt", metadata={"obj": object()})
    assert not (tmp_path / "m.pt").exists()


def test_issue14_12_nan_weights_are_refused_at_load_naming_the_tensor(tmp_path):
    """A checkpoint with NaN weights used to load and then fail on the first structure with "please
    report this with the structure"; the checkpoint itself is the problem."""
    model = randomize_parameters(StudentForceField(hidden_dim=16, num_interactions=2, num_rbf=8), seed=5)
    name = next(n for n, p in model.named_parameters() if p.ndim == 2)
    with torch.no_grad():
        dict(model.named_parameters())[name][0, 0] = float("nan")
    model.save(tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=rf"non-finite weights \({re.escape(name)}.*retrain"):
        StudentCalculator.from_checkpoint(tmp_path / "nan.pt", device="cpu")
