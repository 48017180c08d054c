"""Loop models, batched loop fitting of every pixel at once, and switching maps (DESIGN 2.3)."""

from ._fit import LoopFitResult, fit_loops
from ._lm import STATUS_MESSAGES, levenberg_marquardt
from ._metrics import METRICS, loop_metrics
from ._models import MODELS, LoopModel, bglib9, get_model, paper13, sweep_masks
from ._stage import LoopsConfig, fit_loops_dataset, run_fit, stage

__all__ = [
    "METRICS",
    "MODELS",
    "STATUS_MESSAGES",
    "LoopFitResult",
    "LoopModel",
    "LoopsConfig",
    "bglib9",
    "fit_loops",
    "fit_loops_dataset",
    "get_model",
    "levenberg_marquardt",
    "loop_metrics",
    "paper13",
    "run_fit",
    "stage",
    "sweep_masks",
]
