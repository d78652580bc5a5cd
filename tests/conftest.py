import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_guard_global_state():
    """Fixed seeds; and no test (or the code under test) may change torch's default dtype."""
    torch.manual_seed(0)
    np.random.seed(0)
    before = torch.get_default_dtype()
    yield
    assert torch.get_default_dtype() == before, "torch's global default dtype was changed"


# ---- models shared by several test modules (built once per session) ---------------------------------------
@pytest.fixture(scope="session")
def trained_student(tmp_path_factory):
    """A tiny student trained on EMT labels of rattled fcc Cu cells (a few seconds on one thread):
    trained weights for the physics checks, which otherwise run on random ones."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from mlff_calc import StudentForceField
    from mlff_calc.data.hdf5 import write_frames
    from mlff_calc.training import train

    rng, frames = np.random.default_rng(0), []
    for i in range(16):
        atoms = bulk("Cu", "fcc", a=3.6 + 0.05 * rng.normal(), cubic=True)
        atoms.positions += rng.normal(0.0, 0.1, atoms.positions.shape)
        atoms.calc = EMT()
        frames.append({"atomic_numbers": atoms.numbers, "positions": atoms.positions,
                       "cell": atoms.cell.array, "pbc": atoms.pbc, "energy": atoms.get_potential_energy(),
                       "forces": atoms.get_forces(), "stress": atoms.get_stress(voigt=False),
                       "input_index": i})
    root = tmp_path_factory.mktemp("trained_student")
    write_frames(root / "cu.h5", frames, {"name": "emt", "options": {}}, {"command": "test"})
    result = train({"model": {"hidden_dim": 16, "num_interactions": 2, "num_rbf": 8, "cutoff": 4.0},
                    "data": {"path": str(root / "cu.h5"), "batch_size": 4, "val_size": 2, "test_size": 0},
                    "optim": {"lr": 5e-3, "warmup_epochs": 0.5},
                    "run": {"out": str(root / "run"), "epochs": 6, "num_threads": 1, "quiet": True}})
    return StudentForceField.load(result.checkpoint)


@pytest.fixture(scope="session")
def orb_random_weights(tmp_path_factory):
    """A checkpoint of Orb-v2's architecture with random weights, seed 0 (the real ones need a download)."""
    pretrained = pytest.importorskip("orb_models.forcefield.pretrained", reason="orb-models is not installed")
    path = tmp_path_factory.mktemp("orb") / "orb-v2-random.ckpt"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        torch.save(pretrained.orb_v2_architecture(device="cpu").state_dict(), path)
    return str(path)


@pytest.fixture(scope="session")
def orb_random_teacher(orb_random_weights):
    """The ``orb-v2`` teacher on those weights, built (and warmed up) once per session."""
    from mlff_calc.teachers import load_teacher

    return load_teacher("orb-v2", weights=orb_random_weights, device="cpu")


# ---- physics checks: none may be skipped without a reason; the skipped ones are listed -----------------
_PHYSICS_SKIPS: list[tuple[str, str]] = []


def _is_physics_check(report) -> bool:
    from mlff_calc.testing.physics import CHECKS

    name = report.nodeid.split("::")[-1].split("[")[0]
    return "test_physics" in report.nodeid and name.removeprefix("test_") in CHECKS


def pytest_runtest_logreport(report):
    if report.skipped and _is_physics_check(report):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped").removeprefix(":").strip()  # pytest.skip("") -> "Skipped"
        _PHYSICS_SKIPS.append((report.nodeid, reason))


def pytest_terminal_summary(terminalreporter):
    if _PHYSICS_SKIPS:
        terminalreporter.section(f"physics checks skipped ({len(_PHYSICS_SKIPS)}), with their reasons")
        for nodeid, reason in _PHYSICS_SKIPS:
            terminalreporter.line(f"{nodeid}: {reason or 'NO REASON GIVEN'}")


def pytest_sessionfinish(session):
    if any(not reason for _, reason in _PHYSICS_SKIPS):
        session.exitstatus = 1  # a physics check skipped without saying why counts as a failure
