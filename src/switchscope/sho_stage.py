"""The ``sho`` and ``project`` stages of ``switchscope run``: from raw band-excitation spectra to
loops, before cleaning.

``sho`` fits the simple-harmonic-oscillator model to every complex spectrum of the selected data
(``spectrum``, dims ``(row, col, step, freq)``, ``freq`` in Hz) with :func:`switchscope.sho.fit_sho`
and adds ``amplitude``, ``resonance`` (kHz), ``quality_factor``, ``phase`` (degrees), ``sho_r2``
and ``sho_status`` on ``(row, col, step)``. ``project`` turns amplitude and phase into
``piezoresponse`` loops with :func:`switchscope.sho.project_loops` (BGlib's projection by default,
the paper's ``A cos(phi)`` under ``--preset paper``) and adds the ``projection_angle`` and
``projection_offset`` maps. Each runs only where its input is present and its output is not.
"""

from __future__ import annotations

import dataclasses
import time
import numpy as np
import xarray as xr

from ._config import StageConfig, register
from ._context import RunContext
from ._errors import DataError

#: SHO results that the ``sho`` stage adds (and that, present in a file, make it unnecessary).
SHO_VARIABLES = ("amplitude", "resonance", "quality_factor", "phase")

_FREQ_SCALE = {"hz": 1.0, "khz": 1e3, "mhz": 1e6}


@register("sho")
@dataclasses.dataclass(frozen=True, kw_only=True)
class SHOConfig(StageConfig):
    """Options of the ``sho`` stage (TOML ``[sho]``).

    Attributes
    ----------
    dtype : {"float64", "float32"}
        Float type of the fit (float32 is faster, on GPUs especially).
    max_iter : int
        Most Levenberg-Marquardt iterations per spectrum.
    chunk : int
        Spectra fitted together (bounds the memory).
    q_min, q_max : float
        Bounds of the quality factor.
    guess : {"best", "complex", "peak"}
        Starting point: the better of BGlib's complex-plane estimate and the peak of |H|.
    """

    dtype: str = "float64"
    max_iter: int = 50
    chunk: int = 65536
    q_min: float = 1.0
    q_max: float = 1e4
    guess: str = "best"

    def validate(self) -> None:
        self.check_choice("dtype", ("float64", "float32"))
        self.check_number("max_iter", lo=1, hi=10_000, integer=True)
        self.check_number("chunk", lo=1, hi=10_000_000, integer=True)
        self.check_number("q_min", lo=0, hi=1e6, lo_open=True)
        self.check_number("q_max", lo=0, hi=1e7, lo_open=True)
        if self.q_max <= self.q_min:
            self._fail("q_max", f"larger than q_min ({self.q_min})", self.q_max)
        self.check_choice("guess", ("best", "complex", "peak"))


@register("project")
@dataclasses.dataclass(frozen=True, kw_only=True)
class ProjectConfig(StageConfig):
    """Options of the ``project`` stage (TOML ``[project]``).

    Attributes
    ----------
    method : {"bglib", "cos"}
        ``bglib``: BGlib's ``projectLoop`` (rotation of the complex loop onto its axis of
        switching); ``cos``: the paper's ``A cos(phi)``.
    """

    method: str = "bglib"
    presets = {"paper": {"method": "cos"}}

    def validate(self) -> None:
        self.check_choice("method", ("bglib", "cos"))


def needs_sho(ds: xr.Dataset) -> bool:
    """True when ``ds`` holds raw spectra and not yet their SHO results."""
    return "spectrum" in ds.data_vars and not all(v in ds.data_vars for v in SHO_VARIABLES)


def needs_projection(ds: xr.Dataset, *, after_sho: bool = False) -> bool:
    """True when amplitude and phase (present, or coming from ``sho``) exist but no piezoresponse."""
    has = after_sho or ("amplitude" in ds.data_vars and "phase" in ds.data_vars)
    return has and "piezoresponse" not in ds.data_vars


