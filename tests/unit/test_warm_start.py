"""``train(config, init_from=student.pt)``: the warm start of on-policy rounds."""

import pytest
import torch
from test_training import config, make_file

from mlff_calc import StudentForceField
from mlff_calc.errors import InputError
from mlff_calc.training import train


def test_warm_start_begins_at_the_previous_weights_and_keeps_its_energy_statistics(tmp_path):
    data = make_file(tmp_path / "a.h5", n=20)
    first = train(config(data, tmp_path / "first"))
    previous = StudentForceField.load(first.checkpoint)
    # lr ~ 0: a warm start must come back (almost) unchanged; a cold start would be the seed's random model.
    frozen = {"optim": {"lr": 1e-12, "ema_decay": 0.0, "warmup_epochs": 0.0}, "run": {"epochs": 1, "seed": 7}}
    warm = StudentForceField.load(train(config(make_file(tmp_path / "b.h5", n=24, seed=1), tmp_path / "warm",
                                               **frozen), init_from=first.checkpoint).checkpoint)
    cold = StudentForceField.load(train(config(make_file(tmp_path / "c.h5", n=24, seed=1), tmp_path / "cold",
                                               **frozen)).checkpoint)
    delta = warm.metadata["reference_refit"]["delta_ev"]  # the end-of-training refit (test_reference_refit)
    for (name, p), q, c in zip(previous.state_dict().items(), warm.state_dict().values(),
                               cold.state_dict().values()):
        if name == "atom_ref":
            p = p.clone()
            for z, d in delta.items():
                p[z] += d
        assert torch.allclose(p, q, atol=1e-6), name
    assert any(not torch.allclose(p, c, atol=1e-3) for p, c in zip(previous.state_dict().values(),
                                                                  cold.state_dict().values()))
    assert warm.metadata["energy_shift"] == pytest.approx(float(previous.shift))


def test_warm_start_refuses_another_architecture(tmp_path):
    data = make_file(tmp_path / "a.h5", n=20)
    first = train(config(data, tmp_path / "first"))
    with pytest.raises(InputError, match="cannot warm-start"):
        train(config(data, tmp_path / "other", model={"hidden_dim": 12}), init_from=first.checkpoint)
