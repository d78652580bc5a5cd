"""Training data: read and check the labels, split, fit per-element reference energies, build loaders.

Documented behaviour for bad input (``ValueError`` naming the file and frame, never a torch error):

* an empty dataset, or too few frames for one training frame + the validation/test sizes: error;
* fewer training frames than ``batch_size``: the batch size is clamped to the training-set size, with
  a warning;
* a non-finite energy or position, forces NaN for only some atoms of a frame or only some frames,
  a stress with some but not all components NaN: error naming the frame;
* no force labels at all (every force NaN): error, unless ``loss.force_weight`` is 0, which trains on
  energies only (a file without ``/labels/forces`` is refused by the reader itself);
* stress NaN means "not labelled" and is masked out of the loss.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data.reader import DatasetReader
from ..data.torch_dataset import H5Dataset, JoinedDataset, collate
from ..errors import DataError, InputError
from .config import TrainConfig


@dataclass
class TrainingData:
    """The preloaded dataset, its split and what training needs to know about its labels."""

    dataset: H5Dataset | JoinedDataset
    train: np.ndarray  # (n_train,) int64 frame indices, sorted; data.train_only frames follow, repeated
    val: np.ndarray
    test: np.ndarray
    elements: list[int]  # atomic numbers present in the training split, sorted
    has_forces: bool
    has_stress: bool  # at least one training frame has a stress label
    teacher: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)
    train_only: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # data.train_only


def _frame_name(i: int, reader: DatasetReader) -> str:
    return f"frame {i} (input frame {int(reader.input_index[i])})"


def check_labels(arrays: dict[str, np.ndarray], reader: DatasetReader,
                 need_forces: bool) -> tuple[bool, bool]:
    """Refuse non-finite inputs and half-labelled frames; return ``(has_forces, has_stress)``."""
    path, offsets = reader.path, reader.offsets
    n_atoms = reader.n_atoms

    def first_bad(per_frame_bad: np.ndarray, what: str) -> None:
        bad = np.flatnonzero(per_frame_bad)
        if len(bad):
            more = f" (and {len(bad) - 1} more frames)" if len(bad) > 1 else ""
            raise DataError(f"{path}: {_frame_name(int(bad[0]), reader)} has {what}{more}")

    def per_frame(atom_values: np.ndarray) -> np.ndarray:  # (A,) bool -> (S,) count per frame
        if not len(atom_values):
            return np.zeros(0, dtype=np.int64)
        return np.add.reduceat(atom_values.astype(np.int64), offsets[:-1])

    first_bad(~np.isfinite(arrays["labels/energy"]), "a non-finite energy label")
    first_bad(per_frame(~np.isfinite(arrays["structures/positions"]).all(axis=1)) > 0, "non-finite positions")
    first_bad(~np.isfinite(arrays["structures/cells"]).all(axis=(1, 2)), "a non-finite cell")

    nan_atoms = per_frame(~np.isfinite(arrays["labels/forces"]).all(axis=1))  # (S,) atoms without forces
    first_bad((nan_atoms > 0) & (nan_atoms < n_atoms), "non-finite forces on some of its atoms")
    unlabelled = nan_atoms == n_atoms
    has_forces = not unlabelled.all()
    if has_forces:
        first_bad(unlabelled, "no force labels (NaN) while other frames have them")
    elif need_forces:
        raise DataError(f"{path} has no force labels (every force is NaN); "
                         "set loss.force_weight: 0 to train on energies only")

    finite = np.isfinite(arrays["labels/stress"]).reshape(len(n_atoms), 9).sum(axis=1)
    first_bad((finite > 0) & (finite < 9), "a stress label with some but not all components NaN")
    return has_forces, bool((finite == 9).any())


def split_sizes(n: int, val_size: float, test_size: float) -> tuple[int, int, int]:
    """``(n_train, n_val, n_test)``: sizes < 1 are fractions (at least one frame), >= 1 counts."""

    def count(size: float) -> int:
        if size == 0:
            return 0
        return int(size) if size >= 1 else max(1, int(round(size * n)))

    n_val, n_test = count(val_size), count(test_size)
    n_train = n - n_val - n_test
    if n_train < 1:
        raise InputError(f"the dataset has {n} frames: too few for {n_val} validation + {n_test} test "
                         "frames and at least one training frame; label more frames or lower "
                         "data.val_size/data.test_size")
    return n_train, n_val, n_test


def split_frames(n: int, val_size: float, test_size: float,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The package's one train/validation/test split: ``(train, val, test)`` sorted int64 frame indices.

    Sizes as in :func:`split_sizes`; disjoint and complete; a function of ``(n, sizes, seed)`` alone
    (the training seed never changes it).
    """
    n_train, n_val, _ = split_sizes(n, val_size, test_size)
    order = np.random.default_rng(seed).permutation(n)
    bounds = ((0, n_train), (n_train, n_train + n_val), (n_train + n_val, n))
    return tuple(np.sort(order[a:b]).astype(np.int64) for a, b in bounds)


