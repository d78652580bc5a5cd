"""On-policy frames: student MD proposes candidates, a scorer ranks them, a diverse subset is labelled.

* :func:`student_md_candidates` runs Langevin NVT with the student from each seed at each temperature and
  returns the frames it visited. A trajectory that blows up (:class:`~mlff_calc.errors.MDBlowUp`) or whose
  molecule changes its bonding (:func:`bonds_intact`) keeps its frames up to that point, and its last
  ``LAST_FRAMES`` frames are flagged ``pre_failure``: they are where the student goes wrong, the most
  valuable frames a teacher can label.
* A *scorer* maps frames to one number each (eV/Å), larger = more worth a teacher call. Pluggable
  (:func:`make_scorer`): ``uncertainty`` (the student's own ``forces_uncertainty.max()``, when its
  calculator supports ``uncertainty=True``), ``committee`` (max per-atom |F_current - F_previous| between the
  current and the previous round's student: a committee of two that costs no extra training) or
  ``diversity`` (no scores; selection by diversity alone, round 1's fallback). ``auto`` takes the first that
  is available in that order.
* :func:`select_frames` takes the best-scored candidates (``pool_factor`` x ``n``, plus every
  ``pre_failure`` frame) and picks ``n`` of them by greedy farthest-point sampling on a cheap descriptor
  (:func:`descriptors`), starting from the best score; two near-identical frames are never both picked.
* :func:`cut_at_failure_score` ends a trajectory at its first frame scored above a trust level: where the
  student is that unsure, its MD is no longer the system's (a runaway periodic cell keeps its bonds, so
  :func:`bonds_intact` cannot see it); labelling what comes after spends teacher calls on configurations the
  system never visits, whose huge forces then dominate the next training.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from ase import Atoms

from ..errors import InputError, MDBlowUp

SCORERS = ("auto", "uncertainty", "committee", "diversity")
LAST_FRAMES = 2  # frames before a blow-up or a broken bond flagged pre_failure
BOND_FACTOR = 1.3  # a bond: distance < 1.3 x (sum of covalent radii)
DESCRIPTOR_BINS = 24

Scorer = Callable[[list[Atoms]], np.ndarray]  # frames -> (n_frames,) scores, eV/Å


# ---- descriptor and selection ----------------------------------------------------------------------------
def descriptors(frames: Sequence[Atoms], cutoff: float = 5.0, bins: int = DESCRIPTOR_BINS) -> np.ndarray:
    """``(n_frames, n_pairs * bins)``: per element pair, a Gaussian-smeared histogram of interatomic
    distances in [0.5, cutoff] Å per atom. Invariant to rotation, translation and permutation; periodic
    images counted (ASE's neighbour list). Frames of different composition differ in their pair channels.
    """
    from ase.neighborlist import neighbor_list

    elements = sorted({int(z) for a in frames for z in a.numbers})
    pairs = {(a, b): k for k, (a, b) in enumerate((a, b) for i, a in enumerate(elements)
                                                   for b in elements[i:])}
    centres = np.linspace(0.5, cutoff, bins)
    width = (cutoff - 0.5) / bins
    out = np.zeros((len(frames), len(pairs) * bins))
    for f, atoms in enumerate(frames):
        i, j, d = neighbor_list("ijd", atoms, cutoff)
        keep = i < j if not atoms.pbc.any() else np.ones(len(i), bool)
        zi, zj, d = atoms.numbers[i[keep]], atoms.numbers[j[keep]], d[keep]
        lo, hi = np.minimum(zi, zj), np.maximum(zi, zj)
        smear = np.exp(-0.5 * ((d[:, None] - centres[None, :]) / width) ** 2)  # (n_pairs, bins)
        for (a, b), k in pairs.items():
            sel = (lo == a) & (hi == b)
            if sel.any():
                out[f, k * bins:(k + 1) * bins] = smear[sel].sum(0) / len(atoms)
    return out


def select_frames(candidates: Sequence[Atoms], scores: np.ndarray | None, n: int, *, pool_factor: float = 3.0,
                  must_consider: Sequence[int] = (), near_identical: float = 0.01,
                  descriptor: Callable[[Sequence[Atoms]], np.ndarray] = descriptors) -> list[int]:
    """Indices of at most ``n`` candidates: high score first, then as different from each other as possible.

    The pool is the ``ceil(pool_factor * n)`` best-scored candidates plus ``must_consider`` (pre-failure
    frames); ``scores=None`` (diversity alone) pools every candidate. The first pick is the best score,
    each next one the pool frame farthest (descriptor distance) from all picked so far, ties to the better
    score. A frame closer than ``near_identical`` x (mean descriptor norm) to a picked one is never picked,
    so fewer than ``n`` may come back.
    """
    if n < 0 or pool_factor < 1:
        raise InputError(f"select_frames: need n >= 0 and pool_factor >= 1, got {n}, {pool_factor}")
    m = len(candidates)
    if m == 0 or n == 0:
        return []
    s = np.zeros(m) if scores is None else np.asarray(scores, float)
    if s.shape != (m,):
        raise InputError(f"select_frames: {m} candidates but scores of shape {s.shape}")
    s = np.where(np.isfinite(s), s, np.inf)  # a non-finite score is the student failing: most wanted
    order = np.argsort(-s, kind="stable")
    pool = order if scores is None else order[:int(np.ceil(pool_factor * n))]
    pool = np.array(list(dict.fromkeys([*pool.tolist(), *[int(i) for i in must_consider]])), dtype=int)
    pool = pool[np.argsort(-s[pool], kind="stable")]  # best score first: argmax ties go to it
    x = descriptor([candidates[i] for i in pool])
    tol = near_identical * float(np.mean(np.linalg.norm(x, axis=1)) or 1.0)
    picked = [0]
    min_d = np.linalg.norm(x - x[0], axis=1)
    while len(picked) < n:
        k = int(np.argmax(min_d))
        if min_d[k] <= tol:  # everything left is a near-copy of a picked frame
            break
        picked.append(k)
        min_d = np.minimum(min_d, np.linalg.norm(x - x[k], axis=1))
    return [int(pool[k]) for k in picked]


# ---- scorers ---------------------------------------------------------------------------------------------
def uncertainty_scorer(student: str | Path, probe: Atoms, device: str = "cpu") -> Scorer | None:
    """``forces_uncertainty.max()`` per frame (eV/Å), or None when the calculator or checkpoint offers
    none (an older calculator, or a checkpoint without calibration: ``InputError``). ``probe``: a structure
    the student can evaluate (a seed), used once to see whether the results carry the key."""
    from ..calculator import StudentCalculator

    try:
        calc = StudentCalculator.from_checkpoint(student, device=device, uncertainty=True)
        calc.calculate(probe.copy(), ["energy", "forces"])
    except (TypeError, InputError):
        return None
    if "forces_uncertainty" not in calc.results:  # ASE's Calculator takes unknown keywords as parameters
        return None

    def score(frames: list[Atoms]) -> np.ndarray:
        out = np.empty(len(frames))
        for k, atoms in enumerate(frames):
            calc.calculate(atoms.copy(), ["energy", "forces"])
            out[k] = float(np.max(calc.results["forces_uncertainty"]))
        return out

    return score


def committee_scorer(student: str | Path, previous: str | Path, device: str = "cpu") -> Scorer:
    """Max over atoms of |F_student - F_previous| (eV/Å): where two consecutive students disagree."""
    from ..calculator import StudentCalculator

    a = StudentCalculator.from_checkpoint(student, device=device)
    b = StudentCalculator.from_checkpoint(previous, device=device)

    def score(frames: list[Atoms]) -> np.ndarray:
        fa, fb = a.batch_calculate(frames), b.batch_calculate(frames)
        return np.array([np.linalg.norm(x["forces"] - y["forces"], axis=1).max() for x, y in zip(fa, fb)])

    return score


def make_scorer(kind: str, student: str | Path, previous: str | Path | None, probe: Atoms,
                device: str = "cpu") -> tuple[str, Scorer | None]:
    """``(name actually used, scorer)``; scorer None = diversity alone. ``auto``: uncertainty if the
    student has it, else committee from round 2 on, else diversity. An explicit kind that is not available
    falls back the same way, with a warning."""
    if kind not in SCORERS:
        raise InputError(f"recipe onpolicy.scorer: {kind!r}; choose one of {', '.join(SCORERS)}")
    if kind in ("auto", "uncertainty"):
        scorer = uncertainty_scorer(student, probe, device)
        if scorer is not None:
            return "uncertainty", scorer
        if kind == "uncertainty":
            warnings.warn("onpolicy.scorer uncertainty: the student offers no calibrated uncertainty; "
                          "falling back to the committee (or diversity in round 1)", stacklevel=2)
    if kind != "diversity" and previous is not None:
        return "committee", committee_scorer(student, previous, device)
    return "diversity", None


# ---- student MD ------------------------------------------------------------------------------------------
def bonds(atoms: Atoms) -> set[tuple[int, int]]:
    """Bonded pairs: distance below ``BOND_FACTOR`` x the sum of covalent radii."""
    from ase.data import covalent_radii

    r = covalent_radii[atoms.numbers]
    d = atoms.get_all_distances(mic=bool(atoms.pbc.any()))
    i, j = np.nonzero(np.triu(d < BOND_FACTOR * (r[:, None] + r[None, :]), 1))
    return set(zip(i.tolist(), j.tolist()))


def bonds_intact(frames: Sequence[Atoms], reference: Atoms) -> int | None:
    """Index of the first frame of a molecule whose bonds differ from ``reference``'s, or None. Periodic
    structures (where bonds may legitimately change) always give None."""
    if reference.pbc.any():
        return None
    ref = bonds(reference)
    for k, frame in enumerate(frames):
        if bonds(frame) != ref:
            return k
    return None


def student_md_candidates(seeds: Sequence[tuple[str, Atoms]], calc, temperatures: Sequence[float], steps: int,
                          per_trajectory: int, timestep: float, friction: float, seed: int,
                          out_dir: Path) -> tuple[list[Atoms], list[dict]]:
    """Student Langevin NVT (``fixcm=False``) of ``steps`` steps from every seed at every temperature.

    Returns ``(candidates, runs)``: frames every ``steps // per_trajectory`` steps (step 0 excluded), with
    ``info`` seed_index, temperature, step and ``pre_failure``; one record per trajectory (stable, steps
    done, why it stopped). Trajectories go to ``out_dir`` (extended XYZ).
    """
    from ase.io import read

    from ..md import run_md

    interval = max(1, steps // max(1, per_trajectory))
    out_dir.mkdir(parents=True, exist_ok=True)
    candidates, runs = [], []
    for s, (_, start) in enumerate(seeds):
        for t, temperature in enumerate(temperatures):
            traj = out_dir / f"{s:02d}_T{temperature:g}.extxyz"
            atoms = start.copy()
            reason = None
            try:
                run_md(atoms, calc, ensemble="nvt", temperature=temperature, timestep=timestep, steps=steps,
                       traj=traj, interval=interval, seed=seed + 1000 * s + t, friction=friction,
                       progress=False)
            except MDBlowUp as exc:
                reason = exc.reason or str(exc)
            frames = read(traj, index=":") if traj.exists() else []
            broken = bonds_intact(frames, start)
            if broken is not None and reason is None:
                reason = f"bonds changed at step {broken * interval}"
                frames = frames[:broken + 1]  # the first broken frame: the teacher's forces say how wrong
            frames = frames[1:]  # step 0 is the seed
            for k, frame in enumerate(frames):
                frame.calc = None
                frame.info = {"seed_index": s, "temperature": float(temperature), "step": (k + 1) * interval,
                              "trajectory": len(runs),
                              "pre_failure": bool(reason and k >= len(frames) - LAST_FRAMES)}
                candidates.append(frame)
            runs.append({"seed_index": s, "formula": start.get_chemical_formula(),
                         "temperature_k": float(temperature), "stable": reason is None,
                         "steps_done": steps if reason is None else len(frames) * interval,
                         "reason": reason})
    return candidates, runs


def cut_at_failure_score(candidates: Sequence[Atoms], scores: np.ndarray, runs: list[dict],
                         threshold: float) -> tuple[list[Atoms], np.ndarray, list[dict]]:
    """Each trajectory ends at its first candidate scored above ``threshold`` (eV/Å; non-finite counts):
    that frame is kept (the teacher's forces say how wrong the student was), later ones are dropped, the
    last ``LAST_FRAMES`` kept become ``pre_failure`` and the run is marked failed with the reason (unless
    it failed earlier for another reason). Returns new ``(candidates, scores, runs)``; inputs unchanged.
    Candidates carry ``info["trajectory"]`` (the index in ``runs``) and ``info["step"]``.
    """
    scores = np.asarray(scores, float)
    if scores.shape != (len(candidates),):
        raise InputError(f"cut_at_failure_score: {len(candidates)} candidates but scores of shape {scores.shape}")
    over = ~(scores <= threshold)  # NaN and inf are over
    runs = [dict(run) for run in runs]
    cut: dict[int, tuple[int, float]] = {}  # trajectory -> (step, score) of its first frame over it
    for k in np.flatnonzero(over):
        traj, step = int(candidates[k].info["trajectory"]), int(candidates[k].info["step"])
        if step < cut.get(traj, (np.inf,))[0]:
            cut[traj] = (step, float(scores[k]))
    keep = [k for k, c in enumerate(candidates)
            if c.info["step"] <= cut.get(int(c.info["trajectory"]), (np.inf,))[0]]
    out = [candidates[k].copy() for k in keep]
    for traj, (step, score) in cut.items():
        for a in [a for a in out if a.info["trajectory"] == traj][-LAST_FRAMES:]:
            a.info["pre_failure"] = True
        run = runs[traj]
        if run["stable"] or step < run["steps_done"]:
            run.update(stable=False, steps_done=step,
                       reason=f"score {score:.3g} eV/Å above failure_score {threshold:g} at step {step}")
    return out, scores[keep], runs
