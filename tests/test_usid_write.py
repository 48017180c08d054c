"""The USID writer (switchscope.io.usid_write), checked with plain h5py against the layout facts of
the pycroscopy sources (not with switchscope's USID reader, which is tested against this writer).

Sources (pycroscopy/BGlib, pycroscopy/pyUSID, pycroscopy/sidpy):
- BGlib ``be/translators/be_odf.py`` (``translate``, ``_build_udvs_table``, ``_read_beps_data``)
- BGlib ``be/translators/df_utils/be_utils.py`` (``createSpecVals``: ``__FindSpecValIndices``, ``__BEPSDC``;
  ``trimUDVS``)
- BGlib ``be/analysis/be_sho_fitter.py`` (``sho32``, ``_create_guess_datasets``, ``_create_fit_datasets``)
- BGlib ``be/analysis/be_loop_fitter.py`` (``loop_metrics32``, ``_create_projection_datasets``)
- BGlib ``be/analysis/utils/be_loop.py`` (``calculate_loop_centroid``, ``projectLoop``)
- pyUSID ``io/hdf_utils/simple.py`` (``write_ind_val_dsets``, ``write_reduced_anc_dsets``, ``link_as_main``,
  ``create_results_group``, ``create_empty_dataset``), ``io/anc_build_utils.py`` (``create_spec_inds_from_vals``)
- sidpy ``hdf/hdf_utils.py`` (``write_simple_attrs``), ``base/string_utils.py`` (``clean_string_att``),
  ``hdf/reg_ref.py`` (``write_region_references``)
"""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import xarray as xr

from switchscope._errors import ConfigError, DataError, OutputError
from switchscope.io.usid_write import make_usid_example, write_usid
from switchscope.synthetic import make_dataset

CHAN = "Measurement_000/Channel_000"
SHO = f"{CHAN}/Raw_Data-SHO_Fit_000"
LOOP = f"{SHO}/Fit-Loop_Fit_000"
SHO_NAMES = ["Amplitude [V]", "Frequency [Hz]", "Quality Factor", "Phase [rad]", "R2 Criterion"]

ROWS, COLS, STEPS, CYCLES, NFREQ = 3, 4, 16, 2, 5


def labels(d):
    return [x.decode() for x in d.attrs["labels"]]


def units(d):
    return [x.decode() for x in d.attrs["units"]]


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """A 3 x 4 film, in- and out-of-field, 2 cycles, 16 steps, 5 bins, with spectra."""
    path = tmp_path_factory.mktemp("usid") / "film.h5"
    ds = make_usid_example(path, rows=ROWS, cols=COLS, n_steps=STEPS, n_cycles=CYCLES, n_freq=NFREQ, seed=3)
    return path, ds


def flat_col(c, s, f, k=None, *, nf=2, ns=STEPS, nk=NFREQ):
    """Column of (cycle c, DC step s, field position f[, bin k]): Frequency fastest, then Field, then
    DC_Offset, then Cycle (__BEPSDC loops over UDVS steps, bins inside; in/out-of-field alternate)."""
    u = (c * ns + s) * nf + f
    return u if k is None else u * nk + k


# -- tree, dtypes, attributes ---------------------------------------------------------------------

