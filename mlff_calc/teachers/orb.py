"""``orb-v2``: Orbital Materials' Orb-v2 (orb-models), the teacher this project was built for.

Options: ``weights`` (local checkpoint path or URL; default: orb-models' download URL), ``device``
(``"auto" | "cpu" | "cuda[:n]"``), ``precision`` (``"float32-high"`` default, ``"float32-highest"``,
``"float64"``), ``compile`` (``torch.compile`` the model; default ``False``: compiling costs minutes on
the CPU and needs a C compiler).

Works with orb-models 0.5 (``orb_v2()`` returns the model) and 0.6+ (returns ``(model, adapter)``,
and ``ORBCalculator`` takes the adapter).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import warnings
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from ._options import check_options, choice, resolve_device_name

ORB_V2_URL = ("https://orbitalmaterials-public-models.s3.us-west-1.amazonaws.com/forcefields/"
              "orb-v2-20241011.ckpt")
OPTIONS = ("weights", "device", "precision", "compile")
# "float32" is our alias for orb-models' recommended "float32-high".
_PRECISIONS = {"float32": "float32-high", "float32-high": "float32-high",
               "float32-highest": "float32-highest", "float64": "float64"}
_HINT = ("pass --teacher-option weights=PATH (or --teacher-weights PATH) "
         "with a local copy of orb-v2-20241011.ckpt")


def build(**options: Any) -> Calculator:
    """Load Orb-v2 and wrap it as an :class:`OrbTeacher`. ``ValueError`` for bad options or weights."""
    check_options("orb-v2", options, OPTIONS)
    try:
        with warnings.catch_warnings():  # orb-models' import-time torch.jit.script deprecation: not ours
            warnings.simplefilter("ignore", DeprecationWarning)
            from orb_models.forcefield import pretrained
    except ImportError as exc:
        raise ValueError(f"teacher 'orb-v2' needs orb-models: pip install 'mlff-calc[orb]' ({exc})") from exc
    device = resolve_device_name("orb-v2", options.get("device", "auto"))
    precision = _PRECISIONS[choice("orb-v2", "precision", options.get("precision", "float32-high"),
                                   _PRECISIONS)]
    weights = _local_weights(options.get("weights"))

    kwargs = dict(weights_path=weights, device=device, precision=precision,
                  compile=bool(options.get("compile", False)))
    try:
        # orb-models sets torch's global default dtype and matmul precision while loading: undo that.
        with torch_state():
            loaded = pretrained.orb_v2(**_accepted(pretrained.orb_v2, kwargs))
    except Exception as exc:  # torch.load / load_state_dict fail in many ways on a wrong or corrupt file
        raise ValueError(f"could not load Orb-v2 weights from {weights!r} (option 'weights'): "
                         f"{type(exc).__name__}: {exc}") from exc
    model, adapter = loaded if isinstance(loaded, tuple) else (loaded, None)
    return OrbTeacher(_orb_calculator(model, adapter, device), precision)


class OrbTeacher(Calculator):
    """Orb's ASE calculator behind a guard: no torch global state leaks, mixed pbc works, sane stress.

    * ``orb-models`` builds its input graph in torch's *default* dtype; the default is switched to the
      model's dtype only for the duration of a call and restored afterwards.
    * Orb rejects mixed pbc (slabs, wires). Each non-periodic cell vector is replaced by one orthogonal to
      the periodic ones, long enough that periodic images stay beyond Orb's cutoff, and the structure is
      evaluated as fully periodic: the same energy and forces as the isolated slab or wire.
    * ``stress`` (eV/Å³, Voigt, ASE sign) is reported for fully periodic cells only; Orb's stress head
      returns numbers for molecules too, but they mean nothing there.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, orb_calculator: Calculator, precision: str = "float32-high"):
        super().__init__()
        self.orb = orb_calculator
        self.dtype = next(orb_calculator.model.parameters()).dtype
        self.matmul_precision = precision.split("-")[1] if precision.startswith("float32-") else None
        config = getattr(orb_calculator, "system_config", None) or getattr(orb_calculator, "adapter", None)
        self.cutoff = float(getattr(config, "radius", 6.0))  # Å

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        work = pad_mixed_pbc(self.atoms, gap=2.0 * self.cutoff)
        with torch_state(self.dtype, self.matmul_precision):
            self.orb.calculate(work, ["energy", "forces"], all_changes)
        out = self.orb.results
        energy = float(np.asarray(out["energy"]).reshape(-1)[0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": np.asarray(out["forces"], dtype=np.float64).reshape(len(self.atoms), 3),
        }
        if self.atoms.pbc.all() and "stress" in out:
            self.results["stress"] = np.asarray(out["stress"], dtype=np.float64).reshape(6)


def pad_mixed_pbc(atoms: Atoms, gap: float) -> Atoms:
    """A fully periodic copy of a slab/wire, or ``atoms`` itself when pbc is all True or all False.

    Each non-periodic cell vector is replaced by a unit vector orthogonal to the periodic ones (and to
    each other) times ``extent + gap``, where ``extent`` (Å) is the spread of the atoms along it: periodic
    images are then at least ``gap`` Å apart. Positions are unchanged, so forces need no mapping back.
    """
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if pbc.all() or not pbc.any():
        return atoms
    cell = atoms.cell.array.copy()
    # Complete the periodic vectors to an orthonormal basis; its last columns span the free directions.
    q, _ = np.linalg.qr(cell[pbc].T, mode="complete")
    free = q[:, int(pbc.sum()):].T  # (n_free, 3)
    for axis, normal in zip(np.flatnonzero(~pbc), free):
        cell[axis] = normal * (np.ptp(atoms.positions @ normal) + gap)
    padded = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=cell, pbc=True)
    padded.info.update({k: v for k, v in atoms.info.items() if k in ("charge", "spin")})
    return padded


