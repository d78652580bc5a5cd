"""Uncertainty (LLPR, mlff_calc.uncertainty): kernel and eager features agree, the calculator's keys,
calibration stored in checkpoints, refusal of an uncalibrated student, and the calibrate command."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT

from mlff_calc import StudentCalculator, StudentForceField
from mlff_calc import uncertainty as U
from mlff_calc.errors import InputError, OutputExistsError
from mlff_calc.graph import build_graph
from mlff_calc.model import fused
from mlff_calc.model.student import randomize_parameters


def _cu(rattle: float, seed: int):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    atoms.positions += np.random.default_rng(seed).normal(0.0, rattle, atoms.positions.shape)
    return atoms


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kernel_and_eager_features_agree(dtype):
    if not fused.available():
        pytest.skip("the whole-model kernel cannot be built here (no compiler)")
    model = randomize_parameters(StudentForceField(hidden_dim=32, num_interactions=2, cutoff=4.0)).to(dtype).eval()
    atoms = _cu(0.1, 0)
    graph = build_graph(atoms.numbers, atoms.positions, atoms.cell.array[None], atoms.pbc[None], [len(atoms)],
                        model.cutoff, dtype)
    out = {}
    for fused_path in (True, False):
        model.fused = fused_path
        phi = torch.full((len(atoms), U.readout_hidden(model)), float("nan"), dtype=dtype)
        energies, forces, _ = model.inference(graph, features=phi)
        plain = model.inference(graph)
        assert torch.equal(energies, plain[0]) and torch.equal(forces, plain[1])  # asking changes nothing
        out[fused_path] = phi
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.isfinite(out[True]).all()
    torch.testing.assert_close(out[True], out[False], rtol=tol, atol=tol)
    hidden = model.readout[1](model.readout[0](model.representation(graph.numbers, graph.vectors, graph.edge_index)))
    torch.testing.assert_close(out[False], hidden.detach(), rtol=0, atol=0)


def test_trained_student_is_calibrated_and_keys(trained_student, tmp_path):
    assert U.METADATA_KEY in trained_student.metadata  # the trainer calibrates every student
    path = tmp_path / "s.pt"
    trained_student.save(path)
    on = StudentCalculator.from_checkpoint(path, device="cpu", uncertainty=True)
    off = StudentCalculator.from_checkpoint(path, device="cpu")
    atoms = _cu(0.05, 1)
    on.calculate(atoms, ["energy", "forces"])
    off.calculate(atoms, ["energy", "forces"])
    r_on, r_off = on.results, off.results
    assert set(off.results) == {"energy", "free_energy", "energies", "forces"}
    assert set(on.results) == set(off.results) | {"energy_uncertainty", "forces_uncertainty"}
    assert r_on["energy"] == r_off["energy"] and np.array_equal(r_on["forces"], r_off["forces"])
    assert isinstance(on.results["energy_uncertainty"], float) and on.results["energy_uncertainty"] > 0
    unc = on.results["forces_uncertainty"]
    assert unc.shape == (len(atoms),) and (unc > 0).all()
    # batch_calculate gives the same numbers (float64 arithmetic there; calculate's lean path works in the
    # model's dtype: float32 agrees to ~1e-3, which is far below what an uncertainty estimate resolves)
    batch = on.batch_calculate([atoms, _cu(0.3, 2)])
    np.testing.assert_allclose(batch[0]["forces_uncertainty"], unc, rtol=5e-3)
    assert batch[0]["energy_uncertainty"] == pytest.approx(on.results["energy_uncertainty"], rel=5e-3)
    on64 = StudentCalculator.from_checkpoint(path, device="cpu", dtype="float64", uncertainty=True)
    on64.calculate(atoms, ["energy", "forces"])
    batch64 = on64.batch_calculate([atoms])[0]
    np.testing.assert_allclose(batch64["forces_uncertainty"], on64.results["forces_uncertainty"], rtol=1e-9)
    assert batch64["energy_uncertainty"] == pytest.approx(on64.results["energy_uncertainty"], rel=1e-9)
    assert "forces_uncertainty" not in off.batch_calculate([atoms])[0]


def test_far_from_training_is_more_uncertain(trained_student):
    calc = StudentCalculator(trained_student, device="cpu", dtype="float64", uncertainty=True)
    near = [calc.batch_calculate([_cu(0.05, s)])[0]["forces_uncertainty"].max() for s in range(5)]
    far = [calc.batch_calculate([_cu(0.45, s)])[0]["forces_uncertainty"].max() for s in range(5)]
    assert np.median(far) > 2 * np.median(near)


def test_calibration_roundtrip_and_refusals(trained_student, tmp_path):
    model = StudentForceField(**trained_student.config)
    model.load_state_dict(trained_student.state_dict())
    model.metadata = {k: v for k, v in trained_student.metadata.items() if k != U.METADATA_KEY}
    with pytest.raises(InputError, match="mlff-calc calibrate"):
        StudentCalculator(model, device="cpu", uncertainty=True)
    path = tmp_path / "bare.pt"
    model.save(path)
    with pytest.raises(InputError, match=f"{path}.*no uncertainty calibration"):
        StudentCalculator.from_checkpoint(path, device="cpu", uncertainty=True)
    StudentCalculator.from_checkpoint(path, device="cpu")  # off: no calibration needed
    # a calibration that does not fit the readout is refused with the same advice
    model.metadata[U.METADATA_KEY] = dict(trained_student.metadata[U.METADATA_KEY], atom_precision=[[1.0]])
    with pytest.raises(Exception, match="calibrate"):
        StudentCalculator(model, device="cpu", uncertainty=True)


def test_fit_scales_estimate_the_force_error(trained_student):
    frames = []
    for s in range(12):
        atoms = _cu(0.1, 100 + s)
        atoms.calc = EMT()
        atoms.get_forces()
        frames.append(atoms)
    cal = U.fit(trained_student, frames[:6], frames[6:])
    data = U.evaluate_frames(trained_student, frames[6:])
    _, predicted = cal.predict(data["features"], data["n_atoms"], data["numbers"])
    observed = np.linalg.norm(data["forces"] - data["ref_forces"], axis=1)
    # calibrated: the RMS of the predicted per-atom uncertainty is the RMS observed error magnitude
    assert np.sqrt(np.mean(predicted**2)) == pytest.approx(np.sqrt(np.mean(observed**2)), rel=1e-6)


def test_calibrate_cli(trained_student, tmp_path):
    from mlff_calc.cli import main
    from mlff_calc.data.hdf5 import write_frames

    frames = []
    for s in range(10):
        atoms = _cu(0.1, 200 + s)
        atoms.calc = EMT()
        frames.append({"atomic_numbers": atoms.numbers, "positions": atoms.positions, "cell": atoms.cell.array,
                       "pbc": atoms.pbc, "energy": atoms.get_potential_energy(), "forces": atoms.get_forces(),
                       "stress": np.full((3, 3), np.nan), "input_index": s})
    data = tmp_path / "d.h5"
    write_frames(data, frames, {"name": "emt", "options": {}}, {"command": "test"})
    model = StudentForceField(**trained_student.config)
    model.load_state_dict(trained_student.state_dict())
    model.save(tmp_path / "bare.pt")
    before = (tmp_path / "bare.pt").read_bytes()
    assert main(["calibrate", "--model", str(tmp_path / "bare.pt"), "--data", str(data),
                 "--out", str(tmp_path / "bare.pt")]) == 1  # never onto its input
    assert main(["calibrate", "--model", str(tmp_path / "bare.pt"), "--data", str(data)]) == 1
    assert main(["calibrate", "--model", str(tmp_path / "bare.pt"), "--data", str(data),
                 "--out", str(tmp_path / "cal.pt")]) == 0
    assert (tmp_path / "bare.pt").read_bytes() == before
    StudentCalculator.from_checkpoint(tmp_path / "cal.pt", device="cpu", uncertainty=True)
    with pytest.raises(OutputExistsError):
        from mlff_calc.training.calibrate import calibrate_checkpoint

        calibrate_checkpoint(tmp_path / "bare.pt", data, tmp_path / "cal.pt")
    assert main(["calibrate", "--model", str(tmp_path / "bare.pt"), "--data", str(data), "--in-place"]) == 0
    StudentCalculator.from_checkpoint(tmp_path / "bare.pt", device="cpu", uncertainty=True)


def test_elements_without_calibration_data_are_refused(trained_student):
    cal = U.calibration_of(trained_student)
    phi = np.ones((2, cal.hidden))
    with pytest.raises(InputError, match=r"no data for elements \[13\]"):
        cal.predict_one(phi, np.array([cal.elements[0], 13]))
    with pytest.raises(InputError, match=r"no data for elements \[200\]"):
        cal.predict(phi, [2], np.array([200, cal.elements[0]]))


def test_force_power_follows_how_errors_grow():
    rng = np.random.default_rng(0)
    d = np.exp(rng.uniform(0.0, 2.0, 3000))
    err = d**1.5 * np.abs(rng.normal(1.0, 0.3, d.shape))
    assert U._force_power(d, err) == pytest.approx(1.5, abs=0.1)
    assert U._force_power(d, d**3) == 2.0  # clipped
    assert U._force_power(d[:50], err[:50]) == 1.0  # too few atoms to fit a slope


def test_calibration_must_cover_the_trained_elements(trained_student):
    model = StudentForceField(**trained_student.config)
    model.load_state_dict(trained_student.state_dict())
    model.metadata = dict(trained_student.metadata, elements=[*trained_student.elements, 13])
    with pytest.raises(InputError, match=r"no data for elements \[13\] it was trained on"):
        StudentCalculator(model, device="cpu", uncertainty=True)


def test_fit_skips_calibration_frames_with_unseen_elements(trained_student):
    def labelled(atoms):
        atoms.calc = EMT()
        atoms.get_forces()
        return atoms

    cu = [labelled(_cu(0.1, 300 + s)) for s in range(6)]
    al = _cu(0.1, 400)
    al.symbols[0] = "Al"
    cal = U.fit(trained_student, cu[:3], [*cu[3:], labelled(al)])
    assert cal.info["calibration_frames"] == 3 and cal.elements == [29]
    with pytest.raises(InputError, match="no calibration frame has only elements"):
        U.fit(trained_student, cu[:3], [labelled(al.copy())])
