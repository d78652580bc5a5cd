"""The graph: one builder for the calculator (with its skin cache), batches and training collate."""

import numpy as np
import pytest
import torch
from ase.calculators.calculator import InputError as AseInputError

from mlff_calc import StudentCalculator, StudentForceField
from mlff_calc import _keys as K
from mlff_calc import graph as graph_module
from mlff_calc.converter import AtomsConverter
from mlff_calc.data.torch_dataset import N_ATOMS, collate
from mlff_calc.errors import CheckpointError, InputError, ModelOutputError
from mlff_calc.graph import Graph, build_graph
from mlff_calc.model.grad_output import energy_with_derivatives
from mlff_calc.model.student import randomize_parameters
from mlff_calc.neighbors import edge_vectors
from mlff_calc.testing.structures import organic_molecule, slab, small_triclinic_cell

STRUCTURES = [organic_molecule(), small_triclinic_cell(), slab(), organic_molecule(seed=3)[:5]]


@pytest.fixture(scope="module")
def model():
    return randomize_parameters(StudentForceField(hidden_dim=16, num_interactions=2, num_rbf=8), seed=2)


def _batch_args(structures, dtype=torch.float64):
    return (np.concatenate([a.numbers for a in structures]), np.concatenate([a.positions for a in structures]),
            np.stack([a.cell.array for a in structures]), np.stack([a.pbc for a in structures]),
            [len(a) for a in structures], 5.0, dtype)


