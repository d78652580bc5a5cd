"""The whole-model CPU kernel, run through the model, computes the eager path's energy, forces and stress to
round-off, and the model falls back to the eager path where the kernel cannot run."""

import numpy as np
import pytest
import torch

from mlff_calc import StudentCalculator, StudentForceField
from mlff_calc import _keys as K
from mlff_calc.model import fused
from mlff_calc.model.student import randomize_parameters
from mlff_calc.neighbors import neighbor_list, reverse_edges
from mlff_calc.testing.structures import organic_molecule, slab, small_triclinic_cell

STRUCTURES = [organic_molecule(), small_triclinic_cell().repeat(2), slab()]


def test_kernels_build_here():
    # The development and CI machines have g++: a silent fallback would hide a broken build.
    assert fused.available()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 5e-5)])
@pytest.mark.parametrize("atoms", STRUCTURES, ids=lambda a: a.get_chemical_formula())
def test_fused_equals_eager(atoms, dtype, tol):
    model = randomize_parameters(StudentForceField(hidden_dim=24, num_interactions=3, num_rbf=10), seed=7)
    model = model.to(dtype).eval()
    data = {K.ATOMIC_NUMBERS: atoms.numbers, K.POSITIONS: torch.tensor(atoms.positions),
            K.CELL: torch.tensor(atoms.cell.array), K.PBC: torch.tensor(atoms.pbc)}
    stress = bool(atoms.pbc.all())
    assert model.use_fused_path(model.prepare(data))
    fast = model(data, compute_stress=stress)
    model.fused = False
    reference = model(data, compute_stress=stress)
    for key in (K.ENERGY, K.FORCES) + ((K.STRESS,) if stress else ()):
        scale = max(1.0, float(reference[key].detach().abs().max()))
        torch.testing.assert_close(fast[key], reference[key], rtol=0, atol=tol * scale)


def test_training_mode_uses_eager_path():
    model = StudentForceField(hidden_dim=8, num_interactions=1, num_rbf=4)
    atoms = organic_molecule()
    data = model.prepare({K.ATOMIC_NUMBERS: atoms.numbers, K.POSITIONS: torch.tensor(atoms.positions)})
    assert not model.train().use_fused_path(data)  # forces in a loss need a twice-differentiable graph
    assert model.eval().use_fused_path(data)


def test_reverse_edges():
    atoms = small_triclinic_cell()
    edge_index, shifts = (torch.as_tensor(x) for x in neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 5.0))
    rev = reverse_edges(edge_index, shifts, len(atoms))
    assert torch.equal(edge_index[:, rev], edge_index.flip(0))
    assert torch.equal(shifts[rev], -shifts)
    assert torch.equal(rev[rev], torch.arange(len(rev)))
    with pytest.raises(ValueError, match="no reverse edge"):
        reverse_edges(edge_index[:, 1:], shifts[1:], len(atoms))


def test_calculator_fallback_without_kernels(monkeypatch):
    """With the kernels unavailable the calculator silently runs the eager path, same numbers."""
    model = randomize_parameters(StudentForceField(hidden_dim=16, num_interactions=2, num_rbf=8), seed=3)
    atoms = small_triclinic_cell()
    atoms.calc = StudentCalculator(model, device="cpu", dtype="float64")
    fast = atoms.get_forces()
    monkeypatch.setattr(fused, "available", lambda: False)
    atoms.calc = StudentCalculator(model, device="cpu", dtype="float64")
    np.testing.assert_allclose(atoms.get_forces(), fast, atol=1e-12)


def test_kernel_sees_weight_changes():
    """The kernel packs a copy of the weights: an in-place change (an optimiser step, load_state_dict) or a
    dtype change must reach it, or validation during training would score stale weights."""
    model = randomize_parameters(StudentForceField(hidden_dim=16, num_interactions=2, num_rbf=8), seed=4)
    model = model.to(torch.float64).eval()
    atoms = organic_molecule()
    data = {K.ATOMIC_NUMBERS: atoms.numbers, K.POSITIONS: torch.tensor(atoms.positions)}
    before = model(data)[K.ENERGY]
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.1)
    after = model(data)[K.ENERGY]
    model.fused = False
    torch.testing.assert_close(after, model(data)[K.ENERGY], rtol=0, atol=1e-12)
    assert not torch.allclose(before, after)
    model.fused = True
    model.load_state_dict(randomize_parameters(StudentForceField(hidden_dim=16, num_interactions=2, num_rbf=8),
                                               seed=5).state_dict())
    reloaded = model(data)[K.ENERGY]
    model.fused = False
    torch.testing.assert_close(reloaded, model(data)[K.ENERGY], rtol=0, atol=1e-12)
    model.fused = True
    # load_state_dict(assign=True) and plain assignment replace the parameter objects themselves
    model.load_state_dict(randomize_parameters(StudentForceField(hidden_dim=16, num_interactions=2, num_rbf=8),
                                               seed=6).double().state_dict(), assign=True)
    assigned = model(data)[K.ENERGY]
    assert not torch.allclose(assigned, reloaded)
    model.readout[2].bias = torch.nn.Parameter(model.readout[2].bias.detach() + 0.5)
    replaced = model(data)[K.ENERGY]
    model.fused = False
    torch.testing.assert_close(replaced, model(data)[K.ENERGY], rtol=0, atol=1e-12)
    assert not torch.allclose(assigned, replaced)
    model.fused = True
    reloaded = replaced
    single = model.float()(data)[K.ENERGY]
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), reloaded, rtol=1e-5, atol=1e-5)
