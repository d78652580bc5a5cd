"""Sampling around seed structures with EMT as the teacher: modes, determinism, physics, failures."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.cluster import Icosahedron
from ase.io import read, write

from mlff_calc.data.structures import write_extxyz
from mlff_calc.workflow.sampling import (
    SamplingConfig,
    SamplingWarning,
    md_frames,
    read_seed_files,
    sample_structures,
    split_frames,
    strain_frames,
)

FAST = dict(frames=12, interval=3, timestep=2.0)


@pytest.fixture
def seeds():
    cell = bulk("Cu", cubic=True)  # 4 atoms, fully periodic
    slab = fcc111("Cu", (2, 2, 2), vacuum=4.0)  # pbc T T F
    cluster = Icosahedron("Cu", 2)  # 13 atoms, no pbc
    return [("cell@0", cell), ("slab@0", slab), ("cluster@0", cluster)]


def positions_of(frames):
    return [f.positions.copy() for f in frames]


class FlakyEMT(Calculator):
    """EMT that goes wrong after ``after`` calls: NaN forces, huge forces, or an exception."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, after, how):
        super().__init__()
        self.after, self.how, self.calls = after, how, 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.calls += 1
        emt = EMT()
        emt.calculate(self.atoms, ["energy", "forces"], all_changes)
        self.results = {k: emt.results[k] for k in ("energy", "free_energy", "forces")}
        if self.calls > self.after:
            if self.how == "raise":
                raise RuntimeError("SCF not converged")
            self.results["forces"] = self.results["forces"] * np.nan if self.how == "nan" else \
                self.results["forces"] + 50.0 * np.sign(self.atoms.positions - self.atoms.positions.mean(0))


# ---- configuration and plan ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [dict(temperatures=()), dict(temperatures=(300, -5)), dict(frames=0),
                                 dict(interval=0), dict(timestep=0), dict(rattle=-0.1), dict(strain=0.7),
                                 dict(friction=0), dict(warmup=-1)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        SamplingConfig(**bad)


def test_split_frames_even_and_complete():
    assert split_frames(10, 4) == [3, 3, 2, 2]
    assert split_frames(2, 4) == [1, 1, 0, 0]
    assert all(sum(split_frames(n, m)) == n for n in range(20) for m in range(1, 6))


def test_modes_and_counts_strain_only_for_fully_periodic(seeds):
    config = SamplingConfig(temperatures=(300, 600), **FAST)
    frames = list(sample_structures(seeds, EMT(), config))
    assert len(frames) == 3 * config.frames
    by_seed = {i: [f.info["mode"] for f in frames if f.info["seed_index"] == i] for i in range(3)}
    assert by_seed[0] == ["md"] * 6 + ["rattle"] * 3 + ["strain"] * 3  # 12 over 4 modes
    for i in (1, 2):  # slab and cluster: no strain, 12 over 3 modes
        assert by_seed[i] == ["md"] * 8 + ["rattle"] * 4
    for frame in frames:
        seed = seeds[frame.info["seed_index"]][1]
        assert frame.info["source"] == seeds[frame.info["seed_index"]][0]
        assert (frame.pbc == seed.pbc).all() and (frame.numbers == seed.numbers).all()
        assert frame.calc is None and "energy" not in frame.info  # no labels in samples
        if frame.info["mode"] != "strain":
            np.testing.assert_allclose(frame.cell.array, seed.cell.array)
    md = [f for f in frames if f.info["mode"] == "md" and f.info["seed_index"] == 0]
    assert [f.info["temperature"] for f in md] == [300.0] * 3 + [600.0] * 3
    assert [f.info["step"] for f in md] == [3, 6, 9] * 2


def test_single_atom_seeds_get_strain_or_themselves():
    config = SamplingConfig(temperatures=(300, 600), **FAST)
    primitive = bulk("Cu")  # 1 atom: MD and rattles would only translate it
    atom = Atoms("Cu", positions=[[1.0, 2.0, 3.0]])
    assert config.plan(primitive) == [("strain", 0.0, 0, 12)]
    assert config.plan(atom) == [("seed", 0.0, 0, 1)]
    frames = list(sample_structures([("p", primitive), ("a", atom)], EMT(), config))
    assert [f.info["mode"] for f in frames] == ["strain"] * 12 + ["seed"]
    np.testing.assert_array_equal(frames[-1].positions, atom.positions)


