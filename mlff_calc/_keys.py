"""Names, shapes and units of every tensor that flows between the parts of mlff_calc.

A *batch* holds ``B`` structures with ``N`` atoms and ``E`` directed edges in total. Cells follow ASE:
rows are lattice vectors. An edge ``(i, j, S)`` points from atom ``i`` (receiver, centre) to atom ``j``
(sender, neighbour) in the periodic image shifted by the integer vector ``S``:

    r_ij = positions[j] - positions[i] + S @ cell[batch[i]]        # (E, 3) | Å

Units: eV, Å, eV/Å; stress in eV/Å³ with ASE's sign, stress = (1/V) ∂E/∂ε.
"""

# ---- inputs ----------------------------------------------------------------------------------------
ATOMIC_NUMBERS = "atomic_numbers"  # (N,)       int64
POSITIONS = "positions"  # (N, 3)     float | Å
CELL = "cell"  # (B, 3, 3)  float | Å, rows are lattice vectors (zeros for a molecule)
PBC = "pbc"  # (B, 3)     bool
BATCH = "batch"  # (N,)       int64 | index of the structure each atom belongs to
EDGE_INDEX = "edge_index"  # (2, E)     int64 | [receiver i, sender j]
CELL_SHIFTS = "cell_shifts"  # (E, 3)     float | integer image shifts S (stored in the model dtype)
EDGE_REVERSE = "edge_reverse"  # (E,)     int64 | index of edge (j, i, -S) for edge (i, j, S); optional

# ---- the model's input: one object, built by mlff_calc.graph for one structure, a batch or training --
GRAPH = "graph"  # mlff_calc.graph.Graph: numbers, positions relative to a reference (wrapped into the
#                  cell; centroid along open directions), vectors (E, 3) from float64 differences, cell,
#                  pbc, batch, edge_index sorted by receiver, cell_shifts S' that go with the relative
#                  positions, reverse (E,), rowptr (N + 1,), half (E,) pair of each edge, pairs (P,)

# ---- outputs ---------------------------------------------------------------------------------------
ENERGY = "energy"  # (B,)       float | eV
ENERGIES = "energies"  # (N,)       float | eV, per-atom contributions (sum to ENERGY)
FORCES = "forces"  # (N, 3)     float | eV/Å, = -∂E/∂positions
STRESS = "stress"  # (B, 3, 3)  float | eV/Å³, = (1/V) ∂E/∂ε; NaN for non-periodic structures
VIRIAL = "virial"  # (B, 3, 3)  float | eV, = -∂E/∂ε (ASE/LAMMPS sign)
HVP = "hvp"  # (N, 3) model output / (N, K, 3) batch label | eV/Å², Hessian times a probe direction

# ---- curvature labels in a batch (only when the dataset has them; K = most probes of any structure) ---
HVP_PROBES = "hvp_probes"  # (N, K, 3)  float | probe directions (unit, or weighted), zeros past a structure's own count
N_PROBES = "n_probes"  # (B,)       int64 | probes stored for each structure (0: none)
HVP_TARGET = "hvp_target"  # (N, 3) float | eV/Å², the label of the one combined probe a step trains on

# ---- dataset labels (HDF5) -------------------------------------------------------------------------
UNITS = {
    ENERGY: "eV",
    FORCES: "eV/Angstrom",
    STRESS: "eV/Angstrom^3",
    POSITIONS: "Angstrom",
    CELL: "Angstrom",
}