def test_tree_shapes_and_dtypes(example):
    path, _ = example
    n_pos, n_udvs = ROWS * COLS, CYCLES * STEPS * 2
    with h5py.File(path, "r") as f:
        # be_odf.py translate(): root attrs and Measurement_000 / Channel_000 (create_indexed_group)
        assert f.attrs["translator"] == "ODF" and f.attrs["data_type"] == "BEPSData"
        assert str(f.attrs["switchscope_writer"]).startswith("switchscope")
        assert f.attrs["grid_size_x"] == COLS and f.attrs["grid_size_y"] == ROWS
        meas = f["Measurement_000"].attrs
        assert meas["VS_mode"] == "DC modulation mode"
        assert meas["VS_measure_in_field_loops"] == "in and out-of-field"
        assert meas["VS_steps_per_full_cycle"] == STEPS and meas["VS_number_of_cycles"] == CYCLES
        assert meas["num_pix"] == n_pos and meas["num_bins"] == n_udvs * NFREQ
        assert meas["num_udvs_steps"] == n_udvs
        assert meas["BE_center_frequency_[Hz]"] == pytest.approx(1325e3)
        assert meas["BE_band_width_[Hz]"] == pytest.approx(40e3)
        # the paper's waveform (+V first, going down) is the bipolar triangle rolled by 3/4
        assert meas["VS_cycle_phase_shift"] == "3/4" and meas["VS_cycle_fraction"] == "full"
        chan = f[CHAN]
        assert chan.attrs["channel_type"] == "BE"
        # write_ind_val_dsets: INDICES_DTYPE uint32, VALUES_DTYPE float32
        assert chan["Position_Indices"].dtype == np.uint32 and chan["Position_Indices"].shape == (n_pos, 2)
        assert chan["Position_Values"].dtype == np.float32 and chan["Position_Values"].shape == (n_pos, 2)
        assert chan["Spectroscopic_Indices"].dtype == np.uint32
        assert chan["Spectroscopic_Values"].dtype == np.float32
        assert chan["Spectroscopic_Values"].shape == (4, n_udvs * NFREQ)
        raw = chan["Raw_Data"]
        assert raw.dtype == np.complex64 and raw.shape == (n_pos, n_udvs * NFREQ)
        assert raw.attrs["quantity"] == "Piezoresponse" and raw.attrs["units"] == "V"
        # UDVS: both fields always have rows (_build_udvs_table), even rows in-field
        assert chan["UDVS"].shape == (2 * STEPS * CYCLES, 7)
        assert labels(chan["UDVS"])[5:] == ["in-field", "out-of-field"]
        assert chan["Bin_Frequencies"].shape == (NFREQ,)
        for name in ("Guess", "Fit"):
            d = f[SHO][name]
            assert d.shape == (n_pos, n_udvs) and list(d.dtype.names) == SHO_NAMES
            assert all(d.dtype[n] == np.float64 for n in SHO_NAMES)  # BGlib >= 0.0.5: formats float
            assert d.attrs["quantity"] == "SHO" and d.attrs["units"] == "compound"
        grp = f[SHO].attrs
        assert grp["tool"] == "SHO_Fit" and grp["last_pixel"] == n_pos  # create_results_group, Process
        assert grp["fit-method"] == "pycroscopy BESHO" and grp["guess-algorithm"] == "complex_gaussian"
        assert f[grp["source_000"]].name == f"/{CHAN}/Raw_Data"
        assert f[SHO]["completed_fit_positions"][()].tolist() == [1] * n_pos
        proj = f[LOOP]["Projected_Loops"]
        assert proj.dtype == np.float64 and proj.shape == (n_pos, n_udvs)
        lm = f[LOOP]["Loop_Metrics"]
        assert lm.shape == (n_pos, CYCLES * 2) and list(lm.dtype.names) == [
            "Area", "Centroid x", "Centroid y", "Rotation Angle [rad]", "Offset"]
        assert lm.attrs["quantity"] == "Metrics" and lm.attrs["units"] == "compound"
        assert f[f[LOOP].attrs["source_000"]].name == f"/{SHO}/Fit"


def test_string_attributes_are_fixed_length_bytes(example):
    # sidpy clean_string_att: lists of strings become np.array(..., dtype='S')
    path, _ = example
    with h5py.File(path, "r") as f:
        for d in (f[CHAN]["Position_Indices"], f[CHAN]["Spectroscopic_Values"], f[SHO]["Spectroscopic_Indices"]):
            assert d.attrs["labels"].dtype.kind == "S" and d.attrs["units"].dtype.kind == "S"
        assert f[CHAN]["Spectroscopic_Values"].attrs["Field_parameters"].dtype.kind == "S"


