"""Small USID files written with plain h5py for the reader tests, following the layout that
pycroscopy writes (independent of switchscope's own writer and reader):

- pyUSID ``io/hdf_utils/model.py`` (``write_main_dataset``, ``link_as_main``: a main dataset holds
  ``quantity``, ``units`` and object references to its four ancillary datasets);
- BGlib ``be/translators/be_odf.py`` (Position datasets of pixel numbers labelled ``m``; the
  ``Field_parameters`` attribute on the Channel's spectroscopic datasets) and
  ``be/translators/df_utils/be_utils.py`` ``createSpecVals`` / ``__BEPSDC`` (rows
  ``Frequency, DC_Offset, Field[, Cycle]``; Frequency varies fastest, then Field, then DC_Offset,
  then Cycle; the first step of a pair is in-field with Field value 1; ``Field_parameters`` is
  ``['out-of-field', 'in-field']`` indexed by that value; out-of-field steps repeat the DC value
  of the preceding in-field step);
- pyUSID ``anc_build_utils.create_spec_inds_from_vals`` (indices count changes in order of
  appearance, so Field index 0 is in-field);
- BGlib ``be/analysis/be_sho_fitter.py`` (``Raw_Data-SHO_Fit_###/Fit``, compound fields
  ``Amplitude [V]``, ``Frequency [Hz]``, ``Quality Factor``, ``Phase [rad]``, ``R2 Criterion``; the
  group's own spectroscopic datasets without the Frequency row, with only labels/units) and
  ``be_loop_fitter.py`` (``Fit-Loop_Fit_###/Projected_Loops``).

Every stored value is a known function of (row, col, cycle, field, step[, bin]) so a test can
check that each lands in its place.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

SHO_NAMES = ["Amplitude [V]", "Frequency [Hz]", "Quality Factor", "Phase [rad]", "R2 Criterion"]


def voltage(n_steps: int, v_max: float = 10.0) -> np.ndarray:
    """A bipolar triangle starting at 0 V, rising first."""
    i = np.arange(n_steps)
    return v_max * np.interp(i / n_steps, [0, 0.25, 0.75, 1.0], [0, 1, -1, 0])


def truth(r, c, cyc, fld, step):
    """The value stored at one place: unique per place, easy to check."""
    return 1000.0 * r + 100.0 * c + 10.0 * cyc + 5.0 * fld + 0.01 * step


def _labels(ds, labels, units):
    ds.attrs["labels"] = np.array([s.encode() for s in labels], dtype="S")
    ds.attrs["units"] = np.array([s.encode() for s in units], dtype="S")


def _link(main, pos_i, pos_v, spec_i, spec_v, quantity, units):
    main.attrs["quantity"] = quantity
    main.attrs["units"] = units
    main.attrs["Position_Indices"] = pos_i.ref
    main.attrs["Position_Values"] = pos_v.ref
    main.attrs["Spectroscopic_Indices"] = spec_i.ref
    main.attrs["Spectroscopic_Values"] = spec_v.ref


def write(path: Path, *, rows=3, cols=4, n_steps=16, fields=("in-field", "out-of-field"), n_cycles=1,
          n_bins=5, position_order="YX", sho_dtype=np.float64, loops=True, sho=True,
          field_parameters=True, position_units="m", position_scale=None, extra_measurement=False):
    """Write a USID BEPS file; return the arrays it holds on (row, col, cycle, field, step)."""
    v = voltage(n_steps)
    field_value = {"in-field": 1, "out-of-field": 0}
    freqs = 300e3 + 1e3 * np.arange(n_bins)
    with h5py.File(path, "w") as f:
        f.attrs["translator"] = "ODF"
        f.attrs["data_type"] = "BEPSData"
        for m in range(2 if extra_measurement else 1):
            meas = f.create_group(f"Measurement_{m:03d}")
            meas.attrs["VS_measure_in_field_loops"] = (
                "in and out-of-field" if len(fields) == 2 else fields[0])
            meas.attrs["VS_steps_per_full_cycle"] = n_steps * len(fields)
            meas.attrs["VS_number_of_cycles"] = n_cycles
            chan = meas.create_group("Channel_000")
            # positions: raster with X fastest; column order by label
            yy, xx = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
            cols_ = {"Y": yy.ravel(), "X": xx.ravel()}
            order = ["Y", "X"] if position_order == "YX" else ["X", "Y"]
            pos_ind = np.stack([cols_[k] for k in order], axis=1).astype(np.uint32)
            scale = position_scale or {"X": 1.0, "Y": 1.0}
            pos_val = np.stack([cols_[k] * scale[k] for k in order], axis=1).astype(np.float32)
            pi = chan.create_dataset("Position_Indices", data=pos_ind)
            pv = chan.create_dataset("Position_Values", data=pos_val)
            for d in (pi, pv):
                _labels(d, order, [position_units] * 2)
            # spectroscopic table of the raw data: cycle (slowest), DC step, field, frequency (fastest)
            rows_v, rows_i = [], []
            for cyc in range(n_cycles):
                for s in range(n_steps):
                    for fi, fname in enumerate(fields):
                        for b in range(n_bins):
                            rows_v.append([freqs[b], v[s], field_value[fname], cyc])
                            rows_i.append([b, s, fi, cyc])
            spec_v = np.array(rows_v).T
            spec_i = np.array(rows_i).T
            labels, units = ["Frequency", "DC_Offset", "Field", "Cycle"], ["Hz", "V", "", ""]
            keep = [0, 1] + ([2] if len(fields) == 2 else []) + ([3] if n_cycles > 1 else [])
            spec_v, spec_i = spec_v[keep], spec_i[keep]
            labels, units = [labels[k] for k in keep], [units[k] for k in keep]
            si = chan.create_dataset("Spectroscopic_Indices", data=spec_i.astype(np.uint32))
            sv = chan.create_dataset("Spectroscopic_Values", data=spec_v.astype(np.float32))
            for d in (si, sv):
                _labels(d, labels, units)
                for k, lab in enumerate(labels):
                    d.attrs[lab] = d.regionref[k:k + 1, :]
                if field_parameters and len(fields) == 2:
                    d.attrs["Field_parameters"] = np.array([b"out-of-field", b"in-field"])
            n_pos, n_spec = rows * cols, spec_v.shape[1]
            raw = np.empty((n_pos, n_spec), np.complex64)
            for col in range(n_spec):
                cyc = spec_i[labels.index("Cycle"), col] if "Cycle" in labels else 0
                fi = spec_i[labels.index("Field"), col] if "Field" in labels else 0
                s, b = spec_i[1, col], spec_i[0, col]
                raw[:, col] = truth(yy.ravel(), xx.ravel(), cyc, fi, s) + 1j * b
            rd = chan.create_dataset("Raw_Data", data=raw)
            _link(rd, pi, pv, si, sv, "Piezoresponse", "V")
            if not sho:
                continue
            # SHO results: one value per (cycle, step, field), own spectroscopic datasets
            g = chan.create_group("Raw_Data-SHO_Fit_000")
            g.attrs["last_pixel"] = n_pos
            sel = spec_i[0] == 0
            ssi = g.create_dataset("Spectroscopic_Indices", data=spec_i[1:, sel].astype(np.uint32))
            ssv = g.create_dataset("Spectroscopic_Values", data=spec_v[1:, sel].astype(np.float32))
            for d in (ssi, ssv):
                _labels(d, labels[1:], units[1:])
            dt = np.dtype([(n, sho_dtype) for n in SHO_NAMES])
            fit = np.zeros((n_pos, int(sel.sum())), dt)
            base = raw[:, sel].real.astype(float)
            fit["Amplitude [V]"] = base
            fit["Frequency [Hz]"] = base * 1e3  # so that kHz equals base
            fit["Quality Factor"] = base + 0.5
            fit["Phase [rad]"] = np.pi / 4
            fit["R2 Criterion"] = 0.99
            for name in ("Guess", "Fit"):
                d = g.create_dataset(name, data=fit if name == "Fit" else np.zeros_like(fit))
                _link(d, pi, pv, ssi, ssv, "SHO", "compound")
            if loops:
                lg = g.create_group("Fit-Loop_Fit_000")
                pl = lg.create_dataset("Projected_Loops", data=(-base).astype(np.float32))
                _link(pl, pi, pv, ssi, ssv, "Piezoresponse", "V")
    return v, freqs
