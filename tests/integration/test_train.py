"""``mlff-calc train`` end to end on a tiny EMT dataset: learning, outputs, the calculator, kill -9 and
resume, incompatible resumption, the time budget, and DDP with two CPU processes under torchrun."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ase.build import bulk
from ase.calculators.emt import EMT

from mlff_calc import StudentCalculator
from mlff_calc.cli import main
from mlff_calc.data.hdf5 import write_frames
from mlff_calc.training import load_config, train

ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = [".lock", "config.yaml", "last.pt", "learning_curve.png", "metrics.csv", "metrics.json",
           "student.pt"]
CONFIG = {  # tiny: every epoch is a fraction of a second on one thread
    "model": {"hidden_dim": 16, "num_interactions": 2, "num_rbf": 8, "cutoff": 3.5},
    "data": {"batch_size": 4, "val_size": 4, "test_size": 4},
    "optim": {"lr": 5e-3, "warmup_epochs": 0.5, "ema_decay": 0.9},
    "run": {"epochs": 8, "num_threads": 1, "quiet": True},
}


def cu_cells(n: int = 28, seed: int = 0) -> list[dict]:
    """Rattled 4-atom fcc Cu cells labelled by EMT (energy, forces, stress)."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.6 + 0.05 * rng.normal(), cubic=True)
        atoms.positions += rng.normal(0.0, 0.1, atoms.positions.shape)
        atoms.calc = EMT()
        frames.append({"atomic_numbers": atoms.numbers, "positions": atoms.positions,
                       "cell": atoms.cell.array, "pbc": atoms.pbc, "energy": atoms.get_potential_energy(),
                       "forces": atoms.get_forces(),
                       "stress": atoms.get_stress(voigt=False), "input_index": i})
    return frames


@pytest.fixture(scope="module")
def cu_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "cu.h5"
    write_frames(path, cu_cells(), {"name": "emt", "options": {}}, {"command": "test"})
    return path


def config_file(tmp_path: Path, **run) -> Path:
    raw = {k: dict(v) for k, v in CONFIG.items()}
    raw["run"].update(run)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def make_config(tmp_path, data, out, **run):
    return load_config(config_file(tmp_path, **run), {"data.path": str(data), "run.out": str(out)})


def test_training_learns_and_the_student_serves_md(tmp_path, cu_data):
    run = tmp_path / "run"
    result = train(make_config(tmp_path, cu_data, run))
    losses = [row["val_loss"] for row in result.history]
    assert len(losses) == 8 and min(losses[1:]) < 0.5 * losses[0]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.stop_reason == "epochs" and result.test_metrics["force_mae_ev_per_ang"] < 0.5
    assert sorted(p.name for p in run.iterdir()) == OUTPUTS
    assert len((run / "metrics.csv").read_text().splitlines()) == 9
    assert (run / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert load_config(run / "config.yaml").model.hidden_dim == 16
    torch.load(run / "last.pt", weights_only=True)  # plain containers only

    calc = StudentCalculator.from_checkpoint(run / "student.pt", device="cpu")
    meta = calc.metadata
    assert meta["elements"] == [29] and meta["teacher"]["name"] == "emt" and meta["package_version"]
    assert set(meta["reference_energies"]) == {29} and meta["data"]["n_train"] == 20
    assert meta["validation"]["epoch"] == result.best_epoch and "force_mae_ev_per_ang" in meta["test"]
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=1)
    atoms.calc = calc
    forces = atoms.get_forces()
    assert forces.shape == (4, 3) and np.isfinite(atoms.get_potential_energy())
    emt = atoms.copy()
    emt.calc = EMT()
    assert np.abs(forces - emt.get_forces()).mean() < 0.5  # eV/Å: it learned something of EMT
    atoms.numbers[0] = 13  # Al: never seen in training
    with pytest.raises(ValueError, match=r"Al.*(training|trained)"):
        atoms.get_potential_energy()


