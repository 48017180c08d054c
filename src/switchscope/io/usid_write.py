"""Write a switchscope Dataset as the USID HDF5 file of BGlib's band-excitation pipeline.

The file has the layout that BGlib's ODF translator (``be/translators/be_odf.py``), its SHO fitter
(``be/analysis/be_sho_fitter.py``) and its loop fitter (``be/analysis/be_loop_fitter.py``) write
through pyUSID (``io/hdf_utils/simple.py``, ``model.py``) and sidpy (``hdf/hdf_utils.py``,
``hdf/reg_ref.py``), so the raw-spectra path runs offline and the USID reader can be tested against
a writer that does not share its code. Plain h5py; pyUSID and BGlib are not needed.

Layout written (facts read from those sources; see ``shared/USID_LAYOUT.md``)::

    /                             translator='ODF', data_type='BEPSData', switchscope_writer, grid_size_x/y
    /Measurement_000              parmsToDict-style acquisition parameters (VS_*, BE_*, num_pix, ...)
      Channel_000                 Channel_Input, channel_type='BE'
        Position_Indices (uint32) / Position_Values (float32)   (n_positions, 2)
        Spectroscopic_Indices (uint32) / Spectroscopic_Values (float32)   (n_dims, n_spectral)
        UDVS, UDVS_Indices, Bin_Frequencies, Bin_Step
        Raw_Data (complex64, n_positions x n_spectral)         only with spectra
        Raw_Data-SHO_Fit_000
          Spectroscopic_Indices / _Values   (the Channel's, without the Frequency row)
          Guess, Fit (compound: Amplitude [V], Frequency [Hz], Quality Factor, Phase [rad], R2 Criterion)
          completed_guess_positions, completed_fit_positions (uint8)
          Fit-Loop_Fit_000
            Projected_Loops (float, shape, chunks and all attributes of the SHO Fit)
            Loop_Metrics (compound: Area, Centroid x, Centroid y, Rotation Angle [rad], Offset)
            Loop_Metrics_Indices / Loop_Metrics_Values

Spectroscopic rows are ``[Frequency, DC_Offset, Field]`` plus ``Cycle`` when there is more than
one cycle; a file with one field has no ``Field`` row (``__BEPSDC`` in
``be/translators/df_utils/be_utils.py``). Frequency varies fastest, then Field (in-field first),
then DC_Offset, then Cycle. The Field *value* is 1 in-field and 0 out-of-field, the Field *index*
0 in-field and 1 out-of-field; ``Field_parameters = [b'out-of-field', b'in-field']`` names the
values (single field: ``[b'in-field']`` or ``[b'out-of-field']``). Out-of-field steps carry the
DC offset of the preceding in-field step.

What is switchscope's own choice (BGlib computes these, we copy the Dataset):

- ``Projected_Loops`` holds the ``piezoresponse`` channel (``amplitude * cos(phase)``, the
  in-phase projection); a loop whose area comes out negative is negated, as BGlib's
  ``projectLoop`` picks the rotation that gives a positive area. ``Loop_Metrics`` holds the
  polygon area and centroid of each projected loop (the formula of ``calculate_loop_centroid``),
  ``Rotation Angle [rad]`` 0 (pi for a negated loop) and ``Offset`` 0.
- The SHO ``Guess`` equals the ``Fit`` with its frequency snapped to the nearest bin, so a reader
  that takes the Guess by mistake is caught. ``R2 Criterion`` is that of the SHO model against the
  written spectra, 1 without spectra (NaN where a parameter is not finite).
- The loop fitter's ``Guess``/``Fit``/``Fit_Loop_Parameters`` are not written.
- Without spectra (``spectra=False``) there is no ``Raw_Data`` (a file shared without its raw
  data); the Channel keeps its position and spectroscopic datasets, which the results reference.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import xarray as xr

from .._errors import ConfigError, DataError, OutputError
from .._output import WRITER_ATTR, written_by_switchscope
from ._base import PathLike
from .netcdf import write_atomically

__all__ = ["FIELDS", "SHO_FIELDS", "LOOP_METRICS_FIELDS", "make_usid_example", "write_usid"]

#: Field names in the order they appear in a BEPS file (even UDVS steps are in-field).
FIELDS = ("in-field", "out-of-field")
#: Field names of BGlib's SHO compound dtype (``sho32``, ``be_sho_fitter.py``).
SHO_FIELDS = ("Amplitude [V]", "Frequency [Hz]", "Quality Factor", "Phase [rad]", "R2 Criterion")
#: Field names of BGlib's ``loop_metrics32`` (``be_loop_fitter.py``).
LOOP_METRICS_FIELDS = ("Area", "Centroid x", "Centroid y", "Rotation Angle [rad]", "Offset")

_SHO_CHANNELS = ("amplitude", "phase", "resonance", "quality_factor")
_FREQ_SCALE = {"hz": 1.0, "khz": 1e3, "mhz": 1e6}
_BLOCK_PIXELS = 4096  # pixels written per block: bounds memory on 256 x 256 grids
_U32 = np.uint32  # pyUSID INDICES_DTYPE
_F32 = np.float32  # pyUSID VALUES_DTYPE


def _sarr(items: Sequence[str]) -> np.ndarray:
    """A list of strings as sidpy's ``clean_string_att`` writes it: fixed-length bytes."""
    return np.array([str(s).encode("utf-8") for s in items], dtype="S")


# -- the Dataset in canonical order --------------------------------------------------------------

@dataclass
class _Film:
    """The Dataset's arrays in file order, with their axes."""

    rows: int
    cols: int
    voltage: np.ndarray  # (n_steps,)
    fields: list[str]  # written order: in-field first
    n_cycles: int
    channels: dict[str, xr.DataArray]  # (row, col, cycle, field, step)
    spectrum: xr.DataArray | None  # (row, col, cycle, field, step, freq), complex
    freq_hz: np.ndarray  # (n_freq,)

    @property
    def n_steps(self) -> int:
        return int(self.voltage.size)

    @property
    def n_udvs(self) -> int:
        return self.n_cycles * self.n_steps * len(self.fields)