def test_main_datasets_reference_their_ancillaries(example):
    # link_as_main: four object references; Guess/Fit use the Channel's positions and the SHO group's
    # spectroscopic datasets; Projected_Loops copies the SHO Fit's attributes (create_empty_dataset)
    path, _ = example
    with h5py.File(path, "r") as f:
        expect = {
            f"{CHAN}/Raw_Data": (CHAN, CHAN),
            f"{SHO}/Guess": (CHAN, SHO),
            f"{SHO}/Fit": (CHAN, SHO),
            f"{LOOP}/Projected_Loops": (CHAN, SHO),
        }
        for name, (pos_grp, spec_grp) in expect.items():
            d = f[name]
            for kind in ("Indices", "Values"):
                assert isinstance(d.attrs[f"Position_{kind}"], h5py.Reference)
                assert f[d.attrs[f"Position_{kind}"]].name == f"/{pos_grp}/Position_{kind}"
                assert f[d.attrs[f"Spectroscopic_{kind}"]].name == f"/{spec_grp}/Spectroscopic_{kind}"
        lm = f[f"{LOOP}/Loop_Metrics"]
        assert f[lm.attrs["Spectroscopic_Indices"]].name == f"/{LOOP}/Loop_Metrics_Indices"
        assert f[lm.attrs["Spectroscopic_Values"]].name == f"/{LOOP}/Loop_Metrics_Values"
        assert f[lm.attrs["Position_Indices"]].name == f"/{CHAN}/Position_Indices"


# -- spectroscopic rows ---------------------------------------------------------------------------

def test_channel_rows_labels_units_and_region_references(example):
    path, _ = example
    with h5py.File(path, "r") as f:
        for name in ("Spectroscopic_Indices", "Spectroscopic_Values"):
            d = f[CHAN][name]
            # __BEPSDC: [Frequency, DC_Offset] + Field (in and out-of-field) + Cycle (cycles > 1)
            assert labels(d) == ["Frequency", "DC_Offset", "Field", "Cycle"]
            assert units(d) == ["Hz", "V", "", ""]
            table = d[()]
            for i, lab in enumerate(labels(d)):  # be_odf.py write_region_references, one per row
                ref = d.attrs[lab]
                assert isinstance(ref, h5py.RegionReference)
                np.testing.assert_array_equal(np.asarray(d[ref]).ravel(), table[i])


def test_field_value_and_index_run_in_opposite_orders(example):
    path, _ = example
    with h5py.File(path, "r") as f:
        ind, val = f[CHAN]["Spectroscopic_Indices"][()], f[CHAN]["Spectroscopic_Values"][()]
        params = [x.decode() for x in f[CHAN]["Spectroscopic_Values"].attrs["Field_parameters"]]
    assert params == ["out-of-field", "in-field"]  # indexed by the Field value
    c_in, c_out = flat_col(0, 0, 0, 0), flat_col(0, 0, 1, 0)
    # __BEPSDC: swapfield=[1, 0] starting from 0 -> the first (in-field) step has value 1
    assert val[2, c_in] == 1 and params[int(val[2, c_in])] == "in-field"
    assert val[2, c_out] == 0 and params[int(val[2, c_out])] == "out-of-field"
    # create_spec_inds_from_vals: indices by order of appearance -> in-field index 0
    assert ind[2, c_in] == 0 and ind[2, c_out] == 1


def test_frequency_fastest_then_field_then_dc_then_cycle(example):
    path, ds = example
    with h5py.File(path, "r") as f:
        ind, val = f[CHAN]["Spectroscopic_Indices"][()], f[CHAN]["Spectroscopic_Values"][()]
        freqs = f[CHAN]["Bin_Frequencies"][()]
    np.testing.assert_array_equal(ind[0, :NFREQ], np.arange(NFREQ))
    np.testing.assert_allclose(val[0, :NFREQ], np.linspace(1305e3, 1345e3, NFREQ), rtol=1e-7)  # kHz -> Hz
    np.testing.assert_allclose(freqs, np.linspace(1305e3, 1345e3, NFREQ))
    assert np.all(ind[1:, :NFREQ] == 0)
    for c, s, fpos, k in [(0, 0, 1, 0), (0, 5, 0, 3), (1, 0, 0, 0), (1, 15, 1, 4)]:
        j = flat_col(c, s, fpos, k)
        assert ind[:, j].tolist() == [k, s, fpos, c]
        assert val[1, j] == pytest.approx(float(ds["voltage"][s]), abs=1e-5)
        assert val[3, j] == c


