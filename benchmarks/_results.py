"""RESULTS.md sections and the machine/software description every benchmark prints with its numbers."""

from __future__ import annotations

import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "orb-models", "ase", "vesin", "mlff_calc", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def machine_info(records: list[dict]) -> dict:
    """CPU model, cores, RAM, and the package versions the workers reported."""
    cpu, family, model_no, flags = platform.processor() or "unknown CPU", "?", "?", set()
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "model name":
                cpu = value
            elif key == "cpu family":
                family = value
            elif key == "model":
                model_no = value
            elif key == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    import psutil

    versions = next((r["versions"] for r in records if r.get("versions")), {})
    threads = next((r["threads"] for r in records if r.get("threads")), None)
    return {
        "cpu": f"{cpu} (family {family}, model {model_no}; {', '.join(simd) or 'no AVX2'})",
        "cores": len(os.sched_getaffinity(0)),
        "ram_gib": psutil.virtual_memory().total / 2**30,
        "versions": versions,
        "threads": threads,
        "python": platform.python_version(),
    }


def publish(name: str, body: str, write: bool, path: Path = RESULTS) -> None:
    """Print a benchmark's markdown section and, with ``write``, put it into ``path`` (RESULTS.md)."""
    print("\n" + body)
    if write:
        write_section(path, name, body)
        print(f"wrote section '{name}' of {path}")


def write_section(path: Path, name: str, body: str) -> None:
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->`` (append if absent)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    new_file = "# Benchmark results\n\nEach section is written by the benchmark it names.\n"
    text = path.read_text() if path.exists() else new_file
    if start in text and end in text and text.index(start) < text.index(end):
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    from mlff_calc.io import write_text

    write_text(path, text)  # unique temporary name, fsync, rename: the package's one durable writer


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
