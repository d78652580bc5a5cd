"""The whole-model CPU kernel (``fused.whole``) equals the eager model and its autograd gradient.

Reference: ``model.representation(numbers, vectors, edge_index)`` + readout + scale/shift/atom_ref,
differentiated by autograd: forces with respect to positions, ``edge_grad`` with respect to the edge
vectors (each edge with its own distance, as the eager model without the CSR path sees them).
Differences are measured relative to the largest magnitude of each quantity.
"""

import dataclasses

import numpy as np
import pytest
import torch
from ase import Atoms

from mlff_calc.errors import InputError
from mlff_calc.model.fused import build, whole
from mlff_calc.model.student import StudentForceField, randomize_parameters
from mlff_calc.graph import build_graph
from mlff_calc.testing.structures import organic_molecule, slab, small_triclinic_cell

F64_TOLERANCE = 1e-12
# float32 is compared with the float64 truth: within 1e-5, or within a small factor of the eager float32
# model's own error (edge gradients of the small triclinic cell come from sums that cancel to 1e-5 of
# their terms: eager float32 is off by 2e-5 there, the kernel by 2-4e-5 depending on summation order).
F32_TOLERANCE = 1e-5
F32_FACTOR = 4


def with_isolated_atom() -> Atoms:
    atoms = organic_molecule()
    atoms += Atoms("N", positions=[[30.0, 0.0, 0.0]])  # > cutoff from everything: no edges
    return atoms


STRUCTURES = {
    "molecule": [organic_molecule()],
    "triclinic": [small_triclinic_cell()],  # heights ~3 Å < 5 Å cutoff: many images of each atom
    "slab": [slab()],
    "batch": [organic_molecule(seed=1), small_triclinic_cell(seed=2)],
    "isolated_atom": [with_isolated_atom()],
}