def _assert_same_graph(a: Graph, b: Graph):
    for name in ("numbers", "positions", "vectors", "cell", "pbc", "batch", "edge_index", "cell_shifts",
                 "reverse", "rowptr", "half", "pairs"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert (a.n_pairs, a.n_structures) == (b.n_pairs, b.n_structures)


# ---- what a graph holds ----------------------------------------------------------------------------
@pytest.mark.parametrize("atoms", STRUCTURES, ids=lambda a: a.get_chemical_formula())
def test_graph_invariants(atoms):
    g = build_graph(*_batch_args([atoms]))
    i, j = g.edge_index
    e = torch.arange(g.n_edges)
    assert g.n_edges > 0 and (torch.diff(i) >= 0).all()  # sorted by receiver
    assert torch.equal(g.rowptr, torch.searchsorted(i, torch.arange(g.n_atoms + 1)))
    assert torch.equal(g.reverse[g.reverse], e) and torch.equal(g.edge_index[:, g.reverse], g.edge_index.flip(0))
    assert torch.equal(g.cell_shifts[g.reverse], -g.cell_shifts)
    assert g.n_pairs * 2 == g.n_edges == len(g.half) and torch.equal(g.half, g.half[g.reverse])
    assert torch.equal(g.pairs[g.half], torch.minimum(e, g.reverse))
    # Edge vectors go with the relative positions and their shifts; all inside the cutoff.
    expected = g.positions[j] - g.positions[i] + g.cell_shifts @ g.cell[0]
    torch.testing.assert_close(g.vectors, expected, rtol=0, atol=1e-12)
    assert (torch.linalg.vector_norm(g.vectors, dim=1) < 5.0).all()
    # ... and with the positions as given.
    raw = torch.as_tensor(atoms.positions)
    d_raw = torch.linalg.vector_norm(raw[j] - raw[i], dim=1) if not atoms.pbc.any() else None
    if d_raw is not None:
        torch.testing.assert_close(torch.linalg.vector_norm(g.vectors, dim=1), d_raw, rtol=0, atol=1e-12)


def test_positions_are_relative_to_a_reference():
    atoms = small_triclinic_cell()
    atoms.positions += 37 * atoms.cell.array[0] - 5 * atoms.cell.array[2]
    g = build_graph(*_batch_args([atoms]))
    frac = g.positions.numpy() @ np.linalg.inv(atoms.cell.array)
    assert (frac >= -1e-12).all() and (frac < 1 + 1e-12).all()  # wrapped into the cell
    molecule = organic_molecule()
    molecule.positions += 1e6
    g = build_graph(*_batch_args([molecule]))
    torch.testing.assert_close(g.positions.mean(0), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-9)


def test_batch_graph_is_the_single_graphs_concatenated():
    singles = [build_graph(*_batch_args([a])) for a in STRUCTURES]
    batch = build_graph(*_batch_args(STRUCTURES))
    atom_offsets = np.cumsum([0] + [g.n_atoms for g in singles])
    edge_offsets = np.cumsum([0] + [g.n_edges for g in singles])
    pair_offsets = np.cumsum([0] + [g.n_pairs for g in singles])
    assert batch.n_structures == len(STRUCTURES) and batch.n_pairs == pair_offsets[-1]
    for b, g in enumerate(singles):
        edges = slice(edge_offsets[b], edge_offsets[b + 1])
        assert torch.equal(batch.edge_index[:, edges], g.edge_index + int(atom_offsets[b]))
        assert torch.equal(batch.reverse[edges], g.reverse + int(edge_offsets[b]))
        assert torch.equal(batch.half[edges], g.half + int(pair_offsets[b]))
        assert torch.equal(batch.vectors[edges], g.vectors) and torch.equal(batch.cell_shifts[edges], g.cell_shifts)
        assert torch.equal(batch.rowptr[atom_offsets[b]:atom_offsets[b + 1] + 1], g.rowptr + int(edge_offsets[b]))
        assert torch.equal(batch.positions[atom_offsets[b]:atom_offsets[b + 1]], g.positions)
        assert (batch.batch[atom_offsets[b]:atom_offsets[b + 1]] == b).all()


def test_batch_results_equal_single_results(model):
    m = model.double().eval()
    singles = [m(build_graph(*_batch_args([a])), compute_stress=True) for a in STRUCTURES]
    out = m(build_graph(*_batch_args(STRUCTURES)), compute_stress=True)
    for key in (K.ENERGY, K.FORCES, K.STRESS):
        torch.testing.assert_close(out[key], torch.cat([s[key] for s in singles]), rtol=0, atol=1e-12, equal_nan=True)


# ---- one builder for every caller ------------------------------------------------------------------
def test_calculator_converter_and_collate_build_the_same_graph():
    items, graphs = [], []
    for atoms in STRUCTURES:
        conv = AtomsConverter(cutoff=5.0, skin=0.0, dtype=torch.float64, device=torch.device("cpu"))
        graphs.append(conv(atoms))
        items.append({
            K.ATOMIC_NUMBERS: torch.as_tensor(atoms.numbers), K.POSITIONS: torch.as_tensor(atoms.positions),
            K.CELL: torch.as_tensor(atoms.cell.array).reshape(1, 3, 3), K.PBC: torch.as_tensor(atoms.pbc).reshape(1, 3),
            N_ATOMS: torch.tensor([len(atoms)]), K.ENERGY: torch.zeros(1, dtype=torch.float64),
            K.FORCES: torch.zeros((len(atoms), 3), dtype=torch.float64),
            K.STRESS: torch.zeros((1, 3, 3), dtype=torch.float64),
        })
    for atoms, item, g in zip(STRUCTURES, items, graphs):
        _assert_same_graph(collate([item], cutoff=5.0)[K.GRAPH], g)
    _assert_same_graph(collate(items, cutoff=5.0)[K.GRAPH], build_graph(*_batch_args(STRUCTURES)))


def test_training_loader_batches_carry_the_graph(tmp_path):
    from mlff_calc.data.hdf5 import write_frames
    from mlff_calc.training.config import TrainConfig
    from mlff_calc.training.data import load_training_data, make_loader

    frames = [{"atomic_numbers": a.numbers, "positions": a.positions, "cell": a.cell.array, "pbc": a.pbc,
               "energy": 0.0, "forces": np.zeros((len(a), 3)), "stress": None, "input_index": k}
              for k, a in enumerate(STRUCTURES * 2)]
    write_frames(tmp_path / "d.h5", frames, {"name": "emt", "options": {}}, {})
    config = TrainConfig()
    config.data.path = str(tmp_path / "d.h5")
    config.data.val_size, config.data.test_size = 1, 1
    data = load_training_data(config, torch.float32)
    loader = make_loader(data, data.train, 3, 5.0, shuffle=False, seed=0)
    batch = next(iter(loader))
    g = batch[K.GRAPH]
    assert isinstance(g, Graph) and g.dtype == torch.float32 and g.n_structures == 3
    _assert_same_graph(g, build_graph(*_batch_args([STRUCTURES[int(i) % 4] for i in data.train[:3]], torch.float32)))


def test_skin_list_is_built_once_and_its_indices_are_reused(monkeypatch):
    builds = []
    real = graph_module.EdgeList.build.__func__
    monkeypatch.setattr(graph_module.EdgeList, "build", classmethod(lambda cls, *a: builds.append(1) or real(cls, *a)))
    conv = AtomsConverter(cutoff=5.0, skin=1.0, dtype=torch.float32, device=torch.device("cpu"))
    atoms = organic_molecule()
    first = conv(atoms)
    rng = np.random.default_rng(0)
    for _ in range(5):
        atoms.positions += rng.normal(0, 0.02, atoms.positions.shape)
        g = conv(atoms)
        # Positions and vectors are new; everything derived from the list is the cached tensor itself.
        for name in ("edge_index", "reverse", "rowptr", "half", "pairs", "numbers", "cell", "batch"):
            assert getattr(g, name) is getattr(first, name), name
        assert not torch.equal(g.vectors, first.vectors)
    assert len(builds) == conv.n_builds == 1
    atoms.positions[0] += 0.6  # beyond skin / 2: rebuild
    conv(atoms)
    assert len(builds) == conv.n_builds == 2


def test_rebuild_rule_at_zero_skin_and_for_non_finite_positions():
    """Zero skin: the same positions reuse the list, any move rebuilds it. NaN positions after a build
    are refused naming the atom (the displacement test sees them, not only a fresh validation)."""
    conv = AtomsConverter(cutoff=5.0, skin=0.0, dtype=torch.float64, device=torch.device("cpu"))
    atoms = organic_molecule()
    conv(atoms)
    conv(atoms)
    assert conv.n_builds == 1
    atoms.positions[2, 1] += 1e-12
    conv(atoms)
    assert conv.n_builds == 2
    atoms.positions[3] = np.nan
    with pytest.raises(InputError, match="first is atom 3"):
        conv(atoms)
    atoms.positions[3] = np.inf
    with pytest.raises(InputError, match="first is atom 3"):
        conv(atoms)


def test_skin_filter_renumbers_like_a_fresh_list():
    """Edges between the cutoff and the skin are dropped; the indices equal a fresh list's."""
    atoms = small_triclinic_cell().repeat((2, 1, 1))
    conv = AtomsConverter(cutoff=4.0, skin=2.0, dtype=torch.float64, device=torch.device("cpu"))
    rng = np.random.default_rng(1)
    for _ in range(4):
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        g = conv(atoms)
        fresh = AtomsConverter(cutoff=4.0, skin=0.0, dtype=torch.float64, device=torch.device("cpu"))(atoms)
        assert conv._cache.edges.reverse.shape[0] > g.n_edges  # the filter did drop edges
        _assert_same_graph(g, fresh)
    assert conv.n_builds == 1


def test_model_does_not_build_neighbour_lists(model, monkeypatch):
    g = build_graph(*_batch_args(STRUCTURES, torch.float32))
    g64 = build_graph(*_batch_args(STRUCTURES[:1], torch.float64))
    m = model.float().eval()
    monkeypatch.setattr(graph_module, "neighbor_list", lambda *a, **k: pytest.fail("neighbour list built"))
    out = m(g, compute_stress=True)
    assert torch.isfinite(out[K.FORCES]).all()
    with pytest.raises(ValueError, match="float64"):
        m(g64)  # no silent cast


# ---- derivatives ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fused", [True, False])
def test_edge_route_equals_strain_route(model, fused):
    """Forces and virial from dE/dr_e equal autograd w.r.t. positions and strain (float64)."""
    m = model.double().eval()
    m.fused = fused
    structures = [small_triclinic_cell(), organic_molecule(), slab()]
    g = build_graph(*_batch_args(structures))
    out = m(g, compute_stress=True)
    data = {K.POSITIONS: g.positions, K.CELL: g.cell, K.PBC: g.pbc, K.BATCH: g.batch, K.EDGE_INDEX: g.edge_index,
            K.CELL_SHIFTS: g.cell_shifts}
    m.fused = False  # the strain route differentiates w.r.t. positions: eager path
    ref = energy_with_derivatives(lambda d: m.atomic_energies(g, edge_vectors(d)), data, compute_stress=True)
    m.fused = True
    for key in (K.ENERGY, K.FORCES, K.VIRIAL, K.STRESS):
        torch.testing.assert_close(out[key], ref[key], rtol=0, atol=1e-10, equal_nan=True)
    assert torch.isfinite(out[K.STRESS][0]).all() and torch.isnan(out[K.STRESS][1:]).all()


def test_training_mode_keeps_the_graph_of_the_forces(model):
    m = randomize_parameters(StudentForceField(hidden_dim=8, num_interactions=1, num_rbf=4), seed=1).train()
    out = m(build_graph(*_batch_args(STRUCTURES[:2], torch.float32)), compute_stress=True)
    (out[K.FORCES].pow(2).sum() + out[K.STRESS][0].pow(2).sum()).backward()
    # Every weight but the last bias (a constant energy per atom has no forces) learns from forces.
    missing = [name for name, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == ["readout.2.bias"]


# ---- TorchScript (model export) ---------------------------------------------------------------------
class _Exported(torch.nn.Module):
    def __init__(self, student: StudentForceField):
        super().__init__()
        self.student = student

    def forward(self, numbers: torch.Tensor, vectors: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        features = self.student.representation(numbers, vectors, edge_index)
        return self.student.energy_head(numbers, features)


def test_eager_model_is_scriptable(model):
    m = model.double().eval()
    scripted = torch.jit.script(_Exported(m))
    g = build_graph(*_batch_args([organic_molecule()]))
    m.fused = False
    torch.testing.assert_close(scripted(g.numbers, g.vectors, g.edge_index), m.atomic_energies(g), rtol=0, atol=1e-12)
    m.fused = True
    assert set(m.state_dict()) == set(StudentForceField(hidden_dim=16, num_interactions=2, num_rbf=8).state_dict())


# ---- errors -----------------------------------------------------------------------------------------
def test_validation_errors_are_input_errors(model):
    calc = StudentCalculator(model, device="cpu")
    atoms = organic_molecule()
    atoms.positions[2, 0] = np.nan
    for bad in (atoms, small_triclinic_cell()[:0]):
        with pytest.raises(InputError) as info:
            calc.get_potential_energy(bad)
        assert isinstance(info.value, AseInputError) and isinstance(info.value, ValueError)


def test_batch_errors_name_the_structure(model):
    calc = StudentCalculator(model, device="cpu")
    images = [organic_molecule(seed=k) for k in range(20)]
    images[17].positions[4] = images[17].positions[2] + [0.01, 0.0, 0.0]
    with pytest.raises(InputError, match=r"^structure 17: atoms 2 \(O\) and 4 \(H\)"):
        calc.batch_calculate(images, max_atoms=40)  # 17 sits in a later batch: still its index
    images[17] = organic_molecule()
    images[3].numbers[0] = 0
    with pytest.raises(InputError, match="^structure 3: atom 0 has atomic number 0"):
        calc.batch_calculate(images)


def test_non_finite_weights_are_refused_at_construction(model, tmp_path):
    broken = randomize_parameters(StudentForceField(hidden_dim=16, num_interactions=2, num_rbf=8), seed=2)
    with torch.no_grad():
        broken.readout[0].weight[0, 0] = float("nan")
    with pytest.raises(InputError, match="weights are not finite.*readout.0.weight"):
        StudentCalculator(broken, device="cpu")
    broken.save(tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match=r"broken.pt has non-finite weights \(readout.0.weight\)"):
        StudentCalculator.from_checkpoint(tmp_path / "broken.pt", device="cpu")


def test_non_finite_output_is_a_model_output_error(model, monkeypatch):
    calc = StudentCalculator(model, device="cpu")
    atoms = organic_molecule()
    nan = float("nan")
    monkeypatch.setattr(calc.model, "inference",
                        lambda g, want_stress=False: (torch.full((g.n_atoms,), nan), torch.zeros((g.n_atoms, 3)), None))
    with pytest.raises(ModelOutputError, match="non-finite energy.*weights are finite.*outside what the model"):
        calc.get_potential_energy(atoms)
