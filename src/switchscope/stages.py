"""The stage contract of ``switchscope run``, public: what a stage is, its options, its context.

A stage is a plain function ``run(ds, config, ctx) -> ds``: it takes the run's Dataset, its own
options (a :class:`StageConfig` subclass, one TOML section) and the :class:`RunContext`, and
returns a new Dataset with its results added (never replacing inputs). It computes only: it
adds key numbers to ``ctx.summary[<name>]`` and may save fitted models under ``ctx.models``, but
never draws; the report draws every figure from the results.

:data:`STAGES` is the registry, in the order of a run. The pipeline, the command line
(``--stages`` and its help), the TOML sections and the docs all read it.

Examples
--------
>>> from switchscope.stages import STAGES, get_stage
>>> list(STAGES)[:4]
['sho', 'project', 'clean', 'loops']
>>> get_stage("loops").section
'loops'
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable

import xarray as xr

from ._config import STAGE_CONFIGS, StageConfig, configs_from_mapping, load_config, register
from ._context import RunContext
from ._errors import ConfigError
from ._text import printable

StageFn = Callable[[xr.Dataset, StageConfig, RunContext], xr.Dataset]


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a run.

    Attributes
    ----------
    name : str
        The name in ``--stages``.
    module, function : str
        Where its function lives (imported on first use: a run of ``clean`` never imports torch).
    section : str
        Its TOML section, i.e. the :class:`StageConfig` registered under that name.
    summary : str
        What it does, in one line (help texts and docs).
    """

    name: str
    module: str
    function: str
    section: str
    summary: str

    @property
    def run(self) -> StageFn:
        """The stage's function ``(ds, config, ctx) -> ds``."""
        return getattr(importlib.import_module(self.module), self.function)

    @property
    def config_class(self) -> type[StageConfig]:
        """The options dataclass of the stage (its module registers it on import)."""
        importlib.import_module(self.module)
        if self.section not in STAGE_CONFIGS:
            raise ConfigError(f"stage {self.name!r} registers no options section [{self.section}]")
        return STAGE_CONFIGS[self.section]

    def default_config(self) -> StageConfig:
        return self.config_class()


def _stages(*items: Stage) -> dict[str, Stage]:
    return {s.name: s for s in items}


#: Every stage, in the order of a run.
STAGES: dict[str, Stage] = _stages(
    Stage("sho", "switchscope.sho_stage", "sho_stage", "sho",
          "batched SHO fit of every raw band-excitation spectrum (only where the data holds spectra)"),
    Stage("project", "switchscope.sho_stage", "project_stage", "project",
          "loops from SHO amplitude and phase: BGlib's projection or A cos(phi) (only without piezoresponse)"),
    Stage("clean", "switchscope.preprocess", "stage", "clean",
          "the paper's cleaning: range check, NaN interpolation, outlier removal, normalization"),
    Stage("loops", "switchscope.loops._stage", "stage", "loops",
          "batched fit of every loop (paper13 or bglib9) and the switching maps"),
    Stage("decomposition", "switchscope.decomposition", "stage", "decomposition",
          "PCA, NMF, k-means on PCA scores and the paper's divisive k-means"),
    Stage("autoencoder", "switchscope.autoencoder.stage", "stage", "autoencoder",
          "the sparse LSTM autoencoder (trained, or the published networks) and its embedding maps"),
    Stage("interpret", "switchscope.interpret", "interpret_stage", "interpret",
          "the decoder as a generator, cross-channel generation, neurons against truth and clusters"),
    Stage("mechanisms", "switchscope.mechanisms", "stage", "mechanisms",
          "mechanism detector maps (three-state, hardening, c-like) and neurons named by what they track"),
    Stage("score", "switchscope.synthetic", "score_stage", "synthetic",
          "scores against the synthetic film's ground truth (only where there is truth)"),
    Stage("report", "switchscope.report", "report_stage", "report",
          "the offline HTML page with every figure and the explorer"),
)


def get_stage(name: str) -> Stage:
    """The stage called ``name``; a :class:`ConfigError` listing the stages otherwise."""
    if name not in STAGES:
        raise ConfigError(f"unknown stage {printable(repr(name), 60)}; stages are: {', '.join(STAGES)}")
    return STAGES[name]


def stage_names() -> list[str]:
    """The stage names, in run order."""
    return list(STAGES)


__all__ = [
    "STAGES",
    "STAGE_CONFIGS",
    "RunContext",
    "Stage",
    "StageConfig",
    "StageFn",
    "configs_from_mapping",
    "get_stage",
    "load_config",
    "register",
    "stage_names",
]
