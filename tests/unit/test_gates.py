"""Acceptance gates (issue 10 item 4): directions, missing metrics, typed config, the recipe section."""

from __future__ import annotations

import pytest

from mlff_calc.errors import InputError
from mlff_calc.evaluation import gates as G
from mlff_calc.pipeline.recipe import dump_recipe, load_recipe

VALUES = {"force_mae_ev_per_ang": 0.03, "force_cosine_mean": 0.995, "drift_mev_per_atom_ps": -0.8,
          "md_stable": True, "speed_ratio": 4.0}


def test_no_gates_check_nothing():
    outcome = G.check(G.GatesConfig(), VALUES)
    assert outcome == {"passed": True, "results": [], "failures": []}
    assert not G.GatesConfig().any()


@pytest.mark.parametrize("key, bar, passes", [
    ("force_mae_ev_per_ang", 0.05, True), ("force_mae_ev_per_ang", 0.02, False),
    ("force_cosine_mean", 0.99, True), ("force_cosine_mean", 0.999, False),
    ("drift_mev_per_atom_ps", 1.0, True), ("drift_mev_per_atom_ps", 0.5, False),  # |-0.8| > 0.5
    ("speed_ratio", 3.0, True), ("speed_ratio", 10.0, False),
    ("md_stable", True, True),
])
def test_each_bar_has_its_direction(key, bar, passes):
    outcome = G.check(G.gates_from_dict({key: bar}), VALUES)
    assert outcome["passed"] is passes and len(outcome["results"]) == 1
    if not passes:
        (line,) = outcome["failures"]
        value = f"{abs(VALUES[key]):.4g}"
        assert line.startswith(f"{key}: ") and f"{bar:g}" in line and value in line  # names value and bar


def test_unstable_md_and_unmeasured_metrics_miss_their_bars():
    outcome = G.check(G.gates_from_dict({"md_stable": True, "drift_mev_per_atom_ps": 1.0}),
                      {**VALUES, "md_stable": False, "drift_mev_per_atom_ps": None})
    assert not outcome["passed"]
    assert outcome["failures"] == ["drift_mev_per_atom_ps: not measured",
                                   "md_stable: an MD run was unstable (required: stable)"]
    with pytest.raises(G.GateFailed, match="2 acceptance gates missed: drift_mev_per_atom_ps"):
        raise G.GateFailed(outcome["failures"])


@pytest.mark.parametrize("raw, message", [
    ({"force_mae": 0.1}, "unknown key force_mae"),
    ({"speed_ratio": "fast"}, "speed_ratio: expected float"),
    ({"force_mae_ev_per_ang": -1.0}, "force_mae_ev_per_ang: must be > 0"),
    ({"force_cosine_mean": 2.0}, "force_cosine_mean: must be in"),
])
def test_bad_gates_are_refused_by_name(raw, message):
    with pytest.raises(InputError, match=message):
        G.gates_from_dict(raw)


def test_gates_file(tmp_path):
    path = tmp_path / "gates.yaml"
    path.write_text("force_mae_ev_per_ang: 0.05\nmd_stable: true\n")
    gates = G.load_gates(path)
    assert gates.force_mae_ev_per_ang == 0.05 and gates.md_stable is True and gates.speed_ratio is None
    path.write_text("[1, 2]\n")
    with pytest.raises(InputError, match="gates file"):
        G.load_gates(path)


def test_recipe_gates_section_is_typed_and_optional():
    plain = load_recipe("quick")
    assert not any(v is not None for v in plain["gates"].values())  # default: no gates
    recipe = load_recipe("quick", overrides={"gates.force_mae_ev_per_ang": 0.05, "gates.md_stable": True})
    assert recipe["gates"]["force_mae_ev_per_ang"] == 0.05 and "gates:" in dump_recipe(recipe)
    with pytest.raises(InputError, match="recipe: unknown key gates.force_mae"):
        load_recipe("quick", overrides={"gates.force_mae": 0.05})
    old = {k: v for k, v in plain.items() if k != "gates"}  # a recipe.yaml written before gates existed
    assert load_recipe(base=old)["gates"] == plain["gates"]


def test_summary_values_take_the_worst_run():
    summary = {"force_mae_ev_per_ang": 0.02, "force_cosine_mean": 0.999, "speed_ratio": 2.0,
               "nve": {"float32": {"stable": True, "worst_drift_mev_per_atom_ps": 0.1},
                       "float64": {"stable": False, "worst_drift_mev_per_atom_ps": -2.0}}}
    values = G.values_from_summary(summary)
    assert values["drift_mev_per_atom_ps"] == -2.0 and values["md_stable"] is False
    assert G.check_summary({}, summary) is None
    outcome = G.check_summary({"drift_mev_per_atom_ps": 1.0}, summary)
    assert outcome["failures"] == ["drift_mev_per_atom_ps: |-2| meV/atom/ps > 1 meV/atom/ps (at most)"]
