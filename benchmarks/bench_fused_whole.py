"""Speed of the whole-model CPU kernel (``fused.whole``) next to the eager model and the message kernel.

    python benchmarks/bench_fused_whole.py                 # ethanol, water_81, water_1k (~3 min on 2 cores)
    python benchmarks/bench_fused_whole.py --quick         # ethanol only
    python benchmarks/bench_fused_whole.py --large         # also water_10k (2 threads, a few calls)

Times energy + forces of the model alone, graph prebuilt (no neighbour list, no calculator):
``eager`` = ``model(data)`` with ``model.fused = False`` (autograd), ``message`` = the same with the fused
message kernel (today's default), ``whole`` = ``whole.evaluate`` (energies, forces, edge gradients).
Contenders are interleaved call by call; the median wall time of each is printed (and the median CPU
time of the process, less sensitive to other load on a shared machine). Random weights, float32 unless
said. Prints only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _systems import build

from mlff_calc import _keys as K
from mlff_calc.model.fused import whole
from mlff_calc.model.student import StudentForceField, randomize_parameters
from mlff_calc.neighbors import csr_rowptr, neighbor_list, reverse_edges
from mlff_calc.testing.structures import organic_molecule


def prepare(atoms, hidden, dtype):
    model = randomize_parameters(StudentForceField(hidden_dim=hidden, num_interactions=3), seed=1)
    model = model.to(dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    edge_index, shifts = (torch.as_tensor(x) for x in neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 5.0))
    n = len(atoms)
    reverse = reverse_edges(edge_index, shifts, n)
    data = model.prepare({
        K.ATOMIC_NUMBERS: atoms.numbers, K.POSITIONS: torch.tensor(atoms.positions),
        K.CELL: torch.tensor(atoms.cell.array)[None], K.PBC: torch.tensor(atoms.pbc)[None],
        K.EDGE_INDEX: edge_index, K.CELL_SHIFTS: shifts, K.EDGE_REVERSE: reverse,
    })  # fmt: skip
    i, j = edge_index
    vectors = (data[K.POSITIONS][j] - data[K.POSITIONS][i] + shifts.to(dtype) @ data[K.CELL][0]).contiguous()
    order = torch.arange(reverse.shape[0])
    half = (torch.cumsum(order < reverse, 0) - 1)[torch.minimum(order, reverse)]
    graph = (torch.as_tensor(atoms.numbers), vectors, csr_rowptr(i, n), j.contiguous(), reverse, half, len(half) // 2)
    return model, data, graph


def bench(name, atoms, hidden, dtype, threads, calls, paths):
    torch.set_num_threads(threads)
    model, data, graph = prepare(atoms, hidden, dtype)
    packed = whole.pack(model)

    def run_model(fused):
        model.fused = fused
        model(data)

    contenders = {
        "eager": lambda: run_model(False),
        "message": lambda: run_model(True),
        "whole": lambda: whole.evaluate(packed, *graph, threads=threads),
    }
    contenders = {k: v for k, v in contenders.items() if k in paths}
    wall = {k: [] for k in contenders}
    cpu = {k: [] for k in contenders}
    for fn in contenders.values():
        fn()
    for _ in range(calls):
        for key, fn in contenders.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            wall[key].append(time.perf_counter() - t)
            cpu[key].append(time.process_time() - c)
    cells = "  ".join(
        f"{k} {statistics.median(wall[k]) * 1e3:9.3f} ms (cpu {statistics.median(cpu[k]) * 1e3:8.3f})"
        for k in contenders
    )
    print(f"{name:9s} N={len(atoms):6d} E={graph[1].shape[0]:7d} F={hidden:3d} {str(dtype)[6:]:7s} "
          f"threads={threads} calls={calls}  {cells}", flush=True)  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="ethanol only")
    parser.add_argument("--large", action="store_true", help="also water_10k")
    args = parser.parse_args(argv)
    all_paths = ("eager", "message", "whole")
    for dtype in (torch.float32, torch.float64):
        for hidden in (64, 128):
            bench("ethanol", organic_molecule(), hidden, dtype, 1, 300, all_paths)
    if args.quick:
        return
    for threads in (1, 2):
        bench("water_81", build("water_81"), 128, torch.float32, threads, 40, all_paths)
    for threads in (1, 2):
        bench("water_1k", build("water_1k"), 128, torch.float32, threads, 5, ("message", "whole"))
    if args.large:
        bench("water_10k", build("water_10k"), 128, torch.float32, 2, 2, ("message", "whole"))


if __name__ == "__main__":
    main()
