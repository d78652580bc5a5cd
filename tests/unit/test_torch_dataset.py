"""Torch Dataset over an HDF5 file, collate of variable-size structures, deterministic splits."""

import functools
import pickle

import numpy as np
import pytest
import torch

from mlff_calc import _keys as K
from mlff_calc.data.hdf5 import write_frames
from mlff_calc.data.torch_dataset import N_ATOMS, H5Dataset, collate
from mlff_calc.neighbors import batch_neighbor_list


def frame(i: int) -> dict:
    rng = np.random.default_rng(i)
    n = 2 + i % 5
    return {
        "atomic_numbers": rng.integers(1, 30, n),
        "positions": rng.uniform(0, 4, size=(n, 3)),
        "cell": np.eye(3) * 4.0 + rng.normal(size=(3, 3)) * 0.05,
        "pbc": np.array([True, True, i % 2 == 0]),
        "energy": float(rng.normal()),
        "forces": rng.normal(size=(n, 3)),
        "stress": rng.normal(size=(3, 3)) if i % 2 == 0 else None,
        "input_index": i,
    }


@pytest.fixture(scope="module")
def h5file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "d.h5"
    write_frames(path, [frame(i) for i in range(11)], {"name": "emt", "options": {}}, {})
    return path


@pytest.mark.parametrize("preload", [False, True])
def test_items_have_documented_shapes_dtypes_and_values(h5file, preload):
    ds = H5Dataset(h5file, preload=preload)
    assert len(ds) == 11
    for i in (0, 3, 10):
        item, want = ds[i], frame(i)
        n = len(want["atomic_numbers"])
        shapes = {
            K.ATOMIC_NUMBERS: (n,),
            K.POSITIONS: (n, 3),
            K.CELL: (1, 3, 3),
            K.PBC: (1, 3),
            N_ATOMS: (1,),
            K.ENERGY: (1,),
            K.FORCES: (n, 3),
            K.STRESS: (1, 3, 3),
        }
        assert {k: tuple(v.shape) for k, v in item.items()} == shapes
        assert item[K.ATOMIC_NUMBERS].dtype == torch.int64 and item[K.PBC].dtype == torch.bool
        assert item[K.POSITIONS].dtype == torch.float64
        np.testing.assert_array_equal(item[K.POSITIONS].numpy(), want["positions"])
        np.testing.assert_array_equal(item[K.FORCES].numpy(), want["forces"])
        assert item[K.ENERGY].item() == want["energy"] and item[N_ATOMS].item() == n
        if want["stress"] is None:
            assert torch.isnan(item[K.STRESS]).all()
        else:
            np.testing.assert_array_equal(item[K.STRESS][0].numpy(), want["stress"])
    assert H5Dataset(h5file, dtype=torch.float32)[0][K.FORCES].dtype == torch.float32
    with pytest.raises(IndexError):
        ds[11]


def test_collate_concatenates_with_a_batch_index(h5file):
    ds = H5Dataset(h5file)
    items = [ds[i] for i in (1, 4, 2)]
    b = collate(items)
    sizes = [len(frame(i)["atomic_numbers"]) for i in (1, 4, 2)]
    n = sum(sizes)
    assert (
        b[K.POSITIONS].shape == (n, 3) and b[K.FORCES].shape == (n, 3) and b[K.ATOMIC_NUMBERS].shape == (n,)
    )
    assert b[K.CELL].shape == (3, 3, 3) and b[K.PBC].shape == (3, 3) and b[K.STRESS].shape == (3, 3, 3)
    assert b[K.ENERGY].shape == (3,) and b[N_ATOMS].tolist() == sizes
    assert b[K.BATCH].tolist() == [0] * sizes[0] + [1] * sizes[1] + [2] * sizes[2]
    np.testing.assert_array_equal(
        b[K.POSITIONS][sizes[0] : sizes[0] + sizes[1]].numpy(), frame(4)["positions"]
    )
    assert b[K.ENERGY].tolist() == [frame(i)["energy"] for i in (1, 4, 2)]
    assert torch.isnan(b[K.STRESS][0]).all() and torch.isfinite(b[K.STRESS][2]).all()
    assert K.EDGE_INDEX not in b  # the model builds the neighbour list itself


def test_collate_can_precompute_neighbour_lists(h5file):
    ds = H5Dataset(h5file)
    b = collate([ds[i] for i in range(4)], cutoff=3.0)
    edges, shifts = batch_neighbor_list(
        b[K.POSITIONS].numpy(), b[K.CELL].numpy(), b[K.PBC].numpy(), b[N_ATOMS].numpy(), 3.0
    )
    assert b[K.EDGE_INDEX].dtype == torch.int64 and b[K.EDGE_INDEX].shape[0] == 2
    np.testing.assert_array_equal(b[K.EDGE_INDEX].numpy(), edges)
    np.testing.assert_array_equal(b[K.CELL_SHIFTS].numpy(), shifts)
    i, j = b[K.EDGE_INDEX]
    assert (b[K.BATCH][i] == b[K.BATCH][j]).all()  # edges never cross structures


def test_dataloader_workers_reopen_the_file(h5file):
    ds = H5Dataset(h5file)
    ds[0]  # opens the handle in this process
    assert pickle.loads(pickle.dumps(ds)).reader._h5 is None
    loader = torch.utils.data.DataLoader(
        ds, batch_size=4, num_workers=2, collate_fn=functools.partial(collate, cutoff=None)
    )
    energies = torch.cat([b[K.ENERGY] for b in loader])
    assert energies.tolist() == [frame(i)["energy"] for i in range(11)]