def test_deterministic_for_a_seed_and_independent_of_other_structures(seeds):
    config = SamplingConfig(temperatures=(500,), seed=7, **FAST)
    first = list(sample_structures(seeds, EMT(), config))
    again = list(sample_structures(seeds, EMT(), config))
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.cell.array, b.cell.array)
        assert a.info == b.info
    # Streams are keyed by (seed, structure index, mode): dropping later seeds leaves earlier frames alone.
    alone = list(sample_structures(seeds[:1], EMT(), config))
    for a, b in zip(alone, first[: len(alone)], strict=True):
        np.testing.assert_array_equal(a.positions, b.positions)
    other = list(sample_structures(seeds, EMT(), SamplingConfig(temperatures=(500,), seed=8, **FAST)))
    assert not any(np.allclose(a.positions, b.positions) for a, b in zip(first, other))


def test_rattle_and_strain_frames(seeds):
    cell = seeds[0][1].repeat(2)
    config = SamplingConfig(temperatures=(300,), frames=60, rattle=0.1, strain=0.03)
    frames = list(sample_structures([("cell", cell)], EMT(), config))
    rattled = [f for f in frames if f.info["mode"] == "rattle"]
    assert len(rattled) == 20
    stds = [np.std(f.positions - cell.positions) for f in rattled]
    assert 0.04 <= min(stds) and max(stds) <= 0.17 and np.std(stds) > 0.01  # std in [0.5, 1.5] x 0.1 Å

    strained = list(strain_frames(cell, 20, 0.03, rattle=0.0, rng=np.random.default_rng(0)))
    for frame in strained:
        eps = np.linalg.solve(cell.cell.array, frame.cell.array) - np.eye(3)  # cell' = cell @ (I + eps)
        np.testing.assert_allclose(eps, eps.T, atol=1e-12)
        assert 1e-4 < np.abs(eps).max() <= 0.03 + 1e-12
        # Atoms move with the cell: fractional coordinates are unchanged.
        np.testing.assert_allclose(frame.get_scaled_positions(wrap=False),
                                   cell.get_scaled_positions(wrap=False), atol=1e-12)
    with pytest.raises(ValueError, match="fully periodic"):
        list(strain_frames(seeds[1][1], 1, 0.03, 0.0, np.random.default_rng(0)))


def test_md_reaches_target_temperature():
    """Langevin with EMT on a 32-atom Cu cell: the kinetic temperature averages to the target."""
    atoms = bulk("Cu", cubic=True).repeat(2)
    for target in (300.0, 900.0):
        config = SamplingConfig(temperatures=(target,), interval=10, timestep=2.0, friction=0.05, warmup=100)
        frames = list(md_frames(atoms, EMT(), target, 40, config, np.random.default_rng(3)))
        temps = np.array([f.info["kinetic_temperature"] for f in frames])
        assert len(frames) == 40 and frames[-1].info["step"] == 100 + 400
        assert temps.mean() == pytest.approx(target, rel=0.12)
        # Canonical fluctuations of a 32-atom kinetic temperature: relative std ~ sqrt(2 / 93) = 0.15.
        assert 0.07 < temps.std() / target < 0.3
        displacement = np.linalg.norm(frames[-1].positions - atoms.positions, axis=1)
        assert displacement.mean() > 0.05 and displacement.max() < 1.5  # moved, stayed a crystal


def test_md_molecule_stays_together():
    cluster = Icosahedron("Cu", 2)
    config = SamplingConfig(temperatures=(300,), interval=5, timestep=2.0)
    frames = list(md_frames(cluster, EMT(), 300.0, 6, config, np.random.default_rng(0)))
    assert len(frames) == 6 and not frames[-1].pbc.any()
    # No centre-of-mass drift, although the Langevin noise kicks every atom.
    np.testing.assert_allclose(frames[-1].get_center_of_mass(), cluster.get_center_of_mass(), atol=1e-8)


@pytest.mark.parametrize("how, reason", [("nan", "non-finite forces"), ("huge", "kinetic temperature"),
                                         ("raise", "teacher raised RuntimeError: SCF not converged")])
