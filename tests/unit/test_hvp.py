"""Curvature labels from forces: probe directions and finite-difference Hessian-vector products."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT

from mlff_calc.errors import InputError
from mlff_calc.teachers.hvp import epsilon_scan, fd_hvp, probe_directions


class Quadratic(Calculator):
    """E = 1/2 (x - x0)ᵀ K (x - x0) + c Σ (x - x0)⁴: exact Hessian-vector products are known."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, x0, K, quartic=0.0):
        super().__init__()
        self.x0, self.K, self.quartic = x0.reshape(-1), K, quartic

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        d = self.atoms.positions.reshape(-1) - self.x0
        self.results = {"energy": 0.5 * d @ self.K @ d + self.quartic * np.sum(d**4),
                        "forces": -(self.K @ d + 4 * self.quartic * d**3).reshape(-1, 3)}

    def hvp(self, positions, v):
        d = positions.reshape(-1) - self.x0
        return (self.K @ v.reshape(-1) + 12 * self.quartic * d**2 * v.reshape(-1)).reshape(-1, 3)


def _quadratic_system(n=4, quartic=0.0, seed=0):
    rng = np.random.default_rng(seed)
    atoms = Atoms("H" * n, positions=rng.normal(size=(n, 3)) * 2)
    a = rng.normal(size=(3 * n, 3 * n))
    calc = Quadratic(atoms.positions.copy() + 0.1, a @ a.T, quartic)
    return atoms, calc


def test_probes_are_orthonormal_and_reproducible():
    p = probe_directions(5, 4, seed=3)
    flat = p.reshape(4, -1)
    np.testing.assert_allclose(flat @ flat.T, np.eye(4), atol=1e-12)
    np.testing.assert_array_equal(p, probe_directions(5, 4, seed=3))
    assert not np.allclose(p, probe_directions(5, 4, seed=4))


def test_forces_mode_points_the_first_probe_along_the_forces():
    forces = np.random.default_rng(0).normal(size=(6, 3))
    p = probe_directions(6, 3, seed=1, mode="forces", forces=forces)
    np.testing.assert_allclose(p[0], forces / np.linalg.norm(forces), atol=1e-12)
    np.testing.assert_allclose(p.reshape(3, -1) @ p.reshape(3, -1).T, np.eye(3), atol=1e-12)


def test_central_difference_is_exact_on_a_quadratic_surface():
    atoms, calc = _quadratic_system()
    probes = probe_directions(len(atoms), 3, seed=0)
    hv = fd_hvp(calc, atoms, probes, epsilon=0.05)
    exact = np.stack([calc.hvp(atoms.positions, v) for v in probes])
    np.testing.assert_allclose(hv, exact, rtol=1e-9, atol=1e-9)


def test_error_is_second_order_in_epsilon():
    # With a quartic term the central difference is off by exactly 4 c ε² v³: halving ε quarters it.
    atoms, calc = _quadratic_system(quartic=0.7)
    probes = probe_directions(len(atoms), 2, seed=1)
    exact = np.stack([calc.hvp(atoms.positions, v) for v in probes])
    rows = epsilon_scan(calc, atoms, probes, epsilons=(0.04, 0.02, 0.01), reference=exact)
    errors = [r["max_abs_error"] for r in rows]
    assert errors[0] > 1e-6
    assert errors[0] / errors[1] == pytest.approx(4.0, rel=0.05)
    assert errors[1] / errors[2] == pytest.approx(4.0, rel=0.05)


def test_emt_converges_at_second_order():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=1)
    probes = probe_directions(len(atoms), 2, seed=0)
    rows = epsilon_scan(EMT(), atoms, probes, epsilons=(0.08, 0.04, 0.02, 0.01))
    errors = {r["epsilon"]: r["rms_error"] for r in rows}
    # Against the Richardson value of the two largest ε the smaller ones converge like ε²: 0.02 -> 0.01 quarters.
    assert errors[0.02] / errors[0.01] == pytest.approx(4.0, rel=0.2)


@pytest.mark.parametrize("bad", [np.zeros((2, 3)), np.zeros((1, 5, 3))])
def test_bad_probe_shapes_are_refused(bad):
    atoms, calc = _quadratic_system()
    with pytest.raises(InputError, match="probes must have shape"):
        fd_hvp(calc, atoms, bad)


def test_bad_epsilon_and_counts_are_refused():
    atoms, calc = _quadratic_system()
    with pytest.raises(InputError, match="epsilon"):
        fd_hvp(calc, atoms, probe_directions(len(atoms), 1), epsilon=0.0)
    with pytest.raises(InputError, match="probes <= 3 x atoms"):
        probe_directions(2, 7)
    with pytest.raises(InputError, match="needs the frame's forces"):
        probe_directions(2, 1, mode="forces")
