"""PaiNN layers (``painn``), the student energy model (``student``) and its autograd derivatives (``grad_output``)."""

from .painn import PaiNN, GaussianRBF, CosineCutoff
from .student import StudentForceField

__all__ = ["PaiNN", "GaussianRBF", "CosineCutoff", "StudentForceField"]
