"""The ``loops`` stage of ``switchscope run`` and its configuration."""

from __future__ import annotations

import time

import numpy as np
import xarray as xr

from .._context import RunContext
from .._errors import ConfigError, DataError
from ._fit import LoopFitResult, fit_loops
from ._metrics import METRICS
from ._options import NOT_LOOPS, LoopsConfig, check_loop_channel, default_loop_variable


def _device(name: str) -> str:
    from .._device import resolve_device

    return resolve_device(name)


def run_fit(ds: xr.Dataset, config: LoopsConfig, *, device: str | None = None,
            seed: int = 0) -> LoopFitResult:
    """Fit the loops of ``ds`` with the options of ``config``."""
    if not isinstance(config, LoopsConfig):
        raise ConfigError(f"the loops stage needs a LoopsConfig, got {type(config).__name__}")
    channel = config.channel or default_loop_variable(ds) or "piezoresponse"
    check_loop_channel(channel)
    if channel not in ds and config.channel is None:
        raise DataError(missing_piezoresponse(ds))
    if channel not in ds:
        raise DataError(f"the loops stage fits {channel!r}, which is not in the data "
                        f"(has: {', '.join(map(str, ds.data_vars))}); set [loops] channel")
    return fit_loops(ds, model=config.model, channel=channel, n_clusters=int(config.n_clusters),
                     max_iter=int(config.max_iter),
                     race_iter=None if config.race_iter is None else int(config.race_iter),
                     ftol=float(config.ftol), xtol=float(config.xtol),
                     chunk_size=int(config.chunk_size),
                     nucleation_fraction=float(config.nucleation_fraction),
                     dtype=config.dtype, device=device, seed=seed)


def missing_piezoresponse(ds: xr.Dataset) -> str:
    """Why a loop fit with the default channel has nothing to fit (one line)."""
    has = [str(v) for v in ds.data_vars if str(v).removesuffix("_clean") in NOT_LOOPS]
    why = (f"; {has[0].removesuffix('_clean')} is {NOT_LOOPS[has[0].removesuffix('_clean')]}" if has else "")
    return (f"loop fitting applies to piezoresponse (hysteresis loops), which is not in the data "
            f"(has: {', '.join(map(str, ds.data_vars)) or 'nothing'}){why}; give piezoresponse data")


def fit_loops_dataset(ds: xr.Dataset, config: LoopsConfig | None = None) -> xr.Dataset:
    """Fit every loop of ``ds`` and return a new Dataset with the ``loop_*`` variables added.

    This is what ``switchscope fit-loops`` calls.
    """
    config = config or LoopsConfig()
    channel = config.channel or default_loop_variable(ds) or "piezoresponse"
    if channel in ds:
        n_inf = int(np.isinf(ds[channel].values).sum())
        if n_inf:
            # NaNs are gaps a fit can skip; Inf marks failed upstream fits that need cleaning.
            raise DataError(f"{channel!r} holds {n_inf} Inf value(s); clean the data first "
                            "(switchscope run --data FILE --stages clean) or replace them with NaN")
    return run_fit(ds, config).to_dataset(like=ds)


def _summary(res: LoopFitResult, seconds: float) -> dict:
    r2 = res.r2[np.isfinite(res.r2)]

    def med(x: np.ndarray) -> float | None:
        x = x[np.isfinite(x)]
        return float(np.median(x)) if x.size else None

    out = {
        "model": res.model,
        "n_pixels": int(res.r2.size),
        "n_converged": int(res.converged.sum()),
        "status_counts": {str(k): int(c) for k, c in enumerate(np.bincount(res.status)) if c},
        "median_r2": float(np.median(r2)) if r2.size else None,
        "min_r2": float(r2.min()) if r2.size else None,
        "fraction_r2_above_0.9": float((r2 > 0.9).mean()) if r2.size else None,
        "seconds": round(seconds, 4),
    }
    for name in METRICS:
        out[f"median_{name}"] = med(res.metrics[name])
    return out


def stage(ds: xr.Dataset, config: LoopsConfig, ctx: RunContext) -> xr.Dataset:
    """Pipeline stage ``loops``: fit every loop, add the ``loop_*`` variables and switching maps.

    Adds ``ctx.summary["loops"]`` (model, convergence, R2, medians of the switching parameters,
    time); the report draws the maps and example pixels from the ``loop_*`` variables. With
    ``[loops] channel`` unset and no piezoresponse in the data, it fits nothing and records why
    (``ctx.summary["loops"]["skipped"]``); a run drops the stage before it starts.
    """
    if config.channel is None and default_loop_variable(ds) is None:
        ctx.summary["loops"] = {"skipped": missing_piezoresponse(ds)}
        return ds.copy()
    t0 = time.perf_counter()
    res = run_fit(ds, config, device=_device(ctx.device), seed=ctx.seed)
    seconds = time.perf_counter() - t0
    out = res.to_dataset(like=ds)
    out["loop_fit"].attrs["fitted_variable"] = config.channel or default_loop_variable(ds)
    ctx.summary["loops"] = _summary(res, seconds)
    return out
