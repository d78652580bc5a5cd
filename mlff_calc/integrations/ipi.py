"""The student as an i-PI force driver (path integrals, replica exchange, ... with i-PI as the integrator).

i-PI runs the dynamics and asks a *driver* for energy, forces and virial over a socket. The student's
driver is ASE's ``SocketClient`` with a :class:`~mlff_calc.StudentCalculator`:

    python -m mlff_calc.integrations.ipi --model student.pt --structure init.extxyz --address my_run

connects to the unix socket ``/tmp/ipi_my_run`` that ``i-pi input.xml`` (with ``<ffsocket mode="unix">`` and
``<address>my_run</address>``) opens, answers every force request, and exits when i-PI says it is done.
The exported metatomic file works too, with i-PI's own ``i-pi-driver-py -m metatomic`` driver.

:func:`nvt_input` writes a minimal NVT input (Langevin thermostat, one bead: classical MD; raise
``nbeads`` for path-integral MD); :func:`run_simulation` starts i-PI and the driver as two processes,
waits for both with bounded timeouts, and always kills what is left.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

SOCKET_PREFIX = "/tmp/ipi_"  # i-PI's and ASE's default place for unix sockets: /tmp/ipi_<address>
PROPERTIES = "[step, time{picosecond}, conserved{electronvolt}, temperature{kelvin}, potential{electronvolt}]"


def new_address(tag: str = "mlffcalc") -> str:
    """A unique socket address (short: a unix socket path holds at most 107 bytes)."""
    return f"{tag}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


def ipi_cell(atoms: Atoms, padding: float = 10.0) -> Atoms:
    """i-PI needs a cell: a molecule gets a box ``padding`` Å wider than itself (unused by the driver)."""
    atoms = atoms.copy()
    if not atoms.pbc.any() and abs(np.linalg.det(atoms.cell.array)) < 1e-6:
        extent = atoms.positions.max(axis=0) - atoms.positions.min(axis=0)
        atoms.set_cell(np.diag(extent + 2 * padding))
    return atoms


def nvt_input(
    init_file: str,
    address: str,
    steps: int,
    temperature: float = 300.0,
    timestep: float = 0.5,
    tau: float = 100.0,
    seed: int = 12345,
    prefix: str = "simulation",
    stride: int = 1,
    nbeads: int = 1,
) -> str:
    """i-PI input XML: NVT with a Langevin thermostat (``tau`` fs), driven over ``/tmp/ipi_<address>``.

    Writes ``<prefix>.out`` (step, time, conserved energy, temperature, potential every ``stride`` steps)
    and ``<prefix>.pos_0.xyz`` (positions in Å, every ``stride`` steps).
    """
    return f"""<simulation verbosity="low" safe_stride="{max(steps, 1)}">
  <output prefix="{prefix}">
    <properties stride="{stride}" filename="out">{PROPERTIES}</properties>
    <trajectory filename="pos" stride="{stride}" format="xyz">positions{{angstrom}}</trajectory>
  </output>
  <total_steps>{steps}</total_steps>
  <prng><seed>{seed}</seed></prng>
  <ffsocket name="student" mode="unix" pbc="false">
    <address>{address}</address>
    <latency>1e-4</latency>
    <timeout>600</timeout>
  </ffsocket>
  <system>
    <initialize nbeads="{nbeads}">
      <file mode="ase">{init_file}</file>
      <velocities mode="thermal" units="kelvin">{temperature}</velocities>
    </initialize>
    <forces><force forcefield="student"/></forces>
    <motion mode="dynamics">
      <dynamics mode="nvt">
        <timestep units="femtosecond">{timestep}</timestep>
        <thermostat mode="langevin"><tau units="femtosecond">{tau}</tau></thermostat>
      </dynamics>
    </motion>
    <ensemble><temperature units="kelvin">{temperature}</temperature></ensemble>
  </system>
</simulation>
"""


def run_driver(
    model: str | Path,
    structure: str | Path,
    address: str,
    device: str = "auto",
    dtype: str = "float64",
    connect_timeout: float = 60.0,
) -> int:
    """Serve forces to i-PI until it ends the run; returns the number of force evaluations."""
    from ase.calculators.socketio import SocketClient
    from ase.io import read

    from ..calculator import StudentCalculator

    atoms = read(structure)
    periodic = bool(atoms.pbc.all())
    if not periodic:  # i-PI sends its (padding) box back: keep it out of the physics
        atoms.pbc = False
    atoms.calc = StudentCalculator.from_checkpoint(model, device=device, dtype=dtype)
    wait_for_socket(address, connect_timeout)
    client = SocketClient(unixsocket=address)
    calls = 0
    for _ in client.irun(atoms, use_stress=periodic):
        calls += 1
    return calls


def wait_for_socket(address: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Wait until i-PI has opened ``/tmp/ipi_<address>`` (it does so once it has read its input)."""
    path = SOCKET_PREFIX + address
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"i-PI exited (code {process.returncode}) before opening its socket {path}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no i-PI socket at {path} after {timeout:g} s")
        time.sleep(0.05)