def load_training_data(config: TrainConfig, dtype: torch.dtype) -> TrainingData:
    """Read ``config.data.path`` into memory, check it and split it (the same split on every process).

    With ``data.train_only``, that file's frames follow the dataset's (indices ``n..n+m-1``) and join the
    training split only, ``data.train_only_repeat`` times each; the dataset's own split is unchanged.
    """
    path = config.data.path
    reader = DatasetReader(path)
    if len(reader) == 0:
        raise DataError(f"{path} holds no frames; label some structures first (mlff-calc label)")
    arrays = reader.arrays()
    need_forces = config.loss.force_weight > 0
    has_forces, _ = check_labels(arrays, reader, need_forces=need_forces)

    train, val, test = split_frames(len(reader), config.data.val_size, config.data.test_size,
                                    config.data.split_seed)
    n_train, n_val, n_test = len(train), len(val), len(test)
    readers, columns = [reader], [arrays]
    extra = _read_train_only(config, reader, has_forces, need_forces)
    if extra is not None:
        readers.append(extra)
        columns.append(extra.arrays())
        added = np.arange(len(reader), len(reader) + len(extra), dtype=np.int64)
        train = np.concatenate([train, np.repeat(added, config.data.train_only_repeat)])

    numbers = np.concatenate([a["structures/atomic_numbers"] for a in columns])
    if len(numbers) and int(numbers.max()) > config.model.max_z:
        raise InputError(f"config model.max_z: {config.model.max_z} is below atomic number "
                         f"{int(numbers.max())} in {path}; raise model.max_z (at most 118)")
    frame_of_atom = np.repeat(np.arange(sum(len(r) for r in readers)),
                              np.concatenate([r.n_atoms for r in readers]))
    elements = sorted(int(z) for z in np.unique(numbers[np.isin(frame_of_atom, train)]))
    unseen = sorted(set(np.unique(numbers).tolist()) - set(elements))
    if unseen:
        warnings.warn(f"elements {unseen} occur only in validation/test frames, never in training; "
                      "the student will refuse them", stacklevel=2)
    stress = np.concatenate([a["labels/stress"].reshape(len(r), 9) for a, r in zip(columns, readers)])
    n_probes = np.concatenate([r.n_probes for r in readers])
    summary = {
        "path": str(reader.path), "uid": reader.header["uid"], "n_frames": len(reader),
        "n_train": n_train, "n_val": n_val, "n_test": n_test, "split_seed": config.data.split_seed,
        "n_atoms_min": int(min(r.n_atoms.min() for r in readers)),
        "n_atoms_max": int(max(r.n_atoms.max() for r in readers)),
        "elements": sorted(int(z) for z in np.unique(numbers)),
        "has_forces": has_forces, "stress_frames": int(np.isfinite(stress).all(axis=1).sum()),
        "hvp_frames": int((n_probes > 0).sum()), "hvp_probes": int(n_probes.sum()),
    }
    if extra is not None:
        summary["train_only"] = {"path": str(extra.path), "uid": extra.header["uid"], "n_frames": len(extra),
                                 "repeat": config.data.train_only_repeat}
    k = max(int(n.max()) if len(n) else 0 for n in (r.n_probes for r in readers))
    parts = [H5Dataset(r, dtype=dtype, preload=True, max_probes=k) for r in readers]
    for r in readers:
        r.close()  # everything is in memory now; leave the files free for writers
    return TrainingData(
        dataset=parts[0] if len(parts) == 1 else JoinedDataset(parts), train=train, val=val, test=test,
        elements=elements, has_forces=has_forces,
        has_stress=bool(np.isfinite(stress[np.unique(train)]).all(axis=1).any()),
        teacher=reader.header["teacher"], summary=summary,
        train_only=np.arange(len(reader), len(reader) + (len(extra) if extra is not None else 0),
                             dtype=np.int64),
    )


def _read_train_only(config: TrainConfig, reader: DatasetReader, has_forces: bool,
                     need_forces: bool) -> DatasetReader | None:
    """The ``data.train_only`` file, checked against the main dataset (None when not set)."""
    path = config.data.train_only
    if not path:
        return None
    extra = DatasetReader(path)
    if len(extra) == 0:
        raise DataError(f"config data.train_only: {path} holds no frames; remove the setting or label some")
    if extra.teacher != reader.teacher:
        raise DataError(f"config data.train_only: {path} holds labels from teacher {extra.teacher}, but "
                        f"{reader.path} from {reader.teacher}; a student learns one teacher")
    extra_forces, _ = check_labels(extra.arrays(), extra, need_forces=need_forces)
    if extra_forces != has_forces:
        raise DataError(f"config data.train_only: {path} {'has' if extra_forces else 'lacks'} force labels "
                        f"and {reader.path} {'has' if has_forces else 'lacks'} them; label both alike")
    return extra


