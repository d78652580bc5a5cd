"""Benchmark harness: one worker process per measurement, with time and memory budgets.

A benchmark script runs its own worker (``script --worker JSON``) through :func:`run_one`; the worker
reports JSON lines with :func:`emit`. Running each contender in its own process keeps peak RSS per model
and keeps global torch state set by one model (Orb sets the default dtype) away from the other.
Helpers here also measure machine noise: :func:`probe_gflops` (a matmul probe) and the CPU time other
processes used during a run (``other_load_cores``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TAG = "BENCH_JSON "  # prefix of the worker's JSON lines on stdout
KB_PER_MIB = 1024.0
BUSY_CORES = 0.25  # other processes using more than this (in cores) during a run: its time is flagged ⚠


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KB_PER_MIB  # Linux: KiB


def emit(**record) -> None:
    print(TAG + json.dumps(record), flush=True)


def probe_gflops(seconds: float = 0.3) -> float:
    """Throughput of a 512x512 float32 matmul right now: shows CPU contention from other tenants."""
    import torch

    a = torch.randn(512, 512)
    a @ a
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ a
        n += 1
    return 2 * 512**3 * n / (time.perf_counter() - t0) / 1e9


def _tree_rss_bytes(proc) -> int:
    import psutil

    try:
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):  # e.g. torch.compile's worker processes
            try:
                total += child.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total
    except psutil.NoSuchProcess:
        return 0


def _busy_cpu_s() -> float:
    """Busy CPU seconds of the whole machine since boot (all processes)."""
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def _own_cpu_s(proc, seen: dict) -> None:
    """Record the CPU seconds of ``proc`` and its children (last value seen per pid)."""
    import psutil

    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            t = p.cpu_times()
            seen[p.pid] = t.user + t.system
        except psutil.NoSuchProcess:
            pass


def wait_for_idle_cpu(max_wait_s: float, threshold_cores: float = 0.3) -> float:
    """Wait (up to ``max_wait_s``) until other processes use < ``threshold_cores``; returns seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < max_wait_s:
        busy0, t0 = _busy_cpu_s(), time.monotonic()
        time.sleep(1.0)
        if (_busy_cpu_s() - busy0) / (time.monotonic() - t0) < threshold_cores:
            break
    return time.monotonic() - start


def run_one(script: str | Path, opts: dict, timeout_s: float, max_mem_gib: float, wait_idle_s: float = 0.0,
            src: str | None = None) -> dict:
    """Run ``script --worker OPTS`` in a subprocess with time and memory budgets.

    The worker reports with :func:`emit` (events ``info``, ``first_call``, ``step``, ``result``). Returns the
    merged records, or ``{"skipped": reason, ...}`` when a budget ran out or the worker failed.
    ``src``: a checkout whose ``mlff_calc`` the worker imports instead of this one (a baseline).
    """
    import psutil

    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), env.get("PYTHONPATH", "")) if p)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(opts["threads"])
    cmd = [sys.executable, str(Path(script).resolve()), "--worker", json.dumps(opts)]
    records: dict = {"steps_s": []}
    if wait_idle_s > 0:
        records["waited_for_idle_s"] = wait_for_idle_cpu(wait_idle_s)
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)

        def read():
            for line in proc.stdout:
                if line.startswith(TAG):
                    rec = json.loads(line[len(TAG):])
                    event = rec.pop("event")
                    if event == "step":
                        records["steps_s"].append(rec["seconds"])
                    elif event == "first_call":
                        records["first_call_s"] = rec["seconds"]
                    else:
                        records.update(rec)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        ps = psutil.Process(proc.pid)
        start, peak_tree, reason = time.monotonic(), 0, None
        busy0, own = _busy_cpu_s(), {}
        while proc.poll() is None:
            peak_tree = max(peak_tree, _tree_rss_bytes(ps))
            _own_cpu_s(ps, own)
            if peak_tree > max_mem_gib * 2**30:
                reason = f"skipped (> {max_mem_gib:.3g} GiB)"
            elif time.monotonic() - start > timeout_s:
                reason = f"skipped (> {timeout_s:.0f} s)"
            if reason:
                for child in ps.children(recursive=True):
                    child.kill()
                proc.kill()
                break
            time.sleep(0.1)
        proc.wait()
        reader.join(timeout=5)
        records["wall_s"] = time.monotonic() - start
        # CPU time other processes used meanwhile (all busy time minus this worker's): in cores.
        other = _busy_cpu_s() - busy0 - sum(own.values())
        records["other_load_cores"] = max(0.0, other / records["wall_s"])
        records["sampled_peak_tree_rss_mib"] = peak_tree / 2**20
        if reason:
            records["skipped"] = reason
        elif proc.returncode != 0 or "median_ms" not in records:
            err.seek(0)
            tail = err.read()[-2000:]
            records["skipped"] = f"failed (exit {proc.returncode})"
            records["error"] = tail
            print(tail, file=sys.stderr)
    return records


def fmt_s(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
