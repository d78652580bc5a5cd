"""The student outside ``StudentCalculator``: other MD engines.

``metatomic``: export to a metatomic model file (LAMMPS, i-PI, ASE, torch-sim, PLUMED, OpenMM-ML);
``torchsim``: a torch-sim ``ModelInterface``; ``batched_md``: many structures in one torch-sim batch
(``mlff-calc md`` with several structures); ``ipi``: the student as an i-PI force driver.
Each needs the ``engines`` extra; nothing here is imported by the rest of the package.
"""
