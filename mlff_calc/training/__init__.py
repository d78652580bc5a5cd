"""Training: distil labelled frames (``mlff-calc label``) into a student.

    from mlff_calc.training import train, load_config
    result = train(load_config("cfg.yaml", {"data.path": "data.h5", "run.out": "runs/x"}))
    result.test_metrics["force_mae_ev_per_ang"]        # eV/Å, best weights vs the teacher on the test split
"""

from .config import DataConfig, LossConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig, load_config
from .trainer import TrainResult, train

__all__ = ["train", "TrainResult", "TrainConfig", "ModelConfig", "DataConfig", "LossConfig", "OptimConfig",
           "RunConfig", "load_config"]
