"""The reusable physics checks (``mlff_calc.testing.physics``) on every model the package deals with:
random-weight students on every path (the fused CPU kernels, the eager PyTorch reference, a skin), a
*trained* student, ASE's EMT, and each installed teacher (GFN2-xTB; Orb-v2 with random weights).

Checks that do not apply to a model are skipped with the reason stated here (``skips``); the default
suite lists them at the end (tests/conftest.py)."""

import pytest
from ase import Atoms
from ase.calculators.emt import EMT

from mlff_calc import StudentCalculator, StudentForceField
from mlff_calc.model.student import randomize_parameters
from mlff_calc.testing.physics import CHECKS, CalculatorPhysicsTests, PhysicsModel
from mlff_calc.testing.structures import StructureSet

FLOAT32_SKIPS = {
    "forces_finite_differences": "float32: finite differences of the energy measure round-off, not the "
                                 "derivative (float64 runs this check)",
    "stress_finite_differences": "float32: finite differences measure round-off (float64 runs this check)",
    "smooth_at_symmetric_structure": "float32: micro-eV energy differences are below float32 resolution "
                                     "(float64 runs this check)",
}
SYMMETRY = {"float64": 1e-9, "float32": 2e-4}


def random_student(hidden_dim: int = 16, seed: int = 0) -> StudentForceField:
    model = StudentForceField(hidden_dim=hidden_dim, num_interactions=2, num_rbf=8, cutoff=5.0)
    randomize_parameters(model, seed=seed)  # readout, filters, embeddings: nothing left at zero
    model.atom_ref.normal_(generator=None)
    model.scale.fill_(1.3)
    model.shift.fill_(-0.2)
    return model


def student_model(model, dtype: str, name: str, elements=None, skips=None, **calc_options) -> PhysicsModel:
    skips = {**(FLOAT32_SKIPS if dtype == "float32" else {}), **(skips or {})}
    return PhysicsModel(name=f"{name} ({dtype})", symmetry=SYMMETRY[dtype], cutoff=model.cutoff,
                        elements=elements, skips=skips,
                        make=lambda: StudentCalculator(model, device="cpu", dtype=dtype, **calc_options))


_MODEL = random_student()
_EAGER = random_student()
_EAGER.fused = False


class TestStudentPhysics(CalculatorPhysicsTests):
    """Random weights, the fused CPU kernels (the calculator's default)."""

    @pytest.fixture(params=["float64", "float32"])
    def physics_model(self, request):
        return student_model(_MODEL, request.param, "random student")


class TestStudentPhysicsWithSkin(CalculatorPhysicsTests):
    """Same checks through a calculator whose neighbour list carries a large skin."""

    @pytest.fixture(params=["float64", "float32"])
    def physics_model(self, request):
        no_skin = "batch_calculate builds one neighbour list per batch: the skin plays no part"
        return student_model(_MODEL, request.param, "random student, skin 2 Å", skin=2.0,
                             skips=dict.fromkeys(("batched_equals_single", "batch_structures_independent"),
                                                 no_skin))


class TestStudentPhysicsEager(CalculatorPhysicsTests):
    """The eager PyTorch path (used for training and on GPUs)."""

    @pytest.fixture(params=["float64", "float32"])
    def physics_model(self, request):
        return student_model(_EAGER, request.param, "random student, eager")


class TestTrainedStudentPhysics(CalculatorPhysicsTests):
    """A student trained on EMT labels of Cu (``trained_student`` in conftest.py): trained weights, only
    the element it saw, in float64 (the checks are exact there; float32 runs on the random students)."""

    @pytest.fixture
    def physics_model(self, trained_student):
        return student_model(trained_student, "float64", "trained student", elements=trained_student.elements)


def emt_model() -> PhysicsModel:
    return PhysicsModel(
        name="EMT", make=EMT, symmetry=1e-9, fd_forces=1e-6, fd_stress=1e-6, elements=(1, 6, 8, 29),
        skips={"smooth_at_cutoff": "EMT's cutoff is a Fermi function: small but not zero at its radius",
               "batched_equals_single": "EMT has no batched evaluation",
               "batch_structures_independent": "EMT has no batched evaluation"})


class TestEMTPhysics(CalculatorPhysicsTests):
    """ASE's EMT: a conservative, analytic reference for the checks themselves."""

    @pytest.fixture
    def physics_model(self):
        return emt_model()


TEACHER_SUBSET = "teachers run a subset of the checks to keep the default suite's time"


_TEACHERS: dict = {}


def shared(key: str, factory):
    """One calculator per teacher for the whole module (teachers take seconds to build and to warm up;
    an ASE calculator recomputes whenever the atoms change, so sharing it changes no result)."""
    def make():
        if key not in _TEACHERS:
            _TEACHERS[key] = factory()
        return _TEACHERS[key]

    return make