def make_model(hidden, blocks, dtype, seed=0):
    model = randomize_parameters(StudentForceField(hidden_dim=hidden, num_interactions=blocks, num_rbf=12), seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        model.atom_ref.copy_(torch.randn(model.atom_ref.shape, generator=gen, dtype=torch.float64))
        model.scale.fill_(1.7)
        model.shift.fill_(-0.3)
    return model.to(dtype).eval()


def graph(structures, dtype):
    """Batched graph (the one builder, ``mlff_calc.graph``): positions (requires grad), vectors (a function of
    them) and the kernel's CSR inputs."""
    g = build_graph(
        np.concatenate([a.numbers for a in structures]), np.concatenate([a.positions for a in structures]),
        np.stack([a.cell.array for a in structures]), np.stack([a.pbc for a in structures]),
        [len(a) for a in structures], 5.0, dtype,
    )
    positions = g.positions.detach().clone().requires_grad_(True)
    i, j = g.edge_index
    vectors = positions[j] - positions[i] + torch.einsum("ea,eab->eb", g.cell_shifts, g.cell[g.batch[i]])
    csr = (g.rowptr, j.contiguous(), g.reverse, g.half, g.n_pairs)
    return g.numbers, positions, vectors, g.edge_index, csr


def eager(model, numbers, positions, vectors, edge_index):
    vectors.retain_grad()
    features = model.representation(numbers, vectors, edge_index)
    energies = model.scale * model.readout(features).squeeze(-1) + model.shift + model.atom_ref[numbers]
    energies.sum().backward()
    return energies.detach(), -positions.grad, vectors.grad


def drop_csr(graph_inputs):
    numbers, positions, vectors, edge_index, _ = graph_inputs
    return numbers, positions, vectors, edge_index


def deviation(actual, expected):
    """Largest absolute difference relative to the largest magnitude of ``expected`` (0 when empty)."""
    if expected.numel() == 0:
        return 0.0
    return float((actual.double() - expected.double()).abs().max() / expected.double().abs().max())


def test_whole_kernel_builds_here():
    # The development and CI machines have g++: a silent fallback would hide a broken build.
    assert whole.available()


@pytest.mark.parametrize("hidden,blocks", [(8, 1), (64, 3), (128, 2)])
@pytest.mark.parametrize("name", list(STRUCTURES))
def test_whole_equals_eager_autograd_float64(name, hidden, blocks):
    model = make_model(hidden, blocks, torch.float64, seed=hidden + blocks)
    numbers, positions, vectors, edge_index, csr = graph(STRUCTURES[name], torch.float64)
    energies, forces, edge_grad = whole.evaluate(whole.pack(model), numbers, vectors.detach().contiguous(), *csr)
    reference = eager(model, numbers, positions, vectors, edge_index)
    assert energies.shape == (len(numbers),) and forces.shape == (len(numbers), 3) and edge_grad.shape == vectors.shape
    assert energies.dtype == forces.dtype == edge_grad.dtype == torch.float64 and not energies.requires_grad
    names = ("energies", "forces", "edge gradients")
    for what, actual, expected in zip(names, (energies, forces, edge_grad), reference):
        assert deviation(actual, expected) <= F64_TOLERANCE, f"{what}: {deviation(actual, expected):.3g}"
    if name == "isolated_atom":
        assert torch.equal(forces[-1], torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("hidden,blocks", [(8, 1), (64, 3), (128, 2)])
@pytest.mark.parametrize("name", list(STRUCTURES))
def test_whole_float32_is_as_accurate_as_eager_float32(name, hidden, blocks):
    seed = hidden + blocks
    truth = eager(make_model(hidden, blocks, torch.float64, seed), *drop_csr(graph(STRUCTURES[name], torch.float64)))
    model = make_model(hidden, blocks, torch.float32, seed)
    numbers, positions, vectors, edge_index, csr = graph(STRUCTURES[name], torch.float32)
    result = whole.evaluate(whole.pack(model), numbers, vectors.detach().contiguous(), *csr)
    assert all(t.dtype == torch.float32 for t in result)
    eager32 = eager(model, numbers, positions, vectors, edge_index)
    for what, actual, own, expected in zip(("energies", "forces", "edge gradients"), result, eager32, truth):
        allowed = max(F32_TOLERANCE, F32_FACTOR * deviation(own, expected))
        assert deviation(actual, expected) <= allowed, f"{what}: {deviation(actual, expected):.3g} > {allowed:.3g}"


def test_no_edges_at_all():
    model = make_model(16, 2, torch.float64)
    atoms = Atoms("CO", positions=[[0, 0, 0], [0, 0, 12.0]])
    numbers, _, vectors, edge_index, csr = graph([atoms], torch.float64)
    assert vectors.shape == (0, 3)
    energies, forces, edge_grad = whole.evaluate(whole.pack(model), numbers, vectors.detach(), *csr)
    with torch.no_grad():
        features = model.representation(numbers, vectors, edge_index)
        expected = model.scale * model.readout(features).squeeze(-1) + model.shift + model.atom_ref[numbers]
    assert deviation(energies, expected) <= F64_TOLERANCE
    assert torch.equal(forces, torch.zeros(2, 3, dtype=torch.float64)) and edge_grad.shape == (0, 3)


def test_threads_and_energy_only_give_the_same_numbers():
    model = make_model(32, 2, torch.float64)
    numbers, _, vectors, _, csr = graph([small_triclinic_cell().repeat(2)], torch.float64)
    packed = whole.pack(model)
    one = whole.evaluate(packed, numbers, vectors.detach(), *csr, threads=1)
    for threads in (2, 3):
        many = whole.evaluate(packed, numbers, vectors.detach(), *csr, threads=threads)
        for a, b in zip(one, many):
            assert torch.equal(a, b)  # atom-owned sums in pair order, fixed tiles: same bits for any thread count
    energies, forces, edge_grad = whole.evaluate(packed, numbers, vectors.detach(), *csr, compute_gradient=False)
    assert torch.equal(energies, one[0]) and forces is None and edge_grad is None


def test_bad_inputs_are_refused():
    model = make_model(8, 1, torch.float64)
    numbers, _, vectors, _, csr = graph([organic_molecule()], torch.float64)
    packed = whole.pack(model)
    with pytest.raises(InputError, match="float32"):
        whole.evaluate(packed, numbers, vectors.detach().float(), *csr)
    with pytest.raises(InputError, match="atomic numbers"):
        whole.evaluate(packed, numbers + 200, vectors.detach(), *csr)
    with pytest.raises(InputError, match="inconsistent graph"):
        whole.evaluate(packed, numbers, vectors.detach(), *csr[:-1], csr[-1] + 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pack_refuses_other_dtypes(dtype):
    with pytest.raises(InputError, match="float32 and float64"):
        whole.pack(make_model(8, 1, torch.float32).to(dtype))


def test_pack_refuses_a_model_off_the_cpu():
    # "meta" stands in for any non-CPU device (CUDA is tested below where present).
    with pytest.raises(InputError, match="on the CPU"):
        whole.pack(make_model(8, 1, torch.float32).to("meta"))


def test_pack_refuses_a_cuda_model():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here")
    with pytest.raises(InputError, match="on the CPU"):
        whole.pack(make_model(8, 1, torch.float32).to("cuda"))


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """A whole-kernel loader that has not tried yet, with an empty cache directory."""
    monkeypatch.setattr(build, "_WHOLE", dataclasses.replace(build._WHOLE, lib=None, tried=False))
    monkeypatch.setenv("MLFF_CALC_CACHE", str(tmp_path))
    return tmp_path


def test_disabled_by_environment(fresh_build, monkeypatch):
    monkeypatch.setenv("MLFF_CALC_NO_FUSED", "1")
    assert not whole.available()
    with pytest.raises(whole.KernelUnavailableError):
        whole.pack(make_model(8, 1, torch.float32))
    assert not list(fresh_build.rglob("*.so"))


def test_no_compiler_warns_and_reports_unavailable(fresh_build, monkeypatch):
    monkeypatch.delenv("MLFF_CALC_NO_FUSED", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        assert not whole.available()
    with pytest.raises(whole.KernelUnavailableError):
        whole.pack(make_model(8, 1, torch.float32))
    assert not list(fresh_build.rglob("*.so"))


def test_a_fresh_build_compiles_and_runs(fresh_build, monkeypatch):
    monkeypatch.delenv("MLFF_CALC_NO_FUSED", raising=False)
    assert whole.available()
    assert len(list(fresh_build.rglob("painn_model_*.so"))) == 1
    model = make_model(8, 1, torch.float64)
    numbers, positions, vectors, edge_index, csr = graph([organic_molecule()], torch.float64)
    energies, _, _ = whole.evaluate(whole.pack(model), numbers, vectors.detach(), *csr)
    assert deviation(energies, eager(model, numbers, positions, vectors, edge_index)[0]) <= F64_TOLERANCE


def test_edge_gradients_give_the_stress():
    """sum_e r_e ⊗ dE/dr_e is dE/dε (x' = x (1 + ε)): symmetrised and over the volume, the model's stress."""
    from mlff_calc import _keys as K

    atoms = small_triclinic_cell()
    model = make_model(16, 2, torch.float64)
    model.fused = False
    numbers, _, vectors, _, csr = graph([atoms], torch.float64)
    _, _, edge_grad = whole.evaluate(whole.pack(model), numbers, vectors.detach(), *csr)
    de_dstrain = vectors.detach().T @ edge_grad
    stress = 0.5 * (de_dstrain + de_dstrain.T) / atoms.get_volume()
    data = {K.ATOMIC_NUMBERS: atoms.numbers, K.POSITIONS: torch.tensor(atoms.positions),
            K.CELL: torch.tensor(atoms.cell.array), K.PBC: torch.tensor(atoms.pbc)}  # fmt: skip
    expected = model(data, compute_stress=True)[K.STRESS][0]
    assert deviation(stress, expected) <= F64_TOLERANCE


def test_release_workspace_then_evaluate_again():
    model = make_model(8, 1, torch.float64)
    numbers, _, vectors, _, csr = graph([organic_molecule()], torch.float64)
    packed = whole.pack(model)
    before = whole.evaluate(packed, numbers, vectors.detach(), *csr)
    whole.release_workspace()
    after = whole.evaluate(packed, numbers, vectors.detach(), *csr)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
