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
from .io import describe, load, paper_voltage, save
from .preprocess import CleanConfig, clean, denormalize, normalize
from .synthetic import SyntheticConfig
from .synthetic import make_dataset as make_synthetic

__version__ = "0.1.0"

__all__ = [
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
    "save",
    "__version__",
]