def test_resume_after_kill_is_bit_identical(tmp_path, cu_data):
    epochs = 12
    reference = train(make_config(tmp_path, cu_data, tmp_path / "ref", epochs=epochs))

    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "mlff_calc", "train", "--data", str(cu_data), "--out", str(run),
           "--config", str(config_file(tmp_path, epochs=epochs)), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        csv = run / "metrics.csv"
        if csv.exists() and len(csv.read_text().splitlines()) >= 1 + 3:  # 3 epochs done
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = torch.load(run / "last.pt", weights_only=True)["progress"]["epoch"]
    assert 3 <= done < epochs

    resumed = train(make_config(tmp_path, cu_data, run, epochs=epochs), resume=True)
    assert resumed.epochs == epochs and resumed.best_epoch == reference.best_epoch
    assert resumed.test_metrics == reference.test_metrics  # bit-identical, not approximately
    a = torch.load(tmp_path / "ref" / "student.pt", weights_only=True)["state_dict"]
    b = torch.load(run / "student.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len((run / "metrics.csv").read_text().splitlines()) == 1 + epochs

    # Resuming with another architecture is refused and names the setting.
    other = make_config(tmp_path, cu_data, run, epochs=epochs)
    other.model.hidden_dim = 32
    with pytest.raises(ValueError, match=r"cannot resume .*model\.hidden_dim: 16 -> 32"):
        train(other)


def test_cli_time_budget_stops_cleanly_and_bad_config_is_one_line(tmp_path, cu_data, capsys):
    run = tmp_path / "timed"
    cfg = config_file(tmp_path)
    code = main(["train", "--data", str(cu_data), "--out", str(run), "--config", str(cfg),
                 "--epochs", "100000", "--max-time", "2", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "max_time" in out and "force MAE" in out
    state = torch.load(run / "last.pt", weights_only=True)["progress"]
    assert 1 <= state["epoch"] < 100000 and state["train_time"] < 2.0 + 1.0
    meta = StudentCalculator.from_checkpoint(run / "student.pt", device="cpu").metadata
    assert meta["training"]["stop_reason"] == "max_time"

    assert main(["train", "--data", str(cu_data), "--out", str(tmp_path / "x"), "--resume"]) == 1
    assert "nothing to resume" in capsys.readouterr().err
    cfg.write_text("optim:\n  learning_rate: 0.1\n")
    assert main(["train", "--data", str(cu_data), "--out", str(tmp_path / "x"), "--config", str(cfg)]) == 1
    assert "unknown key optim.learning_rate" in capsys.readouterr().err


def test_ddp_two_cpu_processes_train_in_sync_and_write_one_checkpoint(tmp_path, cu_data):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "mlff_calc", "train", "--data", str(cu_data), "--out", str(run),
           "--config", str(config_file(tmp_path, epochs=3)), "--quiet"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in run.iterdir()) == OUTPUTS
    assert proc.stdout.count("force MAE") == 1  # only rank 0 prints
    meta = torch.load(run / "student.pt", weights_only=True)["metadata"]
    # world_size 2 and training finished: the end-of-run check found bit-identical weights on both ranks.
    assert meta["training"]["world_size"] == 2 and meta["training"]["epochs"] == 3
    assert len((run / "metrics.csv").read_text().splitlines()) == 1 + 3


def test_issue14_2_train_into_a_finished_run_refuses_to_replace_the_student(tmp_path, cu_data):
    """`mlff-calc train --out RUN` into a directory with a finished student.pt and no last.pt (a distill
    run directory) used to exit 0 and replace the student."""
    run = tmp_path / "distill_like"
    run.mkdir()
    (run / "student.pt").write_bytes(b"the user's finished student")
    with pytest.raises(FileExistsError, match=r"student\.pt already exists .*--overwrite"):
        train(make_config(tmp_path, cu_data, run, epochs=1))
    assert (run / "student.pt").read_bytes() == b"the user's finished student"
    assert sorted(p.name for p in run.iterdir()) == [".lock", "student.pt"]  # nothing else written
    result = train(make_config(tmp_path, cu_data, run, epochs=1), overwrite=True)  # the user says so
    assert result.epochs == 1 and (run / "student.pt").read_bytes()[:2] == b"PK"
    with pytest.raises(ValueError, match="--resume and --overwrite"):
        train(make_config(tmp_path, cu_data, run, epochs=1), resume=True, overwrite=True)


def test_issue14_2_through_the_cli_overwrite_is_the_users_word(tmp_path, cu_data, capsys):
    """The same through `mlff-calc train`: one line naming --overwrite, then --overwrite starts afresh."""
    from mlff_calc.cli import main

    run = tmp_path / "distill_like"
    run.mkdir()
    (run / "student.pt").write_bytes(b"the user's finished student")
    argv = ["train", "--data", str(cu_data), "--out", str(run), "--config", str(config_file(tmp_path, epochs=1)),
            "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0] and "student.pt" in err[0]
    assert (run / "student.pt").read_bytes() == b"the user's finished student"
    assert main(argv + ["--overwrite"]) == 0
    assert (run / "student.pt").read_bytes()[:2] == b"PK"


def test_issue14_6_second_train_into_the_same_directory_fails_at_once(tmp_path, cu_data, capsys):
    """Two `mlff-calc train` into the same directory at once both exited 0 and both claimed student.pt.
    The first runs in a thread here (a 1.5 s budget), the second through the CLI while it trains."""
    import threading

    run = tmp_path / "shared"
    config = make_config(tmp_path, cu_data, run, epochs=100000, max_time=1.5)
    first = threading.Thread(target=train, args=(config,))
    first.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and first.is_alive() and not (run / "config.yaml").exists():
            time.sleep(0.01)
        assert first.is_alive() and (run / "config.yaml").exists()
        t0 = time.monotonic()
        code = main(["train", "--data", str(cu_data), "--out", str(run), "--epochs", "1", "--quiet"])
        err = capsys.readouterr().err
        assert code == 1 and time.monotonic() - t0 < 2
        assert "in use by another mlff-calc train" in err and len(err.strip().splitlines()) == 1
    finally:
        first.join()
    assert torch.load(run / "last.pt", weights_only=True)["config"]["run"]["max_time"] == 1.5  # the first's


def test_issue14_9_a_yaml_section_written_as_a_list_is_refused(tmp_path, cu_data):
    """`run: [{epochs: 2}]` was silently ignored (defaults used) once an override touched the section."""
    cfg = tmp_path / "list.yaml"
    cfg.write_text("run:\n  - epochs: 2\n")
    with pytest.raises(ValueError, match=r"config run: expected a mapping of settings, got list"):
        load_config(cfg, {"data.path": str(cu_data), "run.out": str(tmp_path / "r")})
    assert not (tmp_path / "r").exists()