class Water(StructureSet):
    """A rattled water molecule: GFN2-xTB's finite differences need 6 calls per atom."""

    def molecule(self, seed: int = 0):
        atoms = Atoms("H2O", positions=[[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
        atoms.rattle(0.05, seed=seed)
        return atoms


class TestGFN2xTBPhysics(CalculatorPhysicsTests):
    """tblite's GFN2-xTB on a molecule: symmetry and forces against finite differences."""

    @pytest.fixture
    def structures(self):
        return Water((1, 8))

    @pytest.fixture
    def physics_model(self):
        pytest.importorskip("tblite.ase", reason="tblite (GFN2-xTB teacher) is not installed")
        from mlff_calc.teachers import load_teacher

        runs = ("rotation_molecule", "permutation", "forces_finite_differences")
        skips = {check: TEACHER_SUBSET for check in CHECKS if check not in runs}
        xtb = shared("xtb", lambda: load_teacher("gfn2-xtb", accuracy=0.01))
        return PhysicsModel(name="GFN2-xTB", make=xtb,
                            symmetry=1e-6, fd_forces=1e-4, elements=(1, 8), periodic=False, skips=skips)


class TestOrbV2Physics(CalculatorPhysicsTests):
    """Orb-v2's architecture with random weights (the real ones cannot be downloaded in tests), on a
    molecule (its periodic images are checked in test_teachers.py)."""

    @pytest.fixture
    def physics_model(self, orb_random_teacher):
        direct = "Orb-v2 predicts forces directly, not as -dE/dx: it is not exactly conservative"
        skips = {check: TEACHER_SUBSET for check in CHECKS}
        skips.update(forces_finite_differences=direct, stress_finite_differences=direct,
                     smooth_at_symmetric_structure=direct,
                     rotation_molecule="Orb-v2 is not rotation-equivariant by construction (it learns "
                                       "equivariance from augmented data; random weights have none)",
                     rotation_triclinic_cell="Orb-v2 is not rotation-equivariant by construction",
                     distant_fragments_add_up="Orb-v2's energy head averages atom features over the "
                                              "whole structure before its MLP: not a sum of local terms")
        for check in ("translation", "permutation"):
            skips.pop(check)
        return PhysicsModel(name="Orb-v2 (random weights)", symmetry=1e-4, cutoff=6.0, elements=(1, 6, 8),
                            periodic=False, skips=skips, make=lambda: orb_random_teacher)


@pytest.mark.slow  # loading SevenNet-0 takes ~5 s; `make test-all` runs it
class TestSevenNetPhysics(CalculatorPhysicsTests):
    """SevenNet-0 (weights ship in the sevenn wheel): E(3)-equivariant, forces by autograd, float32."""

    @pytest.fixture
    def physics_model(self):
        pytest.importorskip("sevenn", reason="sevenn (SevenNet-0 teacher) is not installed")
        from mlff_calc.teachers import load_teacher

        runs = ("rotation_molecule", "permutation", "distant_fragments_add_up")
        skips = {check: TEACHER_SUBSET for check in CHECKS if check not in runs}
        return PhysicsModel(name="SevenNet-0", make=shared("sevennet", lambda: load_teacher("sevennet-0")),
                            symmetry=2e-4, cutoff=5.0, elements=(1, 6, 8), skips=skips)


def test_every_model_skips_only_with_reasons():
    """The skip tables: every reason stated, every name a real check, and the trained student and EMT
    run the symmetry, derivative and image checks (acceptance of issue 13)."""
    must_run = {"rotation_molecule", "rotation_triclinic_cell", "translation", "permutation",
                "forces_finite_differences", "stress_finite_differences", "supercell_extensive",
                "wrapped_unwrapped", "distant_fragments_add_up"}
    emt = emt_model()
    assert not must_run & set(emt.skips)
    assert all(reason.strip() for reason in {**emt.skips, **FLOAT32_SKIPS}.values())
    with pytest.raises(ValueError, match="without a reason"):
        PhysicsModel(name="x", make=EMT, symmetry=1.0, skips={"translation": " "})
    with pytest.raises(ValueError, match="unknown checks"):
        PhysicsModel(name="x", make=EMT, symmetry=1.0, skips={"translaton": "typo"})


def test_conftest_fails_the_run_on_a_physics_check_skipped_without_reason(request):
    """The hook in tests/conftest.py: a skipped physics check is listed with its reason, and one
    skipped without a reason makes the whole run fail."""
    from types import SimpleNamespace

    hooks = next(p for p in request.config.pluginmanager.get_plugins() if hasattr(p, "_PHYSICS_SKIPS"))
    skips, before = hooks._PHYSICS_SKIPS, list(hooks._PHYSICS_SKIPS)
    try:
        for reason in ("Skipped: physics check does not apply: x", "Skipped"):
            hooks.pytest_runtest_logreport(SimpleNamespace(
                skipped=True, nodeid="tests/unit/test_physics.py::TestX::test_translation[float64]",
                longrepr=("physics.py", 1, reason)))
        assert skips[-2:] == [(skips[-2][0], "physics check does not apply: x"), (skips[-1][0], "")]
        session = SimpleNamespace(exitstatus=0)
        hooks.pytest_sessionfinish(session)
        assert session.exitstatus == 1
    finally:
        skips[:] = before
