"""A torch ``Dataset`` over an HDF5 dataset file and a ``collate`` for variable-size structures (the one
train/validation/test split is ``mlff_calc.training.data.split_frames``).

Item (one structure of ``n`` atoms; keys from :mod:`mlff_calc._keys`)::

    atomic_numbers (n,)       int64
    positions      (n, 3)     float64 | Å, always: the graph takes float64 differences before any cast
    cell           (1, 3, 3)  float64 | Å, rows are lattice vectors (float64 for the same reason)
    pbc            (1, 3)     bool
    n_atoms        (1,)       int64
    energy         (1,)       float | eV
    forces         (n, 3)     float | eV/Å
    stress         (1, 3, 3)  float | eV/Å³, NaN where the teacher gave none
    hvp_probes     (n, K, 3)  float | only when the file has curvature labels (K: most probes of any
    hvp            (n, K, 3)  float | eV/Å²  structure; zeros past this structure's own count)
    n_probes       (1,)       int64

``collate`` concatenates ``B`` items into one batch with ``N`` atoms: the per-structure tensors become
``(B, ...)``, the per-atom ones ``(N, ...)``, and ``batch (N,)`` says which structure each atom is in.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from .. import _keys as K
from .reader import DatasetReader

N_ATOMS = "n_atoms"  # (B,) int64 | atoms per structure
_PER_ATOM = (K.ATOMIC_NUMBERS, K.POSITIONS, K.FORCES)
_PER_STRUCTURE = (K.CELL, K.PBC, N_ATOMS, K.ENERGY, K.STRESS)


class H5Dataset(torch.utils.data.Dataset):
    """Structures of ``path`` as dicts of tensors (see the module docstring).

    ``dtype``: float dtype of the labels (float64 = the stored precision); positions and cell stay
    float64, so that far from the origin nothing is lost before :func:`collate` takes differences. ``preload``: read the whole
    file into memory once (fast epochs); otherwise every item is read lazily, and the HDF5 handle is
    reopened in each DataLoader worker. ``max_probes``: pad the curvature labels to at least this many
    slots K (items of several files batched together need the same K; 0 = the file's own).
    """

    def __init__(
        self,
        path: str | os.PathLike | DatasetReader,
        dtype: torch.dtype = torch.float64,
        preload: bool = False,
        max_probes: int = 0,
    ):
        self.reader = path if isinstance(path, DatasetReader) else DatasetReader(path)
        self.dtype = dtype
        self._arrays = self.reader.arrays() if preload else None
        # Curvature labels: probe p of structure s has rows probe_rows[p]:probe_rows[p] + n_atoms[s].
        probed = self.reader.hvp_structure
        self.max_probes = max(int(self.reader.n_probes.max()) if len(probed) else 0, int(max_probes))
        self._probe_rows = np.concatenate([[0], np.cumsum(self.reader.n_atoms[probed])]).astype(np.int64)
        self._probes_of = {}
        for p, s in enumerate(probed.tolist()):
            self._probes_of.setdefault(s, []).append(p)

    def __len__(self) -> int:
        return len(self.reader)

    def _frame(self, i: int) -> dict:
        if self._arrays is None:
            return self.reader.frame(i)
        a, o = self._arrays, self.reader.offsets
        atoms = slice(o[i], o[i + 1])
        return {
            "atomic_numbers": a["structures/atomic_numbers"][atoms],
            "positions": a["structures/positions"][atoms],
            "cell": a["structures/cells"][i],
            "pbc": a["structures/pbc"][i],
            "energy": a["labels/energy"][i],
            "forces": a["labels/forces"][atoms],
            "stress": a["labels/stress"][i],
        }

    def _hvp(self, i: int, n: int) -> tuple[np.ndarray, np.ndarray, int]:
        """``(probes (n, K, 3), hvp (n, K, 3), count)`` of structure ``i``, zero-padded to K."""
        probes, values = np.zeros((2, n, self.max_probes, 3))
        mine = self._probes_of.get(i, [])
        columns = self._arrays if self._arrays is not None else self.reader._file()
        for k, p in enumerate(mine):
            rows = slice(self._probe_rows[p], self._probe_rows[p + 1])
            probes[:, k] = columns["labels/hvp_probe"][rows]
            values[:, k] = columns["labels/hvp"][rows]
        return probes, values, len(mine)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} structures")
        i = int(i) % len(self)
        fr = self._frame(i)
        real = dict(dtype=self.dtype)
        item = {
            K.ATOMIC_NUMBERS: torch.as_tensor(np.asarray(fr["atomic_numbers"], dtype=np.int64)),
            K.POSITIONS: torch.tensor(fr["positions"], dtype=torch.float64),
            K.CELL: torch.tensor(fr["cell"], dtype=torch.float64).reshape(1, 3, 3),
            K.PBC: torch.tensor(np.asarray(fr["pbc"], dtype=bool)).reshape(1, 3),
            N_ATOMS: torch.tensor([len(fr["atomic_numbers"])], dtype=torch.int64),
            K.ENERGY: torch.tensor([fr["energy"]], **real),
            K.FORCES: torch.tensor(fr["forces"], **real),
            K.STRESS: torch.tensor(fr["stress"], **real).reshape(1, 3, 3),
        }
        if self.max_probes:
            probes, values, count = self._hvp(i, len(fr["atomic_numbers"]))
            item[K.HVP_PROBES] = torch.tensor(probes, **real)
            item[K.HVP] = torch.tensor(values, **real)
            item[K.N_PROBES] = torch.tensor([count], dtype=torch.int64)
        return item


class JoinedDataset(torch.utils.data.Dataset):
    """Several :class:`H5Dataset` as one: index ``i`` runs through ``parts[0]``, then ``parts[1]``, ...

    Training uses it for a dataset plus frames that always train (``data.train_only``). Every part must
    pad its curvature labels to the same K (``H5Dataset(max_probes=...)``), so that items batch together.
    """

    def __init__(self, parts: Sequence[H5Dataset]):
        if not parts or len({p.max_probes for p in parts}) != 1:
            raise ValueError("JoinedDataset needs at least one part, all with the same max_probes")
        self.parts = list(parts)
        self.max_probes = self.parts[0].max_probes
        self.starts = np.cumsum([0] + [len(p) for p in self.parts]).astype(np.int64)  # (parts + 1,)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _locate(self, i: int) -> tuple[H5Dataset, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} structures")
        i = int(i) % len(self)
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.parts[k], i - int(self.starts[k])

    def _frame(self, i: int) -> dict:
        part, j = self._locate(i)
        return part._frame(j)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        part, j = self._locate(i)
        return part[j]


def collate(items: Sequence[dict[str, torch.Tensor]], cutoff: float | None = None) -> dict[str, torch.Tensor]:
    """Concatenate items into one batch, adding ``batch (N,)``.

    With ``cutoff`` (Å) also build the model's input, ``graph`` (:class:`mlff_calc.graph.Graph`, in the
    labels' dtype, by the same builder as the calculator's), and keep the neighbour list it came from
    as ``edge_index (2, E)`` int64 (offset into the batch) and ``cell_shifts (E, 3)`` (shifts relative to
    the stored positions, in the labels' dtype). Use ``functools.partial(collate, cutoff=5.0)`` as a DataLoader
    ``collate_fn``; ``graph.to(device)`` moves it.
    """
    if not items:
        raise ValueError("cannot collate an empty list of structures")
    keys = (*_PER_ATOM, *_PER_STRUCTURE) + ((K.HVP_PROBES, K.HVP, K.N_PROBES) if K.HVP in items[0] else ())
    out = {key: torch.cat([it[key] for it in items]) for key in keys}
    out[K.BATCH] = torch.repeat_interleave(torch.arange(len(items)), out[N_ATOMS])
    if cutoff is not None:
        from ..graph import build_graph

        dtype = out[K.ENERGY].dtype
        raw_shifts: list[np.ndarray] = []
        graph = build_graph(
            out[K.ATOMIC_NUMBERS].numpy(), out[K.POSITIONS].detach().cpu().double().numpy(),
            out[K.CELL].double().numpy(), out[K.PBC].numpy(), out[N_ATOMS].numpy(), cutoff, dtype,
            raw_shifts=raw_shifts,
        )
        out[K.GRAPH] = graph
        out[K.EDGE_INDEX] = graph.edge_index
        out[K.CELL_SHIFTS] = torch.as_tensor(np.concatenate(raw_shifts)).to(dtype)
    return out