def check_spectra(ds: xr.Dataset) -> None:
    """Refuse, before any work, spectra the stage cannot fit (wrong dims, no frequencies)."""
    da = ds["spectrum"]
    extra = [d for d in da.dims if d not in ("row", "col", "step", "freq")]
    if extra:
        raise DataError(f"the spectra still have the dims {', '.join(map(str, extra))}; select one value of each "
                        "(--select field=... --select cycle=...)")
    if "freq" not in ds.coords or ds.sizes.get("freq", 0) < 3:
        raise DataError("the spectra have no frequency axis of at least 3 bins (coordinate freq in Hz); "
                        "give band-excitation spectra with their bin frequencies")
    unit = str(ds["freq"].attrs.get("units", "Hz")).strip().lower()
    if unit not in _FREQ_SCALE:
        raise DataError(f"the spectra's frequencies are in {ds['freq'].attrs.get('units')!r}; give Hz, kHz or MHz")
    if da.dtype.kind != "c":
        raise DataError(f"spectrum holds {da.dtype} values; band-excitation spectra are complex")


def _device(ctx: RunContext) -> str:
    from ._device import resolve_device

    return resolve_device(ctx.device)


def sho_stage(ds: xr.Dataset, config: SHOConfig, ctx: RunContext) -> xr.Dataset:
    """Fit every spectrum; add the SHO maps per step and ``ctx.summary["sho"]``."""
    from .sho import fit_sho

    if not needs_sho(ds):
        return ds
    check_spectra(ds)
    t0 = time.perf_counter()
    da = ds["spectrum"].transpose("row", "col", "step", "freq")
    hz = _FREQ_SCALE[str(ds["freq"].attrs.get("units", "Hz")).strip().lower()]
    freq_khz = np.asarray(ds["freq"].values, dtype=float) * hz / 1e3
    res = fit_sho(da.values, freq_khz, dtype=config.dtype,
                  device=_device(ctx), chunk=int(config.chunk), max_iter=int(config.max_iter),
                  q_bounds=(float(config.q_min), float(config.q_max)), guess=config.guess)
    dims = ("row", "col", "step")
    units = str(ds["spectrum"].attrs.get("units", "a.u."))
    out = ds.assign(
        amplitude=xr.DataArray(res.amplitude, dims=dims, attrs={"units": units, "long_name": "SHO amplitude"}),
        resonance=xr.DataArray(res.resonance, dims=dims, attrs={"units": "kHz", "long_name": "SHO resonance"}),
        quality_factor=xr.DataArray(res.quality_factor, dims=dims, attrs={"units": "1", "long_name": "SHO Q"}),
        phase=xr.DataArray(np.rad2deg(res.phase), dims=dims, attrs={"units": "deg", "long_name": "SHO phase"}),
        sho_r2=xr.DataArray(res.r2, dims=dims, attrs={"units": "1", "long_name": "SHO fit R2"}),
        sho_status=xr.DataArray(res.status.astype(np.int8), dims=dims,
                                attrs={"long_name": "SHO fit status", "meaning": res.message}),
    )
    seconds = time.perf_counter() - t0
    ok = np.isfinite(res.r2)
    ctx.summary["sho"] = {
        "n_spectra": int(res.r2.size), "seconds": round(seconds, 3),
        "spectra_per_s": round(res.r2.size / max(seconds, 1e-9)),
        "median_r2": float(np.median(res.r2[ok])) if ok.any() else None,
        "converged": int(res.converged.sum()), "status": res.message, "dtype": config.dtype,
    }
    return out


def project_stage(ds: xr.Dataset, config: ProjectConfig, ctx: RunContext) -> xr.Dataset:
    """Project amplitude and phase onto loops; add ``piezoresponse`` and the projection maps."""
    from .sho import project_loops

    if not needs_projection(ds):
        return ds
    amp = ds["amplitude"].transpose("row", "col", "step").values
    phase = ds["phase"].transpose("row", "col", "step").values
    unit = str(ds["phase"].attrs.get("units", "deg")).strip().lower()
    res = project_loops(amp, phase, ds["voltage"].values, phase_units="rad" if unit.startswith("rad") else "deg",
                        method=config.method)
    units = str(ds["amplitude"].attrs.get("units", "a.u."))
    out = ds.assign(
        piezoresponse=xr.DataArray(res.piezoresponse, dims=("row", "col", "step"),
                                   attrs={"units": units, "long_name": "piezoresponse",
                                          "projection": config.method}),
        projection_angle=xr.DataArray(res.angle, dims=("row", "col"),
                                      attrs={"units": "rad", "long_name": "angle of the axis of switching"}),
        projection_offset=xr.DataArray(res.offset, dims=("row", "col"),
                                       attrs={"units": units, "long_name": "offset of the axis of switching"}),
    )
    ctx.summary["project"] = {"method": config.method,
                              "median_angle_deg": float(np.nanmedian(np.rad2deg(res.angle)))
                              if np.isfinite(res.angle).any() else None}
    return out

