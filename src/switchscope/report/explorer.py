"""The explorer's data: maps, per-pixel curves and generated curves, compact and exact enough.

Values are quantized to ``digits`` of each variable's half range and stored as deflated,
byte-shuffled int16 differences (:func:`_quantize`; :func:`decode_block` and the page's script
invert it). Grids larger than ``max_pixels`` are subsampled with one stride.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

import numpy as np
import xarray as xr

from .._dataset import CHANNELS
from .figures.autoencoder import reconstruction_error


def _unit(units: Any) -> str:
    """Units as a reader wants them: a dimensionless "1" is shown as nothing."""
    text = str(units)
    return "" if text.strip() in ("1", "") else text


def _quantize(x: np.ndarray, digits: int) -> dict[str, Any]:
    """A compact block holding ``x`` to ``digits`` significant digits of its half range.

    The values become integers ``q`` with ``x ~= offset + q * scale`` (``offset`` the middle of
    the finite range, ``scale`` the half range in ``10**digits / 2`` steps, so a resonance of
    1320 +- 5 kHz keeps its variation and the error is at most ``1 / (2 * 10**digits)`` of the
    range). Consecutive differences of ``q`` (small along smooth
    curves) are stored as little-endian int16 (int32 when they do not fit), byte-shuffled (all
    first bytes, then all second bytes, ...: the high bytes are nearly constant), deflated (zlib)
    and base64-encoded; NaNs are a deflated bit mask. :func:`decode_block` and the page's script
    (``DecompressionStream("deflate")``) invert it.
    """
    import base64
    import zlib

    x = np.asarray(x, dtype=np.float64).ravel()
    finite = np.isfinite(x)
    if finite.any():
        lo, hi = float(x[finite].min()), float(x[finite].max())
        half = (hi - lo) / 2
        # the half range in 10**digits / 2 steps: the error is at most 1/(2 * 10**digits) of the range
        scale = half / (0.5 * 10.0**digits) if half > 0 else 1.0
        offset = (lo + hi) / 2 if half > 0 else lo
    else:
        scale, offset = 1.0, 0.0
    q = np.rint((np.where(finite, x, offset) - offset) / scale).astype(np.int64)
    delta = np.diff(q, prepend=0)
    dtype = "<i2" if delta.size == 0 or np.abs(delta).max() < 2**15 else "<i4"
    block: dict[str, Any] = {
        "offset": offset, "scale": scale, "n": int(x.size), "dtype": dtype[1:],
        "b64": base64.b64encode(zlib.compress(_shuffle(delta.astype(dtype)), 6)).decode("ascii"),
    }
    if not finite.all():
        block["nan_b64"] = base64.b64encode(zlib.compress(np.packbits(~finite, bitorder="little").tobytes(), 6)
                                            ).decode("ascii")
    return block


def _shuffle(a: np.ndarray) -> bytes:
    """The bytes of ``a`` grouped by their place in each value (byte k of every value, k = 0, 1, ...)."""
    return np.ascontiguousarray(a.view(np.uint8).reshape(-1, a.itemsize).T).tobytes()


def decode_block(block: Mapping[str, Any]) -> np.ndarray:
    """The values of a block made by :func:`_quantize` (float64, NaN restored)."""
    import base64
    import zlib

    size = 2 if block["dtype"] == "i2" else 4
    raw = np.frombuffer(zlib.decompress(base64.b64decode(block["b64"])), np.uint8)
    delta = np.ascontiguousarray(raw.reshape(size, -1).T).view("<" + block["dtype"]).ravel()
    x = block["offset"] + np.cumsum(delta.astype(np.int64)) * block["scale"]
    if "nan_b64" in block:
        mask = np.unpackbits(np.frombuffer(zlib.decompress(base64.b64decode(block["nan_b64"])), np.uint8),
                             bitorder="little")[: block["n"]].astype(bool)
        x[mask] = np.nan
    return x


def _grid_vars(ds: xr.Dataset) -> list[str]:
    return [str(v) for v in ds.data_vars
            if ds[v].dims == ("row", "col") and ds[v].dtype.kind in "fiub"]


def _maps(ds: xr.Dataset) -> list[tuple[str, np.ndarray, bool]]:
    """(label, (rows, cols) array, categorical) of every map the explorer shows."""
    from .._embedding import active_neurons

    out: list[tuple[str, np.ndarray, bool]] = []
    for v in _grid_vars(ds):
        # labels get a categorical palette; counts (loop_n_iter) and measures a continuous one
        labels = v.startswith("cluster_") or v in ("loop_status",) or ds[v].dtype.kind == "b"
        out.append((v, ds[v].values.astype(float), labels))
    for ch in CHANNELS:
        if f"embedding_{ch}" in ds:
            emb = ds[f"embedding_{ch}"].transpose("row", "col", ...).values
            for j in np.flatnonzero(active_neurons(emb.reshape(-1, emb.shape[-1]))):
                out.append((f"embedding_{ch}[{j}]", emb[..., j], False))
        err = reconstruction_error(ds, ch)
        if err is not None:
            out.append((f"reconstruction MSE {ch}", err, False))
    for name, k_max in (("pca_scores", 4), ("nmf_abundances", 8)):
        if name in ds:
            a = ds[name].transpose("row", "col", ...).values
            out += [(f"{name}[{k}]", a[..., k], False) for k in range(min(k_max, a.shape[-1]))]
    if not out:
        for ch in CHANNELS:
            if ch in ds:
                with np.errstate(all="ignore"):
                    out.append((f"{ch} mean", np.nanmean(ds[ch].transpose("row", "col", "step").values, -1), False))
    return out[:64]


def _panels(ds: xr.Dataset, channels: tuple[str, ...] = tuple(CHANNELS)) -> list[tuple[str, list[tuple[str, str]]]]:
    """(channel, [(series name, variable)]) of the curve panels of ``channels``."""
    fit_channel = str(ds["loop_fit"].attrs.get("channel", "piezoresponse")) if "loop_fit" in ds else None
    panels = []
    for ch in channels:
        series = [("raw", ch), ("clean", f"{ch}_clean"), ("fit", "loop_fit" if fit_channel == ch else ""),
                  ("reconstruction", f"reconstruction_{ch}")]
        series = [(n, v) for n, v in series if v and v in ds and ds[v].dims == ("row", "col", "step")]
        if any(n != "raw" for n, _ in series):
            panels.append((ch, series))
    if not panels:  # nothing analysed yet: show the measurement itself
        panels = [(ch, [("raw", ch)]) for ch in channels if ch in ds and ds[ch].dims == ("row", "col", "step")]
    if not panels:
        first = [ch for ch in CHANNELS if ch in ds and ds[ch].dims == ("row", "col", "step")][:1]
        return _panels(ds, tuple(first)) if first else []
    return panels


def _colormap(name: str, n: int = 256) -> list[list[int]]:
    import matplotlib

    cmap = matplotlib.colormaps[name]
    return (np.asarray(cmap(np.linspace(0, 1, n)))[:, :3] * 255).round().astype(int).tolist()


def _descending(voltage: np.ndarray) -> np.ndarray:
    """True at the steps of the descending sweeps, read from the voltage itself (any start,
    direction and number of cycles; a step index without a voltage is one rising sweep)."""
    from ..waveform import descending_steps

    return descending_steps(np.asarray(voltage, float))


def _gradient(n: int = 9) -> str:
    stops = ", ".join(f"rgb({r},{g},{b})" for r, g, b in _colormap("viridis", n))
    return f"linear-gradient(to right, {stops})"


#: SHO parameters that the explorer's spectrum panel needs, with the measured ``spectrum``.
SHO_PARAMS = ("amplitude", "resonance", "quality_factor", "phase")

_HZ = {"hz": 1.0, "khz": 1e3, "mhz": 1e6}


def _sho_payload(ds: xr.Dataset, ri: np.ndarray, ci: np.ndarray, digits: int,
                 max_values: int) -> dict[str, Any] | None:
    """Measured spectra and SHO parameters of the explorer's pixels, for the spectrum panel.

    Only when ``ds`` holds ``spectrum`` (row, col, step, freq) and the four SHO parameters. The
    spectra are the heaviest data of a run (60 x 60 x 96 x 16 complex values: about 10 MB even
    quantized), so when the explorer's pixels hold more than ``max_values`` complex values they
    are subsampled again, one explorer pixel in ``k`` along rows and columns (``k`` recorded;
    the page shows the nearest embedded pixel). Real and imaginary parts are quantized like the
    curves; the parameters with one more digit (the model is drawn from them). The resonance is
    in kHz and ``freq_khz`` too, so the page evaluates
    ``A exp(i phi) w0^2 / (w^2 - i w w0 / Q - w0^2)`` (:func:`switchscope.sho.sho_response`)
    in one unit; ``phase`` stays in its units (``phase_units``).
    """
    if "spectrum" not in ds or "freq" not in ds.coords or not all(v in ds for v in SHO_PARAMS):
        return None
    spec = ds["spectrum"]
    if set(spec.dims) != {"row", "col", "step", "freq"} or spec.dtype.kind != "c":
        return None
    unit = str(ds["freq"].attrs.get("units", "Hz")).strip().lower()
    w_unit = str(ds["resonance"].attrs.get("units", "kHz")).strip().lower()
    if unit not in _HZ or w_unit not in _HZ:
        return None
    n_steps, n_freq = int(ds.sizes["step"]), int(ds.sizes["freq"])
    per_pixel = max(1, n_steps * n_freq)
    k = max(1, math.ceil(math.sqrt(len(ri) * len(ci) * per_pixel / max(1, max_values))))
    si, sj = np.arange(0, len(ri), k), np.arange(0, len(ci), k)
    rows, cols = ri[si], ci[sj]
    cube = spec.transpose("row", "col", "step", "freq").values[np.ix_(rows, cols)]
    out: dict[str, Any] = {
        "every": k, "sub_grid": [len(si), len(sj)], "rows_idx": rows.tolist(), "cols_idx": cols.tolist(),
        "n_freq": n_freq, "freq_khz": (np.asarray(ds["freq"].values, float) * _HZ[unit] / 1e3).tolist(),
        "units": _unit(spec.attrs.get("units", "")),
        "phase_units": "rad" if str(ds["phase"].attrs.get("units", "deg")).strip().lower().startswith("rad") else "deg",
        "re": _quantize(cube.real, digits), "im": _quantize(cube.imag, digits), "params": {},
    }
    for v in SHO_PARAMS:
        a = ds[v].transpose("row", "col", "step").values[np.ix_(rows, cols)].astype(float)
        if v == "resonance":
            a = a * _HZ[w_unit] / 1e3
        out["params"][v] = _quantize(a, digits + 1)
    return out


def explorer_payload(ds: xr.Dataset, *, max_pixels: int = 10000, digits: int = 4,
                     channels: tuple[str, ...] = ("piezoresponse", "resonance"),
                     max_spectrum_values: int = 1_500_000) -> dict[str, Any]:
    """The explorer's data: maps, per-pixel curves and generated curves, quantized.

    Grids with more than ``max_pixels`` pixels are subsampled with one stride ``s`` along rows
    and columns (pixels ``0, s, 2s, ...``); ``stride`` records it. With raw spectra and their
    SHO fit, ``sho`` holds both for the spectrum panel (:func:`_sho_payload`; at most
    ``max_spectrum_values`` complex values, about 2.7 MB at 3 digits), else it is None.

    Returns
    -------
    dict
        JSON-serialisable; curves are ``{"scale", "data"}`` blocks of shape (n_sub_pixels, n_steps)
        flattened, maps (n_sub_rows, n_sub_cols) flattened, generated (n_neurons, n_levels, n_steps).
    """
    rows, cols = int(ds.sizes.get("row", 0)), int(ds.sizes.get("col", 0))
    stride = max(1, math.ceil(math.sqrt(rows * cols / max_pixels))) if rows * cols else 1
    ri, ci = np.arange(0, rows, stride), np.arange(0, cols, stride)
    n_steps = int(ds.sizes.get("step", 0))
    voltage = (np.asarray(ds["voltage"].values, float) if "voltage" in ds.coords
               else np.arange(n_steps, dtype=float))
    payload: dict[str, Any] = {
        "grid": [rows, cols], "stride": stride, "sub_grid": [len(ri), len(ci)],
        "rows_idx": ri.tolist(), "cols_idx": ci.tolist(), "voltage": voltage.tolist(),
        "colormap": _colormap("viridis"), "categorical": _colormap("tab10", 10),
        "descending": _descending(voltage).tolist(),
        "maps": [], "panels": [], "generated": [],
    }
    for label, arr, categorical in _maps(ds):
        sub = np.asarray(arr, float)[np.ix_(ri, ci)]
        block = _quantize(sub, digits if not categorical else 8)
        finite = sub[np.isfinite(sub)]
        # one rule for a quantity on every part of the page: embeddings on their full range (as in
        # their figure), other measures on their 1-99 % range (a few failed pixels must not wash
        # them out); the colour bar says which
        full = label.startswith("embedding_")
        lo, hi = ([float(finite.min()), float(finite.max())] if full else np.percentile(finite, [1, 99]).tolist()
                  ) if finite.size else [0.0, 1.0]
        base = label.split("[")[0]
        units = _unit(ds[base].attrs.get("units", "")) if base in ds else ""
        payload["maps"].append({"name": label, "categorical": bool(categorical), "vmin": lo, "vmax": hi,
                                "range": "full range" if full else "1-99 % range", "units": units, **block})
    for ch, series in _panels(ds, channels):
        blocks = []
        for name, var in series:
            arr = ds[var].transpose("row", "col", "step").values[np.ix_(ri, ci)]
            blocks.append({"name": name, "variable": var, **_quantize(arr.reshape(-1, n_steps), digits)})
        units = str(ds[ch].attrs.get("units", CHANNELS[ch])) if ch in ds else CHANNELS[ch]
        payload["panels"].append({"channel": ch, "units": units, "series": blocks})
    for var in [str(v) for v in ds.data_vars if str(v).startswith("generated_")]:
        da = ds[var]
        if da.dims != ("neuron", "level", "step") or f"{var}_level" not in ds.coords:
            continue
        curves = da.values
        neurons = np.flatnonzero(np.isfinite(curves).any(axis=(1, 2)))
        if not neurons.size:
            continue
        payload["generated"].append({
            "variable": var, "neurons": neurons.tolist(), "n_levels": int(curves.shape[1]),
            "levels": np.asarray(ds[f"{var}_level"].values)[neurons].tolist(),
            **_quantize(curves[neurons], digits),
        })
    payload["sho"] = _sho_payload(ds, ri, ci, digits, max_spectrum_values)
    return payload


def _script_json(obj: Any) -> str:
    """JSON safe inside ``<script>``: no ``</script>``, ``<!--`` or entity can form."""
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
