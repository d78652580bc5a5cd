"""The student passes the reusable physics checks, with every weight randomised, on every path:
the fused CPU kernels (the calculator's default), the eager PyTorch reference, and with a skin."""

import pytest

from mlff_calc import StudentCalculator, StudentForceField
from mlff_calc.model.student import randomize_parameters
from mlff_calc.testing.physics import CalculatorPhysicsTests


def random_student(hidden_dim: int = 16, seed: int = 0) -> StudentForceField:
    model = StudentForceField(hidden_dim=hidden_dim, num_interactions=2, num_rbf=8, cutoff=5.0)
    randomize_parameters(model, seed=seed)  # readout, filters, embeddings: nothing left at zero
    model.atom_ref.normal_(generator=None)
    model.scale.fill_(1.3)
    model.shift.fill_(-0.2)
    return model


_MODEL = random_student()
_EAGER = random_student()
_EAGER.fused = False


class TestStudentPhysics(CalculatorPhysicsTests):
    cutoff = 5.0

    def make_calculator(self, dtype):
        return StudentCalculator(_MODEL, device="cpu", dtype=dtype)


class TestStudentPhysicsWithSkin(CalculatorPhysicsTests):
    """Same checks through a calculator whose neighbour list carries a large skin."""

    cutoff = 5.0

    def make_calculator(self, dtype):
        return StudentCalculator(_MODEL, device="cpu", dtype=dtype, skin=2.0)


class TestStudentPhysicsEager(CalculatorPhysicsTests):
    """The eager PyTorch path (used for training and on GPUs)."""

    cutoff = 5.0

    def make_calculator(self, dtype):
        return StudentCalculator(_EAGER, device="cpu", dtype=dtype)