def _field_label(value: Any) -> str | None:
    t = str(value.decode() if isinstance(value, bytes) else value).strip().lower().replace("_", "-")
    return {"in-field": "in-field", "infield": "in-field", "out-of-field": "out-of-field",
            "outfield": "out-of-field", "out-field": "out-of-field"}.get(t)


def _canonical(da: xr.DataArray, name: str, extra: tuple[str, ...] = ()) -> xr.DataArray:
    """``da`` on (row, col, cycle, field, step, *extra); missing cycle/field dims added with size 1."""
    want = ("row", "col", "cycle", "field", "step", *extra)
    unknown = [d for d in da.dims if d not in want]
    missing = [d for d in ("row", "col", "step", *extra) if d not in da.dims]
    if unknown or missing:
        raise DataError(f"variable {name!r} has dims {tuple(da.dims)}; write_usid needs (row, col, [cycle], "
                        f"[field], step{''.join(', ' + e for e in extra)})")
    for d in ("cycle", "field"):
        if d not in da.dims:
            da = da.expand_dims(d)
    return da.transpose(*want)


def _film(ds: xr.Dataset, fields: Sequence[str] | None, cycles: int | None, spectra: bool,
          n_freq: int, need_sho: bool) -> _Film:
    if not isinstance(ds, xr.Dataset):
        raise DataError(f"write_usid needs an xarray.Dataset, got {type(ds).__name__}; "
                        "wrap arrays with switchscope.make_dataset")
    need = list(_SHO_CHANNELS) if need_sho else []
    missing = [c for c in need if c not in ds.data_vars]
    if missing:
        raise DataError(f"the dataset has no {', '.join(missing)}; the SHO results need amplitude, phase, "
                        "resonance and quality_factor (or pass sho=False)")
    if "voltage" not in ds.coords or ds["voltage"].dims != ("step",):
        raise DataError("the dataset has no voltage coordinate on step; give one DC voltage per step")
    voltage = np.asarray(ds["voltage"].values, dtype=float)
    if not np.all(np.isfinite(voltage)):
        raise DataError("the voltage holds NaN or Inf values; give a finite voltage for every step")

    # fields: by name, written in the order of a BEPS file (in-field first)
    if "field" in ds.dims:
        present = [_field_label(v) for v in np.asarray(ds["field"].values)] if "field" in ds.coords else []
        if len(present) != ds.sizes["field"] or None in present or len(set(present)) != len(present):
            raise DataError(f"the field coordinate is {list(np.asarray(ds['field'].values)) if 'field' in ds.coords else None}; "
                            "name each field 'in-field' or 'out-of-field'")
        wanted = list(present) if fields is None else [_field_label(f) for f in fields]
        if None in wanted or not wanted or any(w not in present for w in wanted):
            raise ConfigError(f"fields={tuple(fields or ())!r} is not a subset of the dataset's fields "
                              f"{tuple(present)}; give some of them")
        order = [f for f in FIELDS if f in wanted]
        pick = [present.index(f) for f in order]
    else:
        wanted = ["out-of-field"] if fields is None else [_field_label(f) for f in fields]
        if len(wanted) != 1 or wanted[0] is None:
            raise ConfigError(f"fields={tuple(fields or ())!r}: the dataset has no field dim, so it holds one field; "
                              "give fields=('in-field',) or fields=('out-of-field',)")
        order, pick = [str(wanted[0])], None

    n_have = ds.sizes.get("cycle", 1)
    if cycles is None:
        n_cycles = n_have
    elif isinstance(cycles, (int, np.integer)) and not isinstance(cycles, bool) and 1 <= cycles <= n_have:
        n_cycles = int(cycles)
    else:
        raise ConfigError(f"cycles={cycles!r} is not a number of cycles the dataset holds; give 1..{n_have} or None")

    def select(da: xr.DataArray) -> xr.DataArray:
        if pick is not None and "field" in da.dims and pick != list(range(da.sizes["field"])):
            da = da.isel(field=pick)
        if "cycle" in da.dims:
            da = da.isel(cycle=slice(0, n_cycles))
        return da

    channels: dict[str, xr.DataArray] = {}
    for name in (*_SHO_CHANNELS, "piezoresponse"):
        if name not in ds.data_vars:
            continue
        da = ds[name]
        if int(da.attrs.get("normalized", 0) or 0):
            raise DataError(f"channel {name!r} is normalized; write_usid writes measured values, give the "
                            "dataset before normalization")
        channels[name] = _canonical(select(da), name)

    spectrum = None
    freq_hz = None
    has_spec = "spectrum" in ds.data_vars or {"spectrum_real", "spectrum_imag"} <= set(ds.data_vars)
    if spectra and not has_spec:
        raise DataError("spectra=True but the dataset has no spectrum (or spectrum_real/spectrum_imag); "
                        "make it with switchscope.synthetic.make_dataset(spectra=True) or pass spectra=False")
    if spectra:
        if "spectrum" in ds.data_vars:
            spec = ds["spectrum"]
        else:
            spec = ds["spectrum_real"] + 1j * ds["spectrum_imag"]
        spectrum = _canonical(select(spec), "spectrum", ("freq",))
        ref = next(iter(channels.values()), None)
        if ref is not None and spectrum.shape[:5] != ref.shape:
            raise DataError(f"the spectrum has sizes {dict(spectrum.sizes)} but the channels "
                            f"{dict(ref.sizes)}; give spectra on the channels' (row, col, cycle, field, step)")
    if "freq" in ds.coords and (spectra or "freq" in ds.dims):
        units = str(ds["freq"].attrs.get("units", "")).strip().lower()
        if units not in _FREQ_SCALE:
            raise DataError(f"the freq coordinate has units {ds['freq'].attrs.get('units')!r}; set "
                            "ds['freq'].attrs['units'] to 'Hz', 'kHz' or 'MHz'")
        freq_hz = np.asarray(ds["freq"].values, dtype=float) * _FREQ_SCALE[units]
    if freq_hz is None:
        # the ODF translator's dummy bins (no .mat file): centre +- band / 2, here around the resonance
        res = channels.get("resonance")
        sample = res.isel(row=slice(0, 16)).values if res is not None else np.array([np.nan])
        centre = float(np.nanmedian(sample)) * _scale(res, "resonance") if res is not None else np.nan
        centre = 350e3 if not np.isfinite(centre) else round(centre, -3)
        freq_hz = np.linspace(centre - 20e3, centre + 20e3, int(n_freq))
    if freq_hz.size < 2 or not np.all(np.isfinite(freq_hz)):
        raise DataError(f"the frequency bins are {freq_hz}; give at least two finite frequencies")
    sizes = {d: ds.sizes[d] for d in ("row", "col")}
    return _Film(rows=sizes["row"], cols=sizes["col"], voltage=voltage, fields=order, n_cycles=n_cycles,
                 channels=channels, spectrum=spectrum, freq_hz=freq_hz)