def test_out_of_field_steps_repeat_the_preceding_in_field_dc(example):
    # __FindSpecValIndices copies each even (in-field) step's DC offset into the odd step after it
    path, ds = example
    with h5py.File(path, "r") as f:
        val = f[CHAN]["Spectroscopic_Values"][()]
        udvs = f[CHAN]["UDVS"][()]
    dc_per_step = val[1, ::NFREQ]
    np.testing.assert_array_equal(dc_per_step[1::2], dc_per_step[0::2])
    np.testing.assert_allclose(dc_per_step[0::2][:STEPS], ds["voltage"].values, atol=1e-5)
    # ... while the UDVS table itself holds 0 V on out-of-field rows (_build_udvs_table, DC mode)
    assert np.all(udvs[1::2, 1] == 0) and np.allclose(udvs[0::2, 1][:STEPS], ds["voltage"].values)


def test_sho_group_spectroscopic_datasets_drop_frequency_and_copy_only_labels_units(example):
    # write_reduced_anc_dsets: columns where Frequency is at its first index; attrs labels + units only
    path, _ = example
    with h5py.File(path, "r") as f:
        chan_ind, chan_val = f[CHAN]["Spectroscopic_Indices"][()], f[CHAN]["Spectroscopic_Values"][()]
        for name in ("Spectroscopic_Indices", "Spectroscopic_Values"):
            d = f[SHO][name]
            assert labels(d) == ["DC_Offset", "Field", "Cycle"] and units(d) == ["V", "", ""]
            assert set(d.attrs) == {"labels", "units"}
        np.testing.assert_array_equal(f[SHO]["Spectroscopic_Indices"][()], chan_ind[1:, ::NFREQ])
        np.testing.assert_array_equal(f[SHO]["Spectroscopic_Values"][()], chan_val[1:, ::NFREQ])
        assert f[SHO]["Spectroscopic_Values"].dtype == np.float32
        # Loop_Metrics_*: the SHO ones without DC_Offset (columns where DC_Offset index is 0)
        mi, mv = f[LOOP]["Loop_Metrics_Indices"], f[LOOP]["Loop_Metrics_Values"]
        assert labels(mi) == ["Field", "Cycle"]
        assert mi[()].tolist() == [[0, 1, 0, 1], [0, 0, 1, 1]]  # field fast, cycle slow
        assert mv[()].tolist() == [[1, 0, 1, 0], [0, 0, 1, 1]]


# -- values at known columns ----------------------------------------------------------------------

@pytest.mark.parametrize("r,c,cyc,fpos,s,k", [(0, 0, 0, 0, 0, 0), (1, 2, 0, 1, 7, 3), (2, 3, 1, 0, 15, 4)])
def test_values_land_at_their_flat_columns(example, r, c, cyc, fpos, s, k):
    path, ds = example
    field = ["in-field", "out-of-field"][fpos]
    point = dict(row=r, col=c, cycle=cyc + 1, field=field, step=s)
    pix = r * COLS + c  # X (col) fastest
    with h5py.File(path, "r") as f:
        raw = f[CHAN]["Raw_Data"][pix, flat_col(cyc, s, fpos, k)]
        fit = f[SHO]["Fit"][pix, flat_col(cyc, s, fpos)]
        proj = f[LOOP]["Projected_Loops"][pix, flat_col(cyc, s, fpos)]
    assert raw == pytest.approx(complex(ds["spectrum"].sel(**point).values[k]), rel=1e-6)
    assert fit["Amplitude [V]"] == pytest.approx(float(ds["amplitude"].sel(**point)))
    assert fit["Frequency [Hz]"] == pytest.approx(1e3 * float(ds["resonance"].sel(**point)))  # kHz -> Hz
    assert fit["Phase [rad]"] == pytest.approx(np.deg2rad(float(ds["phase"].sel(**point))))  # deg -> rad
    assert fit["Quality Factor"] == pytest.approx(float(ds["quality_factor"].sel(**point)))
    assert fit["R2 Criterion"] > 0.999  # noise-free spectra from the same SHO model
    assert proj == pytest.approx(float(ds["piezoresponse"].sel(**point)))