def fit_energy_statistics(data: TrainingData, max_z: int) -> tuple[np.ndarray, float, float]:
    """Per-element reference energies, energy scale and shift from the training split.

    ``atom_ref (max_z+1,)`` eV: least squares ``E ≈ Σ_Z n_Z ref_Z`` (minimum-norm when compositions are
    collinear, e.g. one molecule: then it fits the mean energy). ``shift`` (eV/atom): mean residual
    per-atom energy. ``scale`` (eV): RMS of the training force components (the network output is O(1) per
    atom and its gradients O(1)/Å, so forces start at the right magnitude); the std of the residual
    per-atom energies without forces; 1 when both vanish. Each training frame counts once, however often
    it is repeated per epoch.
    """
    frames = [data.dataset._frame(int(i)) for i in np.unique(data.train)]
    counts = element_counts(frames, data.elements)
    energy = np.array([float(fr["energy"]) for fr in frames])
    n_atoms = np.array([len(fr["atomic_numbers"]) for fr in frames])
    ref, *_ = np.linalg.lstsq(counts, energy, rcond=None)
    atom_ref = np.zeros(max_z + 1)
    atom_ref[data.elements] = ref
    residual = (energy - counts @ ref) / n_atoms  # eV/atom
    shift = float(residual.mean())
    scale = 0.0
    if data.has_forces:
        scale = float(np.sqrt(np.mean(np.concatenate([fr["forces"] for fr in frames]) ** 2)))
    if not scale > 1e-6:
        scale = float(residual.std())
    if not scale > 1e-6:
        scale = 1.0
    return atom_ref, scale, shift


def element_counts(frames: list[dict], elements: list[int]) -> np.ndarray:
    """``(S, len(elements))``: the atoms of each element in each frame (``dataset._frame`` dicts)."""
    column = {z: k for k, z in enumerate(elements)}
    counts = np.zeros((len(frames), len(elements)))
    for row, fr in enumerate(frames):
        for z, c in zip(*np.unique(fr["atomic_numbers"], return_counts=True)):
            counts[row, column[int(z)]] = c
    return counts


class GroupedBatches(torch.utils.data.Sampler):
    """Shuffled batches of positions ``0..n-1`` in which the positions in ``group`` are batched only with
    each other (the ``data.train_only`` frames: with curvature labels, a batch costs a second backward pass,
    ~2.3x, so they are packed into as few batches as possible). The batch order is shuffled too, so they
    are spread over the epoch. Reshuffled with ``(seed, epoch)`` (``set_epoch``): a resumed run sees the
    same batches. Process ``rank`` of ``world`` takes every ``world``-th batch, the list padded by
    repeating its first batches so that every process steps equally often (as ``DistributedSampler``)."""

    def __init__(self, n: int, group: np.ndarray, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        grouped = np.isin(np.arange(n), group)
        self.parts = (np.flatnonzero(~grouped), np.flatnonzero(grouped))
        self.batch_size, self.seed, self.rank, self.world, self.epoch = batch_size, seed, rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = [perm[i:i + self.batch_size] for part in self.parts if len(part)
                   for perm in [rng.permutation(part)] for i in range(0, len(perm), self.batch_size)]
        batches = [batches[i] for i in rng.permutation(len(batches))]
        pad = -len(batches) % self.world
        return batches + batches[:pad]

    def __iter__(self):
        return iter([b.tolist() for b in self._batches()[self.rank::self.world]])

    def __len__(self) -> int:
        count = sum(-(-len(part) // self.batch_size) for part in self.parts)
        return -(-count // self.world)


def set_epoch(loader: torch.utils.data.DataLoader, epoch: int) -> None:
    """Reshuffle a training loader of :func:`make_loader` for ``epoch``."""
    sampler = loader.batch_sampler if isinstance(loader.batch_sampler, GroupedBatches) else loader.sampler
    sampler.set_epoch(epoch)


def make_loader(data: TrainingData, indices: np.ndarray, batch_size: int, cutoff: float, *, shuffle: bool,
                seed: int, rank: int = 0, world: int = 1) -> torch.utils.data.DataLoader:
    """Batches of ``indices`` with precomputed neighbour lists.

    Training (``shuffle``): a ``DistributedSampler`` (also for one process) reshuffles with ``seed + epoch``
    (call :func:`set_epoch`), so the order is a function of the epoch alone and a resumed run sees the same
    batches; ``data.train_only`` frames are batched among themselves (:class:`GroupedBatches`).
    Evaluation: process ``rank`` takes every ``world``-th frame, no padding, so summed metrics over
    processes count each frame once.
    """
    subset = torch.utils.data.Subset(data.dataset, indices.tolist())
    fn = functools.partial(collate, cutoff=cutoff)
    if shuffle and len(data.train_only):
        group = np.flatnonzero(np.isin(indices, data.train_only))
        batches = GroupedBatches(len(indices), group, batch_size, seed, rank, world)
        return torch.utils.data.DataLoader(subset, batch_sampler=batches, collate_fn=fn)
    if shuffle:
        sampler = torch.utils.data.DistributedSampler(subset, num_replicas=world, rank=rank, shuffle=True,
                                                      seed=seed)
        return torch.utils.data.DataLoader(subset, batch_size=batch_size, sampler=sampler, collate_fn=fn)
    shard = torch.utils.data.Subset(data.dataset, indices[rank::world].tolist())
    return torch.utils.data.DataLoader(shard, batch_size=batch_size, shuffle=False, collate_fn=fn)