def _scale(da: xr.DataArray, name: str) -> float:
    """Factor from the channel's units to the file's (kHz -> Hz, deg -> rad)."""
    units = str(da.attrs.get("units", "")).strip().lower()
    if name == "resonance":
        table = {"": 1e3, "khz": 1e3, "hz": 1.0, "mhz": 1e6}
    elif name == "phase":
        table = {"": np.pi / 180, "deg": np.pi / 180, "degree": np.pi / 180, "degrees": np.pi / 180, "rad": 1.0}
    else:
        return 1.0
    if units not in table:
        raise DataError(f"channel {name!r} has units {da.attrs.get('units')!r}; give "
                        f"{'kHz or Hz' if name == 'resonance' else 'deg or rad'}")
    return float(table[units])


# -- spectroscopic tables ------------------------------------------------------------------------

def _spec_tables(film: _Film) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Channel spectroscopic indices (uint32) and values (float32), labels and units.

    Flat column ``((c * n_steps + s) * n_fields + f) * n_freq + k`` (``__BEPSDC`` loops over UDVS
    steps, bins inside; in- and out-of-field steps alternate). Indices follow the order of
    appearance (pyUSID ``create_spec_inds_from_vals``); they equal its change-counting rule for
    waveforms without two equal consecutive voltages.
    """
    nf, ns, nc, nk = len(film.fields), film.n_steps, film.n_cycles, film.freq_hz.size
    j = np.arange(nc * ns * nf * nk)
    k, u = j % nk, j // nk
    f, s, c = u % nf, (u // nf) % ns, u // (nf * ns)
    dc = film.voltage.copy()
    dc[np.abs(dc) < 1e-5] = 0  # __FindSpecValIndices zeroes |values| < 1e-5
    field_value = np.array([1.0 if name == "in-field" else 0.0 for name in film.fields])
    labels, units = ["Frequency", "DC_Offset"], ["Hz", "V"]
    ind_rows, val_rows = [k, s], [film.freq_hz[k], dc[s]]
    if nf > 1:
        labels.append("Field"), units.append("")
        ind_rows.append(f), val_rows.append(field_value[f])
    if nc > 1:
        labels.append("Cycle"), units.append("")
        ind_rows.append(c), val_rows.append(c.astype(float))
    return (np.vstack(ind_rows).astype(_U32), np.vstack(val_rows).astype(_F32), labels, units)


def _field_parameters(film: _Film) -> list[str]:
    # __BEPSDC: names indexed by the Field value (0 out-of-field, 1 in-field); one field: its name
    return ["out-of-field", "in-field"] if len(film.fields) > 1 else list(film.fields)


# -- HDF5 helpers --------------------------------------------------------------------------------

def _stamp() -> str:
    return time.strftime("%Y_%m_%d-%H_%M_%S")  # sidpy get_time_stamp


def _link_main(main: Any, pos_ind: Any, pos_val: Any, spec_ind: Any, spec_val: Any) -> None:
    """pyUSID ``link_as_main``: object references to the four ancillary datasets."""
    main.attrs["Position_Indices"] = pos_ind.ref
    main.attrs["Position_Values"] = pos_val.ref
    main.attrs["Spectroscopic_Indices"] = spec_ind.ref
    main.attrs["Spectroscopic_Values"] = spec_val.ref


def _write_positions(grp: Any, film: _Film, order: str, pixel_size: Any) -> tuple[Any, Any]:
    rows, cols = film.rows, film.cols
    yy, xx = np.divmod(np.arange(rows * cols), cols)  # X (col) varies fastest in both orders
    if pixel_size is None:
        dy = dx = 1.0  # the ODF translator: pixel indices as values, labelled 'm'
    else:
        dy, dx = (pixel_size, pixel_size) if np.ndim(pixel_size) == 0 else tuple(pixel_size)
    cols_ind = {"Y": yy, "X": xx}
    cols_val = {"Y": yy * float(dy), "X": xx * float(dx)}
    labels = ["Y", "X"] if order == "YX" else ["X", "Y"]
    ind = grp.create_dataset("Position_Indices", data=np.column_stack([cols_ind[n] for n in labels]).astype(_U32))
    val = grp.create_dataset("Position_Values", data=np.column_stack([cols_val[n] for n in labels]).astype(_F32))
    for d in (ind, val):
        if order == "XY":
            # pyUSID before 2020-07 wrote a region reference per column (write_ind_val_dsets)
            for i, name in enumerate(labels):
                d.attrs[name] = d.regionref[:, i:i + 1]
        d.attrs["labels"] = _sarr(labels)
        d.attrs["units"] = _sarr(["m", "m"])
        if order == "YX":
            d.attrs["type"] = np.array([0, 0])  # DimType.DEFAULT.value, written since 2019-04
    return ind, val


def _write_spec(grp: Any, base: str, inds: np.ndarray, vals: np.ndarray, labels: list[str], units: list[str],
                *, regions: bool, extra: dict[str, Any] | None = None) -> tuple[Any, Any]:
    ind = grp.create_dataset(f"{base}_Indices", data=inds.astype(_U32))
    val = grp.create_dataset(f"{base}_Values", data=vals.astype(_F32))
    for d in (ind, val):
        if regions:  # be_odf.py: write_region_references per row, then labels/units
            for i, name in enumerate(labels):
                d.attrs[name] = d.regionref[i:i + 1, :]
        d.attrs["labels"] = _sarr(labels)
        d.attrs["units"] = _sarr(units)
        for key, value in (extra or {}).items():
            d.attrs[key] = value
    return ind, val


def _reduce(inds: np.ndarray, vals: np.ndarray, labels: list[str], units: list[str], drop: str
            ) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """pyUSID ``write_reduced_anc_dsets``: keep the columns where ``drop`` is at its first index."""
    i = labels.index(drop)
    keep = [n for n in range(len(labels)) if n != i]
    if not keep:
        return (np.zeros((1, 1)), np.zeros((1, 1)), ["Single_Step"], ["a. u."])
    cols = inds[i] == inds[i].min()
    return (inds[keep][:, cols], vals[keep][:, cols], [labels[n] for n in keep], [units[n] for n in keep])


def _write_udvs(grp: Any, film: _Film) -> None:
    """The UDVS table of ``_build_udvs_table`` (DC mode) and ``UDVS_Indices`` (one entry per bin)."""
    n_rows = 2 * film.n_steps * film.n_cycles  # both fields always have rows
    v = np.tile(film.voltage, film.n_cycles)
    table = np.zeros((n_rows, 7))
    table[:, 0] = np.arange(n_rows)
    table[0::2, 1] = v  # out-of-field rows carry dc 0 in the table (not in the spectroscopic values)
    in_rows = np.arange(n_rows) % 2 == 0
    mode = film.fields
    table[:, 2] = 1.0 if len(mode) == 2 else np.where(in_rows == (mode[0] == "in-field"), 1.0, 0.0)
    table[:, 3] = 1.0
    table[:, 4] = 1.0
    table[:, 5] = np.where(in_rows, table[:, 1], np.nan)
    table[:, 6] = np.where(~in_rows, table[:, 1], np.nan)
    labels = ["step_num", "dc_offset", "ac_amp", "wave_type", "wave_mod", "in-field", "out-of-field"]
    units = ["", "V", "A", "", "", "V", "V"]
    if len(mode) == 1:
        # trimUDVS drops the other field's column; its units.pop(1) drops the 'V' of dc_offset, so
        # the units of a single-field file are shifted by one (a BGlib bug kept for fidelity)
        gone = "out-of-field" if mode[0] == "in-field" else "in-field"
        at = labels.index(gone)
        table = np.delete(table, at, axis=1)
        labels.pop(at)
        units.pop(1)
    udvs = grp.create_dataset("UDVS", data=table)
    for i, name in enumerate(labels):
        udvs.attrs[name] = udvs.regionref[:, i:i + 1]
    udvs.attrs["labels"] = _sarr(labels)
    udvs.attrs["units"] = _sarr(units)
    steps = np.flatnonzero(table[:, 2] >= 1e-3)  # steps with a valid AC amplitude
    grp.create_dataset("UDVS_Indices", data=np.repeat(steps, film.freq_hz.size).astype(_U32))
    grp.create_dataset("Bin_Step", data=np.arange(film.freq_hz.size, dtype=_U32))
    grp.create_dataset("Bin_Frequencies", data=film.freq_hz.astype(float))


def _measurement_attrs(film: _Film, n_spectral: int) -> dict[str, Any]:
    v = film.voltage
    amp = float(np.max(np.abs(v))) if v.size else 0.0
    return {
        "VS_mode": "DC modulation mode",
        "VS_measure_in_field_loops": "in and out-of-field" if len(film.fields) == 2 else film.fields[0],
        "VS_steps_per_full_cycle": film.n_steps,
        "VS_number_of_cycles": film.n_cycles,
        "VS_cycle_fraction": "full",
        "VS_cycle_phase_shift": _phase_shift(v),
        "VS_amplitude_[V]": amp,
        "VS_offset_[V]": float((v.max() + v.min()) / 2) if v.size else 0.0,
        "VS_read_voltage_[V]": 0.0,
        "FORC_num_of_FORC_cycles": 1,
        "BE_center_frequency_[Hz]": float((film.freq_hz[0] + film.freq_hz[-1]) / 2),
        "BE_band_width_[Hz]": float(film.freq_hz[-1] - film.freq_hz[0]),
        "BE_band_edge_trim": 0.0,
        "BE_bins_per_band": int(film.freq_hz.size),
        "BE_phase_content": "chirp-sinc hybrid",
        "BE_amplitude_[V]": 1.0,
        "IO_rate_[Hz]": 4e6,
        "grid_num_rows": film.rows,
        "grid_num_cols": film.cols,
        "data_type": "BEPSData",
        "num_bins": n_spectral,
        "num_pix": film.rows * film.cols,
        "num_udvs_steps": film.n_udvs,
        "num_steps": film.n_udvs,
    }


def _phase_shift(v: np.ndarray) -> Any:
    """``VS_cycle_phase_shift`` of a bipolar triangle (``generate_bipolar_triangular_waveform``)."""
    n = v.size
    if n < 4 or n % 4:
        return 0
    quarter = n // 4
    base = np.hstack([np.linspace(0, 1, quarter, endpoint=False), np.linspace(1, 0, quarter, endpoint=False),
                      np.linspace(0, -1, quarter, endpoint=False), np.linspace(-1, 0, quarter, endpoint=False)])
    amp = float(np.max(np.abs(v))) or 1.0
    for label, frac in ((0, 0.0), ("1/4", 0.25), ("1/2", 0.5), ("3/4", 0.75)):
        if np.allclose(amp * np.roll(base, int(frac * n)), v, atol=1e-6 * amp):
            return label
    return 0


# -- results -------------------------------------------------------------------------------------

def _sho_dtype(kind: str) -> np.dtype:
    return np.dtype({"names": list(SHO_FIELDS), "formats": [kind] * len(SHO_FIELDS)})


def _loop_metrics_dtype(kind: str) -> np.dtype:
    return np.dtype({"names": list(LOOP_METRICS_FIELDS), "formats": [kind] * len(LOOP_METRICS_FIELDS)})


def _flat(block: np.ndarray) -> np.ndarray:
    """(rows_b, cols, cycle, field, step[, freq]) -> (pixels, flat columns in file order)."""
    axes = (0, 1, 2, 4, 3) + ((5,) if block.ndim == 6 else ())
    return np.ascontiguousarray(block.transpose(axes)).reshape(block.shape[0] * block.shape[1], -1)


def _sho_model(freq: np.ndarray, a: np.ndarray, phi: np.ndarray, f0: np.ndarray, q: np.ndarray) -> np.ndarray:
    """BGlib ``SHOfunc``: ``A exp(i phi) f0^2 / (f^2 - i f f0 / Q - f0^2)``; trailing frequency axis."""
    a, phi, f0, q = (x[..., None] for x in (a, phi, f0, q))
    with np.errstate(all="ignore"):
        return a * np.exp(1j * phi) * f0**2 / (freq**2 - 1j * freq * f0 / q - f0**2)


def _r2(spec: np.ndarray, model: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        ss_res = np.sum(np.abs(spec - model) ** 2, axis=-1)
        ss_tot = np.sum(np.abs(spec - spec.mean(axis=-1, keepdims=True)) ** 2, axis=-1)
        return 1.0 - ss_res / ss_tot


def _loop_metrics(voltage: np.ndarray, loops: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Area and centroid of each loop (..., n_steps): BGlib ``calculate_loop_centroid``'s polygon
    formula (segments i -> i+1, the closing segment left out)."""
    x0, x1 = voltage[:-1], voltage[1:]
    y0, y1 = loops[..., :-1], loops[..., 1:]
    cross = x0 * y1 - x1 * y0
    area = 0.5 * cross.sum(axis=-1)
    with np.errstate(all="ignore"):
        cx = ((x0 + x1) * cross).sum(axis=-1) / (6.0 * area)
        cy = ((y0 + y1) * cross).sum(axis=-1) / (6.0 * area)
    return area, cx, cy


