"""Compile the whole-model kernel (``painn_model.cpp``, :mod:`.whole`) once per machine; load it with ctypes.

No torch headers are involved (the kernel takes raw pointers), so a build takes a few seconds. A library lands in ``$MLFF_CALC_CACHE`` (default
``~/.cache/mlff_calc``) under a name derived from the source, the compiler flags and the CPU's feature
flags (``-march=native``); it is written to a temporary file and renamed, under a file lock, so
concurrent processes never load half a library. ``MLFF_CALC_NO_FUSED=1`` disables it.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

from ...io import commit, temporary_path
from collections.abc import Callable

HERE = Path(__file__).parent
FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17"],
    ["-O3", "-fopenmp", "-shared", "-fPIC", "-std=c++17"],  # if the compiler rejects -march=native
)


@dataclass
class _Kernel:
    source: Path
    abi_symbol: str
    abi_version: int
    declare: Callable[[ctypes.CDLL], None]
    flag_sets: tuple[list[str], ...] = FLAG_SETS
    lib: ctypes.CDLL | None = None
    tried: bool = False


def _cache_dir() -> Path:
    return Path(os.environ.get("MLFF_CALC_CACHE", Path.home() / ".cache" / "mlff_calc")) / "kernels"


def _cpu_signature() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return os.uname().machine


def _compile(source: Path, flag_sets: tuple[list[str], ...], target: Path) -> None:
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX or install g++)")
    errors = []
    for flags in flag_sets:
        tmp = temporary_path(target)
        result = subprocess.run([compiler, *flags, str(source), "-o", str(tmp)], capture_output=True, text=True)
        if result.returncode == 0:
            commit(tmp, target)  # fsync + rename + directory fsync (mlff_calc.io)
            return
        tmp.unlink(missing_ok=True)
        errors.append(result.stderr.strip()[-500:])
    raise RuntimeError(f"compiling the fused PaiNN kernel {source.name} failed:\n" + "\n".join(errors))


def _build_and_load(kernel: _Kernel) -> ctypes.CDLL | None:
    if os.environ.get("MLFF_CALC_NO_FUSED", "").strip() not in ("", "0"):
        return None
    key = hashlib.sha256(
        kernel.source.read_bytes() + repr(kernel.flag_sets).encode() + _cpu_signature().encode()
    ).hexdigest()[:16]
    cache = _cache_dir()
    target = cache / f"{kernel.source.stem}_{key}.so"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with open(cache / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not target.exists():
                _compile(kernel.source, kernel.flag_sets, target)
        lib = ctypes.CDLL(str(target))
        if getattr(lib, kernel.abi_symbol)() != kernel.abi_version:
            raise RuntimeError("stale kernel library")
    except Exception as exc:  # any failure: fall back to eager PyTorch, loudly but once
        warnings.warn(f"mlff_calc: fused CPU kernels unavailable, using the slower eager path ({exc})", stacklevel=3)
        return None
    kernel.declare(lib)
    return lib


def _declare_whole(lib: ctypes.CDLL) -> None:
    i64, ptr, cint = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    for suffix in ("f32", "f64"):
        fn = getattr(lib, f"painn_whole_{suffix}")
        fn.argtypes = [ptr, ptr, i64, i64, i64] + [ptr] * 9 + [cint, cint, ptr]  # ptr: features or None
        fn.restype = cint
    lib.painn_whole_release.argtypes = []
    lib.painn_whole_release.restype = None


# -fno-math-errno lets exp/sqrt vectorise (libmvec); it changes no result, only errno. 512-bit vectors in
# the edge loops where the CPU has them (GCC prefers 256 on recent Intel): -25% time on a water box.
_WHOLE = _Kernel(
    HERE / "painn_model.cpp",
    "mlff_whole_abi_version",
    2,
    _declare_whole,
    (
        FLAG_SETS[0] + ["-fno-math-errno", "-mprefer-vector-width=512"],
        FLAG_SETS[0] + ["-fno-math-errno"],
        FLAG_SETS[1] + ["-fno-math-errno"],
    ),
)


def load_whole_library() -> ctypes.CDLL | None:
    """The whole-model library (:mod:`.whole`), building it if needed; ``None`` when unavailable (warns once)."""
    if not _WHOLE.tried:
        _WHOLE.tried = True
        _WHOLE.lib = _build_and_load(_WHOLE)
    return _WHOLE.lib


def whole_available() -> bool:
    """Whether the whole-model kernel could be built here."""
    return load_whole_library() is not None
