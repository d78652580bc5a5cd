"""05 - Many structures at once: the student in torch-sim, one model call per MD step for the whole batch.

Part 1 is plain torch-sim (``ts.integrate`` with the student's ``ModelInterface``); part 2 runs the same batch
with ``mlff_calc.integrations.batched_md.run_batched_md``, which logs every structure and checks for
blow-ups, then an NVE continuation that reports the energy drift of each structure. ``mlff-calc md`` does
the same with several ``--structure`` files (or ``--all-frames``).

    python md_examples/05_torchsim_batch.py --model runs/my_system/student.pt --structures frames.extxyz
    python md_examples/05_torchsim_batch.py --model student.pt --structures m.xyz --replicas 64 --device cuda
    python md_examples/05_torchsim_batch.py ... --smoke        # a few steps (also when $CI is set)
"""

import argparse
import os

import numpy as np
import torch_sim as ts
from ase.io import read

from mlff_calc.integrations.batched_md import run_batched_md
from mlff_calc.integrations.torchsim import StudentModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="student checkpoint (student.pt)")
    parser.add_argument("--structures", required=True, help="ASE-readable file; every frame is one structure")
    parser.add_argument("--replicas", type=int, default=1, help="copies of each structure (default 1)")
    parser.add_argument("--temperature", type=float, default=300.0, help="K (default 300)")
    parser.add_argument("--timestep", type=float, default=0.5, help="fs (default 0.5)")
    parser.add_argument("--steps", type=int, default=1000, help="NVT steps (default 1000)")
    parser.add_argument("--interval", type=int, default=50, help="steps between logged frames")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a few steps only (also when $CI is set)")
    args = parser.parse_args()
    if args.smoke or os.environ.get("CI"):
        args.steps, args.interval = 20, 10

    structures = [atoms for atoms in read(args.structures, ":") for _ in range(args.replicas)]
    model = StudentModel(args.model, device=args.device, dtype=args.dtype)
    print(f"{len(structures)} structures, {sum(len(a) for a in structures)} atoms, on {model.device}")

    # 1. Plain torch-sim: the student is an ordinary ModelInterface. torch-sim's metal units: timestep in ps.
    final = ts.integrate(
        system=structures,
        model=model,
        integrator=ts.integrators.nvt_langevin,
        n_steps=args.steps,
        temperature=args.temperature,
        timestep=args.timestep * 1e-3,
    )
    print(
        f"ts.integrate: {args.steps} NVT steps, final potential energies (eV): "
        f"{np.array2string(final.energy.detach().cpu().numpy()[:4], precision=3)} ..."
    )

    # 2. The same batch with logging and blow-up checks, then NVE from the thermalised states.
    nvt = run_batched_md(
        structures,
        model,
        ensemble="nvt",
        temperature=args.temperature,
        timestep=args.timestep,
        steps=args.steps,
        interval=args.interval,
        seed=args.seed,
    )
    print(nvt.summary())
    nve = run_batched_md(
        nvt.final,
        model,
        ensemble="nve",
        timestep=args.timestep,
        steps=args.steps,
        interval=args.interval,
        momenta=[a.get_momenta() for a in nvt.final],
    )
    drift = nve.drift_mev_per_atom_ps()
    print(
        f"NVE drift (meV/atom/ps) over {len(drift)} structures: median {np.median(np.abs(drift)):.4f}, "
        f"max {np.abs(drift).max():.4f}"
    )
    print(
        f"throughput: {nve.atom_steps_per_s:.4g} atom-steps/s ({nve.model_calls} model calls for "
        f"{nve.steps_done} steps)"
    )
    print(
        f"one-line equivalent: mlff-calc md --model {args.model} --structure {args.structures} --all-frames "
        f"--steps {args.steps}"
    )


if __name__ == "__main__":
    main()