def _nearest(grid: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The value of ``grid`` nearest to each ``x`` (NaN stays NaN)."""
    grid = np.sort(grid)
    i = np.clip(np.searchsorted(grid, x), 1, grid.size - 1)
    lo, hi = grid[i - 1], grid[i]
    with np.errstate(invalid="ignore"):
        out = np.where(np.abs(x - lo) <= np.abs(hi - x), lo, hi)
    return np.where(np.isfinite(x), out, np.nan)


def _pixel_blocks(film: _Film) -> list[slice]:
    per = max(1, _BLOCK_PIXELS // max(film.cols, 1))
    return [slice(r, min(r + per, film.rows)) for r in range(0, film.rows, per)]


def _write_all(f: Any, film: _Film, *, spectra: bool, sho: bool, loops: bool, position_order: str,
               sho_dtype: str, pixel_size: Any) -> None:
    from .. import __version__

    n_pos = film.rows * film.cols
    spec_ind, spec_val, labels, units = _spec_tables(film)
    n_spectral = spec_ind.shape[1]
    # root: be_odf.py translate() global_parms, plus the mark of files switchscope wrote
    f.attrs.update({"grid_size_x": film.cols, "grid_size_y": film.rows, "experiment_date": "1:1:1",
                    "current_position_x": film.cols - 1, "current_position_y": film.rows - 1,
                    "data_type": "BEPSData", "translator": "ODF", "timestamp": _stamp(),
                    WRITER_ATTR: f"switchscope {__version__}"})
    meas = f.create_group("Measurement_000")
    meas.attrs.update(_measurement_attrs(film, n_spectral))
    meas.attrs["timestamp"] = _stamp()
    chan = meas.create_group("Channel_000")
    chan.attrs.update({"Channel_Input": "IO_Analog_Input_1", "channel_type": "BE", "timestamp": _stamp()})
    _write_udvs(chan, film)
    pos_ind, pos_val = _write_positions(chan, film, position_order, pixel_size)
    h_spec_ind, h_spec_val = _write_spec(chan, "Spectroscopic", spec_ind, spec_val, labels, units, regions=True,
                                         extra={"Field_parameters": _sarr(_field_parameters(film))})
    blocks = _pixel_blocks(film)
    raw = None
    if spectra:
        assert film.spectrum is not None
        raw = chan.create_dataset("Raw_Data", shape=(n_pos, n_spectral), dtype=np.complex64,
                                  chunks=(max(1, min(n_pos, 65536 // max(n_spectral, 1) or 1)), n_spectral))
        raw.attrs.update({"quantity": "Piezoresponse", "units": "V", "timestamp": _stamp()})
        _link_main(raw, pos_ind, pos_val, h_spec_ind, h_spec_val)
        for b in blocks:
            p = slice(b.start * film.cols, b.stop * film.cols)
            raw[p] = _flat(np.asarray(film.spectrum.isel(row=b).values)).astype(np.complex64)
    if not sho:
        return

    # SHO results: create_results_group + _create_guess_datasets / _create_fit_datasets
    grp = chan.create_group("Raw_Data-SHO_Fit_000")
    grp.attrs.update({"timestamp": _stamp(), "tool": "SHO_Fit", "num_source_dsets": 1})
    if raw is not None:
        grp.attrs["source_000"] = raw.ref
    guess_parms = {"guess-method": "pycroscopy BESHO", "guess-algorithm": "complex_gaussian",
                   "guess-complex_gaussian-num_points": 5}
    fit_parms = {"fit-method": "pycroscopy BESHO", "fit-algorithm": "least_squares"}
    grp.attrs.update(guess_parms)
    grp.attrs.update(fit_parms)
    grp.attrs["last_pixel"] = n_pos  # Process.compute: all positions done
    s_ind, s_val, s_lab, s_unit = _reduce(spec_ind, spec_val, labels, units, "Frequency")
    h_sind, h_sval = _write_spec(grp, "Spectroscopic", s_ind, s_val, s_lab, s_unit, regions=False)
    dt = _sho_dtype(sho_dtype)
    n_udvs = film.n_udvs
    chunks = (1, n_udvs)
    guess = grp.create_dataset("Guess", shape=(n_pos, n_udvs), dtype=dt, chunks=chunks)
    fit = grp.create_dataset("Fit", shape=(n_pos, n_udvs), dtype=dt, chunks=chunks)
    for d in (guess, fit):  # Fit copies the Guess's attributes (create_empty_dataset)
        d.attrs.update({"quantity": "SHO", "units": "compound", "timestamp": _stamp()})
        d.attrs.update(guess_parms)
        _link_main(d, pos_ind, pos_val, h_sind, h_sval)
    for name in ("completed_guess_positions", "completed_fit_positions"):
        grp.create_dataset(name, data=np.ones(n_pos, dtype=np.uint8))

    proj = metrics = None
    if loops:
        lgrp = grp.create_group("Fit-Loop_Fit_000")
        lgrp.attrs.update({"timestamp": _stamp(), "tool": "Loop_Fit", "num_source_dsets": 1,
                           "source_000": fit.ref, "projection_method": "pycroscopy BE loop model",
                           "last_pixel": n_pos})
        proj = lgrp.create_dataset("Projected_Loops", shape=(n_pos, n_udvs), dtype=sho_dtype, chunks=chunks)
        for key, value in fit.attrs.items():  # create_empty_dataset(h5_main=Fit, float, ...)
            proj.attrs[key] = value
        m_ind, m_val, m_lab, m_unit = _reduce(s_ind, s_val, s_lab, s_unit, "DC_Offset")
        h_mind, h_mval = _write_spec(lgrp, "Loop_Metrics", m_ind, m_val, m_lab, m_unit, regions=False)
        n_loops = film.n_cycles * len(film.fields)
        metrics = lgrp.create_dataset("Loop_Metrics", shape=(n_pos, n_loops), dtype=_loop_metrics_dtype(sho_dtype))
        metrics.attrs.update({"quantity": "Metrics", "units": "compound", "timestamp": _stamp()})
        _link_main(metrics, pos_ind, pos_val, h_mind, h_mval)

    ch = film.channels
    scale = {name: _scale(ch[name], name) for name in _SHO_CHANNELS}
    freq = film.freq_hz
    for b in blocks:
        p = slice(b.start * film.cols, b.stop * film.cols)
        vals = {name: np.asarray(ch[name].isel(row=b).values, dtype=float) * scale[name] for name in _SHO_CHANNELS}
        rec = np.empty(vals["amplitude"].shape, dtype=dt)
        rec["Amplitude [V]"] = vals["amplitude"]
        rec["Frequency [Hz]"] = vals["resonance"]
        rec["Quality Factor"] = vals["quality_factor"]
        rec["Phase [rad]"] = vals["phase"]
        finite = np.isfinite(vals["amplitude"]) & np.isfinite(vals["resonance"]) & \
            np.isfinite(vals["quality_factor"]) & np.isfinite(vals["phase"])
        if film.spectrum is not None:
            model = _sho_model(freq, vals["amplitude"], vals["phase"], vals["resonance"], vals["quality_factor"])
            r2 = _r2(np.asarray(film.spectrum.isel(row=b).values), model)
        else:
            r2 = np.ones(finite.shape)
        rec["R2 Criterion"] = np.where(finite, r2, np.nan)
        fit[p] = _flat(rec)
        g = rec.copy()
        g["Frequency [Hz]"] = _nearest(freq, vals["resonance"])
        guess[p] = _flat(g)
        if proj is None or metrics is None:
            continue
        if "piezoresponse" in ch:
            loop = np.asarray(ch["piezoresponse"].isel(row=b).values, dtype=float)
        else:
            loop = vals["amplitude"] * np.cos(vals["phase"])
        area, cx, cy = _loop_metrics(film.voltage, loop)  # (rows_b, cols, cycle, field)
        flip = area < 0
        loop = np.where(flip[..., None], -loop, loop)
        m = np.empty(area.shape, dtype=metrics.dtype)
        m["Area"] = np.abs(area)
        m["Centroid x"] = cx
        m["Centroid y"] = np.where(flip, -cy, cy)
        m["Rotation Angle [rad]"] = np.where(flip, np.pi, 0.0)
        m["Offset"] = 0.0
        proj[p] = _flat(loop)
        # loops in the order of the Loop_Metrics columns: cycle slow, field fast
        metrics[p] = np.ascontiguousarray(m).reshape(m.shape[0] * m.shape[1], -1)


#: Group of a synthetic film's ground-truth maps (a switchscope addition; pycroscopy ignores it).
TRUTH_GROUP = "switchscope_truth"


def _write_truth(f: Any, ds: xr.Dataset) -> None:
    """The ``truth_*`` maps of a synthetic film, (row, col) each, so a raw file can be scored."""
    names = [str(n) for n in ds.data_vars if str(n).startswith("truth_") and ds[n].dims == ("row", "col")]
    if not names:
        return
    grp = f.create_group(TRUTH_GROUP)
    grp.attrs["description"] = "ground truth of a switchscope synthetic film, one (rows, cols) map each"
    for name in names:
        d = grp.create_dataset(name, data=np.asarray(ds[name].values, dtype=np.float64))
        for key, value in ds[name].attrs.items():
            if isinstance(value, (str, int, float)):
                d.attrs[key] = value


# -- public API ----------------------------------------------------------------------------------

def _check_target(path: PathLike, overwrite: bool) -> Path:
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"'{path}' is a folder; give a file name such as '{path / 'beps.h5'}'")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputError(f"'{path}' already exists; pass overwrite=True (--force) to replace it")
    if (path.exists() or path.is_symlink()) and (path.is_symlink() or not written_by_switchscope(path)):
        raise OutputError(f"'{path}' was not written by switchscope, so it is not replaced; choose another file name")
    if not path.parent.is_dir():
        raise OutputError(f"folder '{path.parent}' does not exist; create it first")
    return path


def write_usid(ds: xr.Dataset, path: PathLike, *, spectra: bool | None = None, sho: bool = True,
               loops: bool = True, fields: Sequence[str] | None = None, cycles: int | None = None,
               position_order: Literal["YX", "XY"] = "YX", sho_dtype: Literal["float64", "float32"] = "float64",
               pixel_size: float | tuple[float, float] | None = None, n_freq: int = 24,
               overwrite: bool = False) -> Path:
    """Write ``ds`` as a USID HDF5 file laid out as BGlib's ODF translator, SHO and loop fitters do.

    The file is written under a temporary name in the same folder and renamed into place; an
    existing file is replaced only with ``overwrite`` and only when switchscope wrote it.

    Parameters
    ----------
    ds : xarray.Dataset
        Channels ``amplitude``, ``phase`` (deg), ``resonance`` (kHz), ``quality_factor`` and
        ``piezoresponse`` on dims ``(row, col, [cycle], [field], step)`` with a ``voltage``
        coordinate on ``step``; ``field`` labels ``in-field``/``out-of-field``. Optionally
        ``spectrum`` (complex) or ``spectrum_real``/``spectrum_imag`` on ``(..., step, freq)`` with
        a ``freq`` coordinate whose ``units`` attribute is Hz, kHz or MHz.
    path : str or PathLike
        Destination, conventionally ``*.h5``.
    spectra : bool, optional
        Write ``Raw_Data`` (complex64, n_positions x n_spectral) from the spectra. Default: when
        the Dataset has them.
    sho : bool
        Write the ``Raw_Data-SHO_Fit_000`` group (``Guess``, ``Fit``).
    loops : bool
        Write ``Fit-Loop_Fit_000`` (``Projected_Loops``, ``Loop_Metrics``) inside the SHO group.
    fields : sequence of str, optional
        Fields to write (default: those of the Dataset). A Dataset without a ``field`` dim holds
        one field, named here (default ``('out-of-field',)``); its file has no ``Field`` row.
    cycles : int, optional
        Number of cycles to write (the first ones; default all). One cycle: no ``Cycle`` row.
    position_order : {"YX", "XY"}
        Position columns ``[Y, X]`` as pyUSID writes since 2019 (with a ``type`` attribute), or
        ``[X, Y]`` with a region reference per column as older files have. X varies fastest in both.
    sho_dtype : {"float64", "float32"}
        Floats of the SHO compound, ``Projected_Loops`` and ``Loop_Metrics``: float64 as BGlib
        writes since 0.0.5 (commit ab0c931, 2024), or float32 as BGlib 0.0.4 and older did.
    pixel_size : float or (float, float), optional
        Metres per pixel (one, or (row, col)). Default: pixel indices as values, labelled ``m``,
        as the ODF translator writes them.
    n_freq : int
        Frequency bins when the Dataset has no ``freq`` coordinate (the Spectroscopic datasets
        need them even without spectra): ``n_freq`` bins over 40 kHz around the resonance.
    overwrite : bool
        Replace an existing file that switchscope wrote.

    Returns
    -------
    Path
        The written file.

    Examples
    --------
    >>> from switchscope.synthetic import make_dataset
    >>> ds = make_dataset(rows=4, cols=4, n_steps=16, spectra=True, n_freq=8)
    >>> write_usid(ds, "film.h5")  # doctest: +SKIP
    """
    if position_order not in ("YX", "XY"):
        raise ConfigError(f"position_order={position_order!r} is not one of 'YX', 'XY'")
    if sho_dtype not in ("float64", "float32"):
        raise ConfigError(f"sho_dtype={sho_dtype!r} is not one of 'float64', 'float32'")
    if spectra not in (None, True, False) or sho not in (True, False) or loops not in (True, False):
        raise ConfigError(f"spectra={spectra!r}, sho={sho!r}, loops={loops!r}: give True or False")
    if loops and not sho:
        raise ConfigError("loops=True needs sho=True: the loop results live inside the SHO group")
    if not isinstance(n_freq, (int, np.integer)) or isinstance(n_freq, bool) or not 2 <= n_freq <= 4096:
        raise ConfigError(f"n_freq={n_freq!r} is not an integer in 2..4096")
    if pixel_size is not None:
        sizes = np.atleast_1d(np.asarray(pixel_size, dtype=float))
        if sizes.size not in (1, 2) or not np.all(np.isfinite(sizes) & (sizes > 0)):
            raise ConfigError(f"pixel_size={pixel_size!r} is not a positive number of metres (or two)")
    if spectra is None:
        spectra = isinstance(ds, xr.Dataset) and (
            "spectrum" in ds.data_vars or {"spectrum_real", "spectrum_imag"} <= set(ds.data_vars))
    if not spectra and not sho:
        raise ConfigError("spectra=False and sho=False leave nothing to write; ask for one of them")
    film = _film(ds, fields, cycles, bool(spectra), int(n_freq), need_sho=sho)
    if film.spectrum is not None and film.spectrum.sizes["freq"] != film.freq_hz.size:
        raise DataError("the spectrum's freq dim and the freq coordinate differ in length; give one frequency per bin")
    path = _check_target(path, overwrite)

    import h5py

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            _write_all(f, film, spectra=bool(spectra), sho=sho, loops=loops, position_order=position_order,
                       sho_dtype=sho_dtype, pixel_size=pixel_size)
            _write_truth(f, ds)

    write_atomically(path, write)
    return path


# -- synthetic example ---------------------------------------------------------------------------

def _shift_along_waveform(arr: np.ndarray, voltage: np.ndarray, dv: float) -> np.ndarray:
    """``arr`` (..., n_steps) evaluated at ``V - dv`` along each monotonic run of the waveform:
    the loop moves by ``+dv`` volts (a change of imprint). Values clamp at a run's ends."""
    if dv == 0:
        return arr.copy()
    n = voltage.size
    slope = np.sign(np.diff(voltage))
    slope = np.append(slope, slope[-1] if slope.size else 0)
    out = np.empty_like(arr)
    start = 0
    while start < n:
        stop = start + 1
        while stop < n and slope[stop] == slope[start]:
            stop += 1
        table = np.arange(start, min(stop + 1, n))  # the run and the turning point after it
        vt = voltage[table]
        order = np.argsort(vt, kind="stable")
        vs, ids = vt[order], table[order]
        for i in range(start, stop):
            x = float(np.clip(voltage[i] - dv, vs[0], vs[-1]))
            k = int(np.clip(np.searchsorted(vs, x) - 1, 0, max(vs.size - 2, 0)))
            if vs.size == 1 or vs[k + 1] == vs[k]:
                out[..., i] = arr[..., ids[k]]
                continue
            t = (x - vs[k]) / (vs[k + 1] - vs[k])
            with np.errstate(invalid="ignore", over="ignore"):  # Inf artifacts (t = 0 or 1) stay non-finite
                out[..., i] = (1 - t) * arr[..., ids[k]] + t * arr[..., ids[k + 1]]
        start = stop
    return out


def make_usid_example(path: PathLike, *, rows: int = 8, cols: int = 8, n_steps: int = 96, n_fields: int = 2,
                      n_cycles: int = 2, n_freq: int = 24, seed: int = 0, spectra: bool = True,
                      artifacts: bool = False, imprint_shift: float = 0.5, field_offset: float = 0.05,
                      field_slope: float = 0.004, position_order: Literal["YX", "XY"] = "YX",
                      sho_dtype: Literal["float64", "float32"] = "float64", overwrite: bool = False
                      ) -> xr.Dataset:
    """Write a synthetic film with fields and cycles as a USID file; return the Dataset written.

    The film is :func:`switchscope.synthetic.make_dataset`'s (same seed, same maps). Its channels
    are the **out-of-field** loops of cycle 1. The complex response ``R = amplitude * exp(i phase)``
    of cycle ``c`` (0-based) is that of cycle 1 moved by ``c * imprint_shift`` volts along each
    branch of the waveform (a drifting imprint), resonance and Q likewise. **In-field** responses add
    an electrostatic term to the real part, ``h * (field_offset + field_slope * V)`` with ``h`` the
    95th percentile of ``|piezoresponse|``, so in-field loops sit higher and tilt with the bias.
    ``amplitude``/``phase``/``piezoresponse`` are recomputed from ``R`` (``piezoresponse =
    amplitude * cos(phase)`` holds exactly; phase wrapped to [-90, 270) degrees as the generator
    does). Spectra (Hz) come from the SHO model of each (pixel, cycle, field, step).

    Parameters
    ----------
    path : str or PathLike
        Destination file.
    rows, cols, n_steps, seed, artifacts : see :func:`switchscope.synthetic.make_dataset`
    n_fields : {1, 2}
        2: in-field and out-of-field; 1: out-of-field only.
    n_cycles : int
        Cycles (1 or more).
    n_freq : int
        Frequency bins from 1305 to 1345 kHz.
    spectra : bool
        Include spectra and write ``Raw_Data`` (n_positions x n_steps*n_fields*n_cycles*n_freq
        complex64: keep it off for large grids).
    imprint_shift, field_offset, field_slope : float
        The cycle and field differences described above.
    position_order, sho_dtype, overwrite : see :func:`write_usid`

    Returns
    -------
    xarray.Dataset
        Channels on ``(row, col, cycle, field, step)`` (``cycle`` 1..n, ``field`` names), the
        ``truth_*`` maps, and with ``spectra`` a complex ``spectrum`` with a ``freq`` coordinate in Hz.
    """
    from ..synthetic import TRUTH_MAPS, make_dataset, sho_response

    if n_fields not in (1, 2):
        raise ConfigError(f"n_fields={n_fields!r} is not 1 or 2")
    if not isinstance(n_cycles, (int, np.integer)) or isinstance(n_cycles, bool) or not 1 <= n_cycles <= 100:
        raise ConfigError(f"n_cycles={n_cycles!r} is not an integer in 1..100")
    base = make_dataset(rows=rows, cols=cols, n_steps=n_steps, seed=seed, artifacts=artifacts, n_freq=n_freq)
    v = np.asarray(base["voltage"].values, dtype=float)
    resp = base["amplitude"].values * np.exp(1j * np.deg2rad(base["phase"].values))
    h = float(np.nanpercentile(np.abs(base["piezoresponse"].values), 95)) or 1.0
    field_names = list(FIELDS) if n_fields == 2 else ["out-of-field"]
    shape = (rows, cols, n_cycles, n_fields, n_steps)
    out = {name: np.empty(shape) for name in ("piezoresponse", "amplitude", "phase", "resonance", "quality_factor")}
    for c in range(n_cycles):
        dv = c * float(imprint_shift)
        r_c = _shift_along_waveform(resp.real, v, dv) + 1j * _shift_along_waveform(resp.imag, v, dv)
        f0 = _shift_along_waveform(base["resonance"].values, v, dv)
        q = _shift_along_waveform(base["quality_factor"].values, v, dv)
        for i, name in enumerate(field_names):
            r = r_c + (h * (field_offset + field_slope * v) if name == "in-field" else 0.0)
            out["piezoresponse"][:, :, c, i] = r.real
            out["amplitude"][:, :, c, i] = np.abs(r)
            out["phase"][:, :, c, i] = (np.rad2deg(np.angle(r)) + 90.0) % 360.0 - 90.0
            out["resonance"][:, :, c, i] = f0
            out["quality_factor"][:, :, c, i] = q
    dims = ("row", "col", "cycle", "field", "step")
    ds = xr.Dataset(
        {name: xr.DataArray(arr, dims=dims, attrs=dict(base[name].attrs)) for name, arr in out.items()},
        coords={"row": base["row"].values, "col": base["col"].values, "step": base["step"].values,
                "voltage": base["voltage"], "cycle": np.arange(1, n_cycles + 1), "field": field_names},
        attrs={**base.attrs, "generator": "switchscope.io.usid_write.make_usid_example",
               "imprint_shift_v": float(imprint_shift), "field_offset": float(field_offset),
               "field_slope_per_v": float(field_slope)},
    )
    for name in TRUTH_MAPS:
        ds[name] = base[name]
    if spectra:
        freq_khz = np.linspace(1305.0, 1345.0, int(n_freq))
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):  # NaN/Inf artifacts stay NaN/Inf
            spec = sho_response(freq_khz, out["amplitude"], out["phase"], out["resonance"], out["quality_factor"])
        ds = ds.assign_coords(freq=("freq", freq_khz * 1e3, {"units": "Hz", "long_name": "frequency"}))
        ds["spectrum"] = xr.DataArray(spec.astype(np.complex64), dims=(*dims, "freq"),
                                      attrs={"units": "a.u.", "long_name": "SHO response"})
    write_usid(ds, path, spectra=spectra, position_order=position_order, sho_dtype=sho_dtype,
               overwrite=overwrite)
    return ds
