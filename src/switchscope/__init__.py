"""switchscope: ferroelectric switching spectroscopy, from raw BEPS loops to switching mechanisms."""

from ._config import STAGE_CONFIGS, StageConfig, load_config
from ._dataset import CHANNELS, make_dataset
from ._errors import (
    ConfigError,
    ConvergenceWarning,
    DataError,
    DataWarning,
    FormatError,
    NotFittedError,
    OutputError,
    SwitchscopeError,
)
from ._grid import flatten, unflatten
from . import plot, stages
from .io import describe, load, paper_voltage, save
from .preprocess import CleanConfig, clean, denormalize, normalize
from .synthetic import SyntheticConfig
from .synthetic import make_dataset as make_synthetic
from .select import apply_selection, parse_select
from .waveform import Waveform, check_bipolar, describe_waveform, split_cycles, triangle_waveform

__version__ = "0.1.0"

# Names from modules that import torch or matplotlib are loaded on first use, so that
# `import switchscope` and the command line start fast.
_LAZY = {
    "fit_loops": "switchscope.loops",
    "fit_loops_dataset": "switchscope.loops",
    "LoopFitResult": "switchscope.loops",
    "LoopsConfig": "switchscope.loops",
    "decompose_dataset": "switchscope.decomposition",
    "DecompositionConfig": "switchscope.decomposition",
    "Autoencoder": "switchscope.autoencoder",
    "AutoencoderConfig": "switchscope.autoencoder",
    "load_keras": "switchscope.autoencoder.keras",
    "load_keras_decoder": "switchscope.autoencoder.keras",
    "load_pretrained": "switchscope.autoencoder.keras",
    "InterpretConfig": "switchscope.interpret",
    "generate_loops": ("switchscope.interpret", "generate"),
    "build_report": "switchscope.report",
    "ReportConfig": "switchscope.report",
    "run": "switchscope.pipeline",
    "fit_sho": "switchscope.sho",
    "sho_response": "switchscope.sho",
    "project_loops": "switchscope.projection",
    "SHOFitResult": "switchscope.sho",
    "write_usid": "switchscope.io.usid_write",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        target = _LAZY[name]
        module, attr = target if isinstance(target, tuple) else (target, name)
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'switchscope' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = [*_LAZY,
    "CHANNELS",
    "CleanConfig",
    "SyntheticConfig",
    "clean",
    "denormalize",
    "make_synthetic",
    "normalize",
    "STAGE_CONFIGS",
    "ConfigError",
    "ConvergenceWarning",
    "DataError",
    "DataWarning",
    "FormatError",
    "NotFittedError",
    "OutputError",
    "StageConfig",
    "SwitchscopeError",
    "flatten",
    "load_config",
    "make_dataset",
    "unflatten",
    "describe",
    "load",
    "paper_voltage",
    "Waveform",
    "check_bipolar",
    "describe_waveform",
    "split_cycles",
    "triangle_waveform",
    "apply_selection",
    "parse_select",
    "plot",
    "save",
    "stages",
    "__version__",
]
