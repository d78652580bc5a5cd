"""The whole distillation pipeline in one call: sample -> label -> train -> evaluate -> MD check.

    from mlff_calc.pipeline import distill
    result = distill("gfn2-xtb", ["seeds.xyz"], "runs/x", preset="quick")
    result.summary["force_mae_ev_per_ang"], result.checkpoint      # RUN_DIR/student.pt

Resumable stage by stage (RUN_DIR/state.json, :mod:`.distill`); every setting in a YAML recipe
(:mod:`.recipe`, presets in ``mlff_calc/recipes/``).
"""

from .distill import DistillResult, distill, format_summary, print_summary
from .recipe import PRESETS, load_recipe

__all__ = ["distill", "DistillResult", "format_summary", "print_summary", "load_recipe", "PRESETS"]