def test_guess_is_the_fit_with_frequency_snapped_to_a_bin(example):
    path, _ = example
    with h5py.File(path, "r") as f:
        guess, fit = f[SHO]["Guess"][()], f[SHO]["Fit"][()]
        freqs = f[CHAN]["Bin_Frequencies"][()]
    assert np.isin(guess["Frequency [Hz]"], freqs).all()
    assert not np.array_equal(guess["Frequency [Hz]"], fit["Frequency [Hz]"])
    for name in ("Amplitude [V]", "Quality Factor", "Phase [rad]"):
        np.testing.assert_array_equal(guess[name], fit[name])


def test_loop_metrics_area_and_centroid(example):
    # calculate_loop_centroid: polygon over segments i -> i+1 of (V, loop); columns cycle slow, field fast
    path, ds = example
    v = ds["voltage"].values
    with h5py.File(path, "r") as f:
        lm = f[LOOP]["Loop_Metrics"][()]
    for pix, (r, c) in [(0, (0, 0)), (7, (1, 3))]:
        for col, (cyc, field) in enumerate([(1, "in-field"), (1, "out-of-field"), (2, "in-field"),
                                            (2, "out-of-field")]):
            y = ds["piezoresponse"].sel(row=r, col=c, cycle=cyc, field=field).values
            area = 0.5 * sum(v[i] * y[i + 1] - v[i + 1] * y[i] for i in range(len(v) - 1))
            cx = sum((v[i] + v[i + 1]) * (v[i] * y[i + 1] - v[i + 1] * y[i]) for i in range(len(v) - 1)) / (6 * area)
            assert area > 0  # descending branch above the ascending one: counter-clockwise
            assert lm[pix, col]["Area"] == pytest.approx(area)
            assert lm[pix, col]["Centroid x"] == pytest.approx(cx)
            assert lm[pix, col]["Rotation Angle [rad]"] == 0


def test_example_fields_and_cycles(example):
    _, ds = example
    v = ds["voltage"].values
    pr = ds["piezoresponse"]
    diff = (pr.sel(field="in-field") - pr.sel(field="out-of-field")).values
    # in-field = out-of-field + h * (offset + slope * V): the same linear term at every pixel
    line = diff[0, 0, 0]
    np.testing.assert_allclose(diff, np.broadcast_to(line, diff.shape), atol=1e-12)
    slope = np.polyfit(v, line, 1)[0]
    assert slope > 0
    # piezoresponse = amplitude * cos(phase) holds in every field and cycle; cycle 2 differs (imprint drift)
    np.testing.assert_allclose(pr.values, (ds["amplitude"] * np.cos(np.deg2rad(ds["phase"]))).values, atol=1e-15)
    assert not np.allclose(pr.sel(cycle=1).values, pr.sel(cycle=2).values)


# -- options --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["float32", "float64"])
def test_sho_dtype(tmp_path, kind):
    ds = make_dataset(rows=2, cols=3, n_steps=8, artifacts=False)
    path = write_usid(ds, tmp_path / "f.h5", sho_dtype=kind)
    with h5py.File(path, "r") as f:
        for name in ("Guess", "Fit"):
            d = f[SHO][name]
            assert list(d.dtype.names) == SHO_NAMES
            assert all(d.dtype[n] == np.dtype(kind) for n in SHO_NAMES)
        # BGlib <= 0.0.4 wrote float32 loop results too (be_loop_fitter.py at tag v0.0.4.0)
        assert f[LOOP]["Projected_Loops"].dtype == np.dtype(kind)
        lm = f[LOOP]["Loop_Metrics"].dtype
        assert all(lm[n] == np.dtype(kind) for n in lm.names)
        assert f[f"{SHO}/Fit"]["Frequency [Hz]"][1, 3] == pytest.approx(
            1e3 * float(ds["resonance"][0, 1, 3]), rel=1e-6 if kind == "float32" else 1e-12)