def driver_command(
    driver: str, model: str | Path, structure: str, address: str, device: str, dtype: str
) -> list[str]:
    """The driver process: ours (ASE ``SocketClient`` + ``StudentCalculator``) or i-PI's metatomic driver."""
    model = str(Path(model).resolve())
    if driver == "ase":
        return [
            sys.executable,
            "-m",
            "mlff_calc.integrations.ipi",
            "--model",
            model,
            "--structure",
            structure,
            "--address",
            address,
            "--device",
            device,
            "--dtype",
            dtype,
        ]
    if driver == "metatomic":
        script = Path(sys.executable).with_name("i-pi-py_driver")
        return [
            sys.executable,
            str(script),
            "-u",
            "-a",
            address,
            "-m",
            "metatomic",
            "-o",
            f"template={structure},model={model},device={device}",
        ]
    raise ValueError(f"driver must be 'ase' or 'metatomic', got {driver!r}")


@dataclass
class IPIRun:
    """What :func:`run_simulation` saw: exit codes, the i-PI properties table and the output files."""

    ipi_returncode: int
    driver_returncode: int
    properties: np.ndarray  # (n_rows, 5): step, time [ps], conserved [eV], temperature [K], potential [eV]
    output: Path  # <prefix>.out
    trajectory: Path  # <prefix>.pos_0.xyz
    wall_s: float
    driver_stdout: str


def read_properties(path: str | Path) -> np.ndarray:
    """i-PI's ``.out`` table as an array (comment lines skipped)."""
    rows = [
        line.split()
        for line in Path(path).read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return np.asarray(rows, dtype=float).reshape(len(rows), -1)


def ipi_command() -> list[str]:
    """The ``i-pi`` console script of this environment (next to this Python), else the one on PATH."""
    local = Path(sys.executable).with_name("i-pi")
    found = str(local) if local.exists() else shutil.which("i-pi")
    if found is None:
        raise FileNotFoundError(
            "the i-pi program was not found; install the 'engines' extra (pip install ipi)"
        )
    return [sys.executable, found]


def run_simulation(
    model: str | Path,
    atoms: Atoms,
    workdir: str | Path,
    steps: int = 20,
    temperature: float = 300.0,
    timestep: float = 0.5,
    seed: int = 12345,
    device: str = "cpu",
    dtype: str = "float64",
    timeout: float = 300.0,
    driver: str = "ase",
) -> IPIRun:
    """Run i-PI NVT with the student as driver in ``workdir``: two processes, unix socket, bounded waits.

    ``driver="ase"``: ``model`` is a ``student.pt`` served by ASE's ``SocketClient`` (this module's ``main``);
    ``driver="metatomic"``: ``model`` is an exported metatomic file served by i-PI's own Python driver.

    Both processes are killed in ``finally`` if still alive (a timeout or an error never leaves them
    behind), and the socket file is removed.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    from ase.io import write

    init = workdir / "init.extxyz"
    write(init, ipi_cell(atoms))
    address = new_address()
    (workdir / "input.xml").write_text(nvt_input(init.name, address, steps, temperature, timestep, seed=seed))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = (workdir / "ipi.log").open("w")
    ipi = client = None
    start = time.perf_counter()
    try:
        ipi = subprocess.Popen(
            [*ipi_command(), "input.xml"], cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=env
        )
        wait_for_socket(address, timeout=60.0, process=ipi)
        client = subprocess.Popen(
            driver_command(driver, model, init.name, address, device, dtype),
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        driver_out, _ = client.communicate(timeout=timeout)
        if client.returncode != 0:  # i-PI would wait for a driver forever: stop it now (finally)
            raise RuntimeError(f"the i-PI driver failed (exit {client.returncode}):\n{driver_out[-3000:]}")
        ipi.wait(timeout=max(10.0, timeout - (time.perf_counter() - start)))
        wall = time.perf_counter() - start
    finally:
        for proc in (client, ipi):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        log.close()
        Path(SOCKET_PREFIX + address).unlink(missing_ok=True)
    output = workdir / "simulation.out"
    if ipi.returncode != 0 or client.returncode != 0 or not output.exists():
        tail = (workdir / "ipi.log").read_text()[-2000:]
        raise RuntimeError(
            f"i-PI run failed (i-pi exit {ipi.returncode}, driver exit {client.returncode}):\n"
            f"--- i-pi ---\n{tail}\n--- driver ---\n{driver_out[-2000:]}"
        )
    return IPIRun(
        ipi.returncode,
        client.returncode,
        read_properties(output),
        output,
        workdir / "simulation.pos_0.xyz",
        wall,
        driver_out,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mlff_calc.integrations.ipi",
        description="the student as an i-PI force driver (ASE SocketClient)",
    )
    parser.add_argument("--model", required=True, help="student checkpoint (student.pt)")
    parser.add_argument(
        "--structure", required=True, help="the structure i-PI simulates (atoms in its order)"
    )
    parser.add_argument("--address", required=True, help="i-PI <address>: the socket is /tmp/ipi_<address>")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    parser.add_argument("--connect-timeout", type=float, default=60.0, help="seconds to wait for the socket")
    args = parser.parse_args(argv)
    calls = run_driver(
        args.model, args.structure, args.address, args.device, args.dtype, args.connect_timeout
    )
    print(f"i-PI driver: {calls} force evaluations, clean exit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
