"""Compile ``painn_message.cpp`` into a shared library once per machine and load it with ctypes.

No torch headers are involved (the kernel takes raw pointers), so the build takes about a second.
The library lands in ``$MLFF_CALC_CACHE`` (default ``~/.cache/mlff_calc``) under a name derived from
the source, the compiler flags and the CPU's feature flags (``-march=native``); it is written to a
temporary file and renamed, under a file lock, so concurrent processes never load half a library.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

from ...io import commit

SOURCE = Path(__file__).with_name("painn_message.cpp")
FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17"],
    ["-O3", "-fopenmp", "-shared", "-fPIC", "-std=c++17"],  # if the compiler rejects -march=native
)
_LIB: ctypes.CDLL | None = None
_TRIED = False


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


def _compile(target: Path) -> None:
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX or install g++)")
    errors = []
    for flags in FLAG_SETS:
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
        os.close(fd)
        result = subprocess.run([compiler, *flags, str(SOURCE), "-o", tmp], capture_output=True, text=True)
        if result.returncode == 0:
            commit(tmp, target)  # fsync + rename + directory fsync (mlff_calc.io)
            return
        Path(tmp).unlink(missing_ok=True)
        errors.append(result.stderr.strip()[-500:])
    raise RuntimeError("compiling the fused PaiNN kernel failed:\n" + "\n".join(errors))


def load_library() -> ctypes.CDLL | None:
    """The compiled kernel library, building it if needed; ``None`` when unavailable (warns once)."""
    global _LIB, _TRIED
    if _TRIED:
        return _LIB
    _TRIED = True
    if os.environ.get("MLFF_CALC_NO_FUSED", "").strip() not in ("", "0"):
        return None
    key = hashlib.sha256(SOURCE.read_bytes() + repr(FLAG_SETS).encode() + _cpu_signature().encode()).hexdigest()[:16]
    cache = _cache_dir()
    target = cache / f"painn_message_{key}.so"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with open(cache / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not target.exists():
                _compile(target)
        lib = ctypes.CDLL(str(target))
        if lib.mlff_abi_version() != 3:
            raise RuntimeError("stale kernel library")
    except Exception as exc:  # any failure: fall back to eager PyTorch, loudly but once
        warnings.warn(f"mlff_calc: fused CPU kernels unavailable, using the slower eager path ({exc})", stacklevel=2)
        return None
    _declare(lib)
    _LIB = lib
    return lib


def _declare(lib: ctypes.CDLL) -> None:
    i64, ptr, cint = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    for suffix in ("f32", "f64"):
        getattr(lib, f"painn_message_forward_{suffix}").argtypes = [i64, i64, i64] + [ptr] * 9 + [cint]
        getattr(lib, f"painn_message_forward_{suffix}").restype = None
        getattr(lib, f"painn_message_backward_{suffix}").argtypes = [i64, i64, i64] + [ptr] * 14 + [cint]
        getattr(lib, f"painn_message_backward_{suffix}").restype = None


def available() -> bool:
    return load_library() is not None