@pytest.mark.parametrize("order", ["YX", "XY"])
def test_position_order(tmp_path, order):
    ds = make_dataset(rows=3, cols=4, n_steps=8, artifacts=False)
    path = write_usid(ds, tmp_path / "f.h5", position_order=order)
    with h5py.File(path, "r") as f:
        ind, val = f[CHAN]["Position_Indices"], f[CHAN]["Position_Values"]
        assert labels(ind) == list(order) and labels(val) == list(order)
        assert units(ind) == ["m", "m"]
        table = ind[()]
        x, y = table[:, list(order).index("X")], table[:, list(order).index("Y")]
        # X (col) varies fastest whatever the column order: pixel r * cols + c
        assert x.tolist() == [0, 1, 2, 3] * 3 and y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
        np.testing.assert_array_equal(val[()], table.astype(np.float32))  # ODF: indices as values, 'm'
        if order == "XY":  # pyUSID before 2020-07: a region reference per column, no 'type'
            for i, lab in enumerate(order):
                np.testing.assert_array_equal(np.asarray(ind[ind.attrs[lab]]).ravel(), table[:, i])
            assert "type" not in ind.attrs
        else:  # write_ind_val_dsets since 2019: slow-to-fast columns, 'type' = DimType.DEFAULT (0)
            assert ind.attrs["type"].tolist() == [0, 0]
            assert "X" not in ind.attrs


def test_pixel_size_in_metres(tmp_path):
    ds = make_dataset(rows=2, cols=3, n_steps=8, artifacts=False)
    path = write_usid(ds, tmp_path / "f.h5", pixel_size=(2e-8, 5e-8))
    with h5py.File(path, "r") as f:
        val = f[CHAN]["Position_Values"][()]
    np.testing.assert_allclose(val[:, 0], np.repeat([0, 2e-8], 3), rtol=1e-6)  # Y
    np.testing.assert_allclose(val[:, 1], np.tile([0, 5e-8, 1e-7], 2), rtol=1e-6)  # X


@pytest.mark.parametrize("field", ["in-field", "out-of-field"])
def test_one_field_one_cycle(tmp_path, field):
    # __BEPSDC: single-field files have no Field row but Field_parameters names the field; no Cycle row
    ds = make_dataset(rows=2, cols=2, n_steps=8, artifacts=False, spectra=True, n_freq=4)
    path = write_usid(ds, tmp_path / "f.h5", fields=(field,))
    with h5py.File(path, "r") as f:
        sv = f[CHAN]["Spectroscopic_Values"]
        assert labels(sv) == ["Frequency", "DC_Offset"] and units(sv) == ["Hz", "V"]
        assert [x.decode() for x in sv.attrs["Field_parameters"]] == [field]
        assert f["Measurement_000"].attrs["VS_measure_in_field_loops"] == field
        assert f["Measurement_000"].attrs["num_udvs_steps"] == 8
        np.testing.assert_allclose(sv[1, ::4], ds["voltage"].values, atol=1e-5)
        np.testing.assert_allclose(sv[0, :4], 1e3 * ds["freq"].values, rtol=1e-7)  # kHz -> Hz
        # the UDVS keeps both fields' rows; only the other field's column is dropped (trimUDVS)
        udvs = f[CHAN]["UDVS"]
        assert udvs.shape == (16, 6) and field in labels(udvs)
        steps = np.unique(f[CHAN]["UDVS_Indices"][()])
        assert (steps % 2 == (0 if field == "in-field" else 1)).all()  # even UDVS steps are in-field
        raw = f[CHAN]["Raw_Data"][()]
        expect = (ds["spectrum_real"] + 1j * ds["spectrum_imag"]).values.reshape(4, -1)
        np.testing.assert_allclose(raw, expect, rtol=1e-6)
        # write_reduced_anc_dsets removing every dimension: one 'Single_Step' column
        mi = f[LOOP]["Loop_Metrics_Indices"]
        assert labels(mi) == ["Single_Step"] and mi.shape == (1, 1)
        assert f[LOOP]["Loop_Metrics"].shape == (4, 1)