@contextlib.contextmanager
def torch_state(dtype: torch.dtype | None = None, matmul_precision: str | None = None):
    """Set torch's default dtype / float32 matmul precision inside the block; restore both on exit."""
    old_dtype, old_precision = torch.get_default_dtype(), torch.get_float32_matmul_precision()
    try:
        with warnings.catch_warnings():
            # orb-models announces every change of the global dtype; we undo it, so the warning is noise.
            warnings.filterwarnings("ignore", message="Setting global torch default dtype")
            warnings.filterwarnings("ignore", message="Consider passing 'precision=float32-high'")
            # orb-models' featurisation passes an ase Cell to np.array(copy=False) (numpy 2): harmless.
            warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept a copy")
            if dtype is not None:
                torch.set_default_dtype(dtype)
            if matmul_precision is not None:
                torch.set_float32_matmul_precision(matmul_precision)
            yield
    finally:
        torch.set_default_dtype(old_dtype)
        torch.set_float32_matmul_precision(old_precision)


def _local_weights(weights: Any) -> str:
    """A local file for ``weights`` (path or URL; ``None`` = the default URL), downloading if needed."""
    if weights is None or "://" in str(weights):
        url = ORB_V2_URL if weights is None else str(weights)
        try:
            return str(_download(url))
        except Exception as exc:  # requests/urllib/cached_path errors have no common base
            raise ValueError(f"could not download Orb-v2 weights from {url} ({type(exc).__name__}: {exc}); "
                             f"{_HINT}") from exc
    path = os.path.expanduser(str(weights))
    if not os.path.isfile(path):
        raise ValueError(f"Orb-v2 weights file not found: {path!r} (option 'weights')")
    return path


def _download(url: str) -> str:
    """Fetch ``url`` into orb-models' cache (a no-op when already cached) and return the local path."""
    from cached_path import cached_path

    return cached_path(url)


def _accepted(fn, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``kwargs`` that ``fn`` accepts (``compile`` is missing in older orb-models)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def _orb_calculator(model, adapter, device: str) -> Calculator:
    """orb-models' ASE calculator, from wherever this version keeps it."""
    try:  # orb-models >= 0.6
        from orb_models.forcefield.inference.calculator import ORBCalculator
    except ImportError:
        from orb_models.forcefield.calculator import ORBCalculator
    if adapter is not None and "atoms_adapter" in inspect.signature(ORBCalculator.__init__).parameters:
        return ORBCalculator(model, atoms_adapter=adapter, device=device)
    return ORBCalculator(model, device=device)