def test_md_blowup_stops_with_warning(how, reason):
    atoms = bulk("Cu", cubic=True).repeat(2)
    config = SamplingConfig(temperatures=(300,), interval=5, timestep=2.0)
    calc = FlakyEMT(after=12, how=how)
    with pytest.warns(SamplingWarning, match=reason):
        frames = list(md_frames(atoms, calc, 300.0, 10, config, np.random.default_rng(0)))
    assert 1 <= len(frames) < 10
    assert all(np.isfinite(f.positions).all() and f.info["kinetic_temperature"] < 3000 for f in frames)


def test_md_teacher_error_on_start_structure_propagates():
    config = SamplingConfig(temperatures=(300,))
    with pytest.raises(RuntimeError, match="SCF not converged"):
        list(md_frames(bulk("Cu", cubic=True), FlakyEMT(after=0, how="raise"), 300.0, 3, config,
                       np.random.default_rng(0)))


# ---- input and output ----------------------------------------------------------------------------------


def test_read_seed_files_every_frame_and_clear_errors(tmp_path):
    path = tmp_path / "two.extxyz"
    write(path, [bulk("Cu", cubic=True), bulk("Al", cubic=True)])
    seeds = read_seed_files([path])
    assert [s for s, _ in seeds] == [f"{path}@0", f"{path}@1"]
    assert seeds[1][1].get_chemical_formula() == "Al4"

    with pytest.raises(FileNotFoundError, match="missing.xyz"):
        read_seed_files([tmp_path / "missing.xyz"])
    garbage = tmp_path / "garbage.extxyz"
    garbage.write_text("this is\nnot a structure file\n")
    with pytest.raises(ValueError, match="cannot read structures from .*garbage.extxyz"):
        read_seed_files([garbage])
    empty = tmp_path / "empty.extxyz"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.extxyz"):
        read_seed_files([empty])
    with pytest.raises(ValueError, match="no structure files"):
        read_seed_files([])
    flat = Atoms("Cu", cell=[[3, 0, 0], [0, 3, 0], [0, 0, 0]], pbc=True)
    write(tmp_path / "flat.extxyz", flat)
    with pytest.raises(ValueError, match="degenerate"):
        read_seed_files([tmp_path / "flat.extxyz"])


def test_write_extxyz_roundtrip_and_keeps_partial_work(tmp_path, seeds):
    config = SamplingConfig(temperatures=(300,), **FAST)
    frames = list(sample_structures(seeds, EMT(), config))
    out = tmp_path / "sub" / "frames.extxyz"
    assert write_extxyz(out, iter(frames)) == len(frames)
    back = read(out, ":")
    assert not (tmp_path / "sub" / "frames.partial.extxyz").exists()
    for a, b in zip(frames, back, strict=True):
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-7)
        assert (a.pbc == b.pbc).all() and b.calc is None
        assert {k: b.info[k] for k in ("seed_index", "source", "mode", "temperature", "step")} == \
               {k: a.info[k] for k in ("seed_index", "source", "mode", "temperature", "step")}
    assert "forces" not in back[0].arrays and "energy" not in back[0].info

    def dies_after_three():
        yield from frames[:3]
        raise KeyboardInterrupt

    broken = tmp_path / "broken.extxyz"
    with pytest.raises(KeyboardInterrupt) as info:
        write_extxyz(broken, dies_after_three())
    partial = tmp_path / "broken.partial.extxyz"
    assert not broken.exists() and len(read(partial, ":")) == 3
    assert str(partial) in "".join(getattr(info.value, "__notes__", [str(partial)]))


def test_electronic_state_is_kept_but_labels_are_not():
    atoms = bulk("Cu", cubic=True)
    atoms.info.update(charge=1, energy=-3.0, config_type="x")
    atoms.set_initial_magnetic_moments([1, 0, 0, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error", SamplingWarning)
        frame = next(sample_structures([("a", atoms)], EMT(), SamplingConfig(temperatures=(300,), frames=3)))
    assert frame.info["charge"] == 1 and "energy" not in frame.info and "config_type" not in frame.info
    np.testing.assert_array_equal(frame.get_initial_magnetic_moments(), [1, 0, 0, 0])