def test_without_spectra_no_raw_data(tmp_path):
    ds = make_dataset(rows=2, cols=2, n_steps=8, artifacts=False)
    path = write_usid(ds, tmp_path / "f.h5")
    with h5py.File(path, "r") as f:
        assert "Raw_Data" not in f[CHAN]
        assert "source_000" not in f[SHO].attrs
        fit = f[SHO]["Fit"]
        assert f[fit.attrs["Spectroscopic_Values"]].name == f"/{SHO}/Spectroscopic_Values"
        assert (fit["R2 Criterion"] == 1).all()
        assert f[CHAN]["Spectroscopic_Values"].shape == (2, 8 * 24)  # default n_freq bins


def test_subset_of_fields_and_cycles(tmp_path):
    path = tmp_path / "f.h5"
    ds = make_usid_example(path, rows=2, cols=2, n_steps=8, n_cycles=2, n_freq=4, spectra=False)
    out = write_usid(ds, tmp_path / "g.h5", fields=("out-of-field",), cycles=1)
    with h5py.File(out, "r") as f:
        assert labels(f[CHAN]["Spectroscopic_Values"]) == ["Frequency", "DC_Offset"]
        fit = f[SHO]["Fit"][()]
    expect = 1e3 * ds["resonance"].sel(cycle=1, field="out-of-field").values.reshape(4, -1)
    np.testing.assert_allclose(fit["Frequency [Hz]"], expect)


# -- refusals -------------------------------------------------------------------------------------

def test_refuses_to_replace_a_foreign_file(tmp_path):
    ds = make_dataset(rows=2, cols=2, n_steps=8, artifacts=False)
    foreign = tmp_path / "theirs.h5"
    with h5py.File(foreign, "w") as f:
        f.attrs["translator"] = "ODF"
    before = foreign.read_bytes()
    with pytest.raises(OutputError, match="already exists"):
        write_usid(ds, foreign)
    with pytest.raises(OutputError, match="not written by switchscope"):
        write_usid(ds, foreign, overwrite=True)
    assert foreign.read_bytes() == before
    ours = write_usid(ds, tmp_path / "ours.h5")
    write_usid(ds, ours, overwrite=True, position_order="XY")  # ours: replaced
    with h5py.File(ours, "r") as f:
        assert labels(f[CHAN]["Position_Indices"]) == ["X", "Y"]
    assert sorted(os.listdir(tmp_path)) == ["ours.h5", "theirs.h5"]  # no temporary left


def test_bad_inputs_one_line(tmp_path):
    ds = make_dataset(rows=2, cols=2, n_steps=8, artifacts=False)
    with pytest.raises(DataError, match="no spectrum"):
        write_usid(ds, tmp_path / "a.h5", spectra=True)
    with pytest.raises(ConfigError, match="loops=True needs sho=True"):
        write_usid(ds, tmp_path / "a.h5", sho=False)
    with pytest.raises(ConfigError, match="no field dim"):
        write_usid(ds, tmp_path / "a.h5", fields=("in-field", "out-of-field"))
    with pytest.raises(ConfigError, match="position_order"):
        write_usid(ds, tmp_path / "a.h5", position_order="ZX")
    with pytest.raises(DataError, match="resonance"):
        write_usid(ds.drop_vars("resonance"), tmp_path / "a.h5")
    bad = ds.copy()
    bad["resonance"] = bad["resonance"].assign_attrs(units="furlongs")
    with pytest.raises(DataError, match="units"):
        write_usid(bad, tmp_path / "a.h5")
    two = xr.concat([ds, ds], dim="field").assign_coords(field=["in-field", "sideways"])
    with pytest.raises(DataError, match="in-field' or 'out-of-field"):
        write_usid(two, tmp_path / "a.h5")
    with pytest.raises(OutputError, match="does not exist"):
        write_usid(ds, tmp_path / "missing" / "a.h5")
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    for kwargs in ({"spectra": True}, {"sho": False}, {"sho_dtype": "float16"}, {"n_freq": 1}):
        with pytest.raises((DataError, ConfigError)) as info:
            write_usid(ds, tmp_path / "a.h5", **kwargs)
        assert "\n" not in str(info.value)
