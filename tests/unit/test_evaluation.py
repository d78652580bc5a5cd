"""Metric, RDF and timing functions of ``mlff_calc.evaluation`` against hand-computed values."""

import math
import time

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from mlff_calc.evaluation import energy_errors, force_errors, rdf, rdf_difference, stress_errors
from mlff_calc.evaluation.speed import time_calls


def test_energy_errors_are_per_atom():
    # errors per atom: (1 - 0) / 2 = 0.5 and (2 - 5) / 4 = -0.75
    out = energy_errors([1.0, 2.0], [0.0, 5.0], [2, 4])
    assert out["energy_mae_ev_per_atom"] == pytest.approx(0.625)
    assert out["energy_rmse_ev_per_atom"] == pytest.approx(math.sqrt((0.25 + 0.5625) / 2))


def test_force_errors_by_hand():
    pred = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    ref = np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # diff = [[1, -1, 0], [0, 1, 0], [-1, 0, 0]]: |components| sum 4 over 9, squares sum 4 over 9
    out = force_errors(pred, ref)
    assert out["force_mae_ev_per_ang"] == pytest.approx(4 / 9)
    assert out["force_rmse_ev_per_ang"] == pytest.approx(math.sqrt(4 / 9))
    assert out["force_max_error_ev_per_ang"] == pytest.approx(math.sqrt(2))
    # per atom: cos 0 (perpendicular), cos 1 (parallel); the zero student force has no angle: left out
    assert out["force_cosine_mean"] == pytest.approx(0.5)
    # global: sum p.r = 2, |p| = sqrt(5), |r| = sqrt(3)
    assert out["force_cosine_global"] == pytest.approx(2 / math.sqrt(15))
    perfect = force_errors(ref, ref)
    assert perfect["force_mae_ev_per_ang"] == 0 and perfect["force_cosine_mean"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape"):
        force_errors(pred, ref[:2])


def test_stress_errors_skip_frames_without_stress():
    ref = np.array([np.zeros(6), np.full(6, np.nan), np.ones(6)])
    pred = np.array([[0.1, -0.1, 0.2, 0.0, 0.0, 0.2], np.zeros(6), np.ones(6)])
    out = stress_errors(pred, ref)
    assert out["n_stress_structures"] == 2
    assert out["stress_mae_ev_per_ang3"] == pytest.approx(0.6 / 12)
    assert out["stress_mae_gpa"] == pytest.approx(0.6 / 12 * 160.21766208, rel=1e-6)  # 1 eV/Å³ = 160.2 GPa
    assert math.isnan(stress_errors(pred[1:2], ref[1:2])["stress_mae_ev_per_ang3"])


def test_rdf_of_a_molecule_counts_neighbours_per_atom():
    # A dimer: 1.2 Å in one frame, 1.7 Å in the other; bins of 0.5 Å up to 2 Å.
    frames = [Atoms("H2", positions=[[0, 0, 0], [0, 0, d]]) for d in (1.2, 1.7)]
    r, n, kind = rdf(frames, r_max=2.0, n_bins=4)
    assert kind == "n(r)"
    np.testing.assert_allclose(r, [0.25, 0.75, 1.25, 1.75])
    # each atom has one neighbour, in bin [1, 1.5) in one frame and [1.5, 2) in the other: 0.5 / 0.5 Å
    np.testing.assert_allclose(n, [0.0, 0.0, 1.0, 1.0])
    assert np.sum(n) * 0.5 == pytest.approx(1.0)  # integral = neighbours per atom


def test_rdf_of_a_small_periodic_cell_counts_every_image():
    # Simple cubic, a = 2.2 Å, one atom per cell: 6 neighbours at 2.2 Å, all periodic images of the atom
    # itself (a minimum-image convention would find none in a cell this small).
    a = 2.2
    atoms = Atoms("Cu", positions=[[0, 0, 0]], cell=[a, a, a], pbc=True)
    r, g, kind = rdf([atoms], r_max=2.5, n_bins=5)
    assert kind == "g(r)"
    shell = 4 / 3 * math.pi * (2.5**3 - 2.0**3)  # volume of the bin [2.0, 2.5) Å
    np.testing.assert_allclose(g, [0, 0, 0, 0, 6 / (shell / a**3)])


def test_rdf_of_an_ideal_gas_is_one():
    # Uniform random points: g(r) = 1 up to noise (~3 % per bin here). A factor-2 slip in the pair count
    # or the density would show at once.
    rng = np.random.default_rng(0)
    box = 20.0
    frames = [Atoms(f"Ar{500}", positions=rng.uniform(0, box, (500, 3)), cell=[box] * 3, pbc=True)
              for _ in range(2)]
    r, g, _ = rdf(frames, r_max=5.0, n_bins=10)
    np.testing.assert_allclose(g[r > 2.0], 1.0, atol=0.1)


def test_rdf_difference():
    assert rdf_difference([1.0, 2.0, 3.0], [1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert rdf_difference([1.0, 1.0], [1.0, 1.0]) == 0.0


class _Sleeper(Calculator):
    """Energy 0, zero forces, after sleeping ``delay`` s; remembers the positions of every call."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, delay):
        super().__init__()
        self.delay, self.seen = delay, []

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        time.sleep(self.delay)
        self.seen.append(self.atoms.positions.copy())
        self.results = {"energy": 0.0, "forces": np.zeros((len(self.atoms), 3))}


def test_time_calls_times_both_on_the_same_displaced_positions():
    fast, slow = _Sleeper(0.001), _Sleeper(0.005)
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.5]])
    out = time_calls({"student": fast, "teacher": slow}, [atoms, atoms], calls=4, warmup=1, progress=False)
    assert out["calls_per_model"] == 8 and len(out["per_structure"]) == 2
    assert 1.0 <= out["student_ms_per_call"] < out["teacher_ms_per_call"]
    assert 1.5 < out["teacher_ms_per_call"] / out["student_ms_per_call"] < 6  # 5 ms vs 1 ms of sleep
    # one calculation per call (the energy after the forces is cached), 5 calls per structure
    assert len(fast.seen) == len(slow.seen) == 10
    np.testing.assert_array_equal(np.array(fast.seen), np.array(slow.seen))  # identical inputs
    moves = np.abs(np.array(fast.seen) - atoms.positions)
    assert 0 < moves.max() < 0.1  # every call displaced, slightly (0.01 Å noise)
    assert not np.array_equal(fast.seen[0], fast.seen[1])


def test_time_calls_takes_turns_in_blocks_as_in_md_and_call_by_call_for_slow_models():
    order = []

    class _Named(_Sleeper):
        def __init__(self, name, delay):
            super().__init__(delay)
            self.label = name

        def calculate(self, *args, **kwargs):
            super().calculate(*args, **kwargs)
            order.append(self.label)

    atoms = Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.5]])
    a, b = _Named("a", 0.0), _Named("b", 0.0)
    time_calls({"a": a, "b": b}, [atoms], calls=6, warmup=1, block=3, progress=False)
    assert "".join(order) == "ab" + "aaabbb" * 2  # the warm-up, then turns of 3 on the same positions
    np.testing.assert_array_equal(np.array(a.seen), np.array(b.seen))
    order.clear()
    slow = _Named("b", 0.02)  # 3 x block x 20 ms > max_seconds: turns of one call
    time_calls({"a": _Named("a", 0.0), "b": slow}, [atoms], calls=4, warmup=1, block=3, max_seconds=0.1,
               progress=False)
    assert "".join(order).startswith("ab" + "ab" * 3)


def test_energy_deviations_are_per_seed_and_per_atom():
    """The parity plot's energies: each structure's E/atom minus the mean of its seed (composition), so
    molecules eV apart do not form clusters that hide the error."""
    from ase.build import molecule

    from mlff_calc.evaluation.comparison import energy_deviations

    images = [molecule("H2O"), molecule("CH4"), molecule("H2O"), molecule("CH4")]
    energies = np.array([-14.0, -24.0, -14.3, -23.0])  # eV
    dev = energy_deviations(images, energies)
    np.testing.assert_allclose(dev, [0.05, -0.1, -0.05, 0.1])  # (±0.15 eV / 3 atoms, ±0.5 eV / 5 atoms)
