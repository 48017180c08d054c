"""Options of the loop fit (section ``[loops]``): one dataclass whose checks both the pipeline
stage and :func:`switchscope.loops.fit_loops` use."""

from __future__ import annotations

import dataclasses
from collections.abc import Container
from typing import Any, Literal

from .._config import StageConfig, register
from .._errors import ConfigError
from ._models import MODELS

#: Channels whose curves are not hysteresis loops, and why: the loop models describe the
#: piezoresponse (A cos phi), whose sign follows the polarization.
NOT_LOOPS: dict[str, str] = {
    "resonance": "a butterfly-shaped channel (contact resonance frequency), not a hysteresis loop",
    "quality_factor": "a butterfly-shaped channel (quality factor of the resonance), not a hysteresis loop",
    "amplitude": "a butterfly-shaped channel (response magnitude, no sign), not a hysteresis loop",
    "phase": "the sign of the response (two levels, in degrees), not a loop of its size",
}


def check_loop_channel(name: str, where: str = "[loops] channel") -> None:
    """Refuse a channel whose curves are not hysteresis loops (see :data:`NOT_LOOPS`).

    ``<channel>_clean`` and ``reconstruction_<channel>`` count as their channel.

    Raises
    ------
    ConfigError
        One line naming the option, the channel, why it is no loop and what to fit instead.
    """
    base = str(name).removesuffix("_clean").removeprefix("reconstruction_")
    if base in NOT_LOOPS:
        raise ConfigError(f"{where} = {str(name)!r}: {base} is {NOT_LOOPS[base]}; loop fitting applies to "
                          "piezoresponse (set it to piezoresponse, or leave it unset)")


def default_loop_variable(variables: Container[Any]) -> str | None:
    """The variable a loop fit uses when ``[loops] channel`` is unset: ``piezoresponse_clean``,
    else ``piezoresponse``; None when ``variables`` has neither."""
    for name in ("piezoresponse_clean", "piezoresponse"):
        if name in variables:
            return name
    return None


@register("loops")
@dataclasses.dataclass(frozen=True, kw_only=True)
class LoopsConfig(StageConfig):
    """Configuration of the ``loops`` stage (section ``[loops]``).

    Attributes
    ----------
    model : {"paper13", "bglib9"}
        Loop model: the paper's 13-parameter loop or BGlib's 9-parameter loop.
    channel : str or None
        Variable to fit; None fits ``piezoresponse_clean`` if present, else ``piezoresponse`` (and
        a run without either skips the stage). Only hysteresis loops are fitted: resonance,
        quality factor, amplitude and phase (butterflies or two-level signals) are refused.
    n_clusters : int
        Clusters of the k-means priors (0: data-driven starts only).
    max_iter : int
        Most Levenberg-Marquardt iterations per pixel.
    race_iter : int or None
        Iterations every start runs before only the best start of each pixel goes on (None:
        the model's default, 10 for paper13, 2 for bglib9).
    ftol, xtol : float
        Convergence tolerances (relative cost decrease, relative step).
    chunk_size : int
        Pixels fitted together (bounds memory).
    nucleation_fraction : float
        Change of the response, as a fraction of the height, that marks nucleation.
    dtype : {"float64", "float32"}
        Float type of the fit.
    figures : bool
        Let the report draw the switching maps and the example-pixel grid.
    """

    model: Literal["paper13", "bglib9"] = "paper13"
    channel: str | None = None
    n_clusters: int = 8
    max_iter: int = 100
    race_iter: int | None = None
    ftol: float = 1e-5
    xtol: float = 1e-7
    chunk_size: int = 4096
    nucleation_fraction: float = 0.03
    dtype: Literal["float64", "float32"] = "float64"
    figures: bool = True

    presets = {"paper": {"model": "paper13", "nucleation_fraction": 0.03}}

    def validate(self) -> None:
        self.check_choice("model", tuple(MODELS))
        if self.channel is not None and not isinstance(self.channel, str):
            self._fail("channel", "a variable name or None", self.channel)
        if self.channel is not None:
            check_loop_channel(self.channel)
        self.check_number("n_clusters", lo=0, hi=64, integer=True)
        self.check_number("max_iter", lo=1, hi=100_000, integer=True)
        self.check_number("race_iter", lo=1, hi=1000, integer=True, optional=True)
        self.check_number("ftol", lo=0, hi=0.1, lo_open=True)
        self.check_number("xtol", lo=0, hi=0.1, lo_open=True)
        self.check_number("chunk_size", lo=1, hi=10_000_000, integer=True)
        self.check_number("nucleation_fraction", lo=0, hi=0.49, lo_open=True)
        self.check_choice("dtype", ("float64", "float32"))
        self.check_choice("figures", (True, False))
