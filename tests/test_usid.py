"""The USID reader against files written with plain h5py (tests/usid_files.py)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from switchscope import DataError
from switchscope.io import load
from switchscope.io.usid import USIDReader
from switchscope.select import apply_selection, parse_select

from usid_files import truth, write


def _expected(rows, cols, n_cycles, fields, n_steps):
    r, c, cyc, fld, s = np.meshgrid(np.arange(rows), np.arange(cols), np.arange(n_cycles),
                                    np.arange(len(fields)), np.arange(n_steps), indexing="ij")
    return truth(r, c, cyc, fld, s)


@pytest.mark.parametrize("position_order", ["YX", "XY"])
@pytest.mark.parametrize("sho_dtype", [np.float32, np.float64])
def test_sho_and_loops_land_in_place(tmp_path, position_order, sho_dtype):
    path = tmp_path / "beps.h5"
    v, _ = write(path, rows=3, cols=4, n_steps=16, n_cycles=2, position_order=position_order, sho_dtype=sho_dtype)
    assert USIDReader().guess_can_open(path)
    ds = load(path)
    assert ds.attrs["format"] == "usid"
    assert ds["amplitude"].dims == ("row", "col", "cycle", "field", "step")
    assert ds.sizes == {"row": 3, "col": 4, "cycle": 2, "field": 2, "step": 16}
    # field names come from Field_parameters indexed by the Field value (in-field = 1, written first)
    assert list(ds["field"].values) == ["in-field", "out-of-field"]
    assert list(ds["cycle"].values) == [1, 2]
    np.testing.assert_allclose(ds["voltage"].values, v, atol=1e-5)
    want = _expected(3, 4, 2, ("in-field", "out-of-field"), 16)
    tol = 1e-6  # the test file derives every value from complex64 raw data
    np.testing.assert_allclose(ds["amplitude"].values, want, rtol=tol)
    np.testing.assert_allclose(ds["resonance"].values, want, rtol=tol)  # Hz in the file, kHz here
    np.testing.assert_allclose(ds["quality_factor"].values, want + 0.5, rtol=tol)
    np.testing.assert_allclose(ds["phase"].values, 45.0, rtol=1e-6)  # rad -> deg
    np.testing.assert_allclose(ds["sho_r2"].values, 0.99, rtol=1e-6)
    np.testing.assert_allclose(ds["piezoresponse"].values, -want, rtol=1e-5)
    assert ds["resonance"].attrs["units"] == "kHz" and ds["phase"].attrs["units"] == "deg"
    assert "x" not in ds.coords  # pixel numbers labelled 'm' are not a physical size


def test_field_order_is_read_from_the_file(tmp_path):
    """Out-of-field first in the file: the names still follow the Field values."""
    path = tmp_path / "swapped.h5"
    write(path, fields=("out-of-field", "in-field"), n_steps=12)
    ds = load(path)
    assert list(ds["field"].values) == ["out-of-field", "in-field"]
    want = _expected(3, 4, 1, ("out-of-field", "in-field"), 12)[:, :, 0]
    got = ds["amplitude"].sel(field="in-field").values
    np.testing.assert_allclose(got, want[:, :, 1])


def test_one_field_is_named_by_the_measurement(tmp_path):
    path = tmp_path / "out.h5"
    write(path, fields=("out-of-field",), n_steps=12)
    ds = load(path)
    assert "field" not in ds.dims and ds.attrs["field"] == "out-of-field"
    sel = apply_selection(ds, parse_select("field=out-of-field"))
    assert sel["amplitude"].dims == ("row", "col", "step")
    with pytest.raises(DataError, match="measured out-of-field only"):
        apply_selection(ds, parse_select("field=in-field"))


def test_physical_positions_in_metres(tmp_path):
    path = tmp_path / "um.h5"
    write(path, position_units="um", position_scale={"X": 0.5, "Y": 0.25})
    ds = load(path)
    np.testing.assert_allclose(ds["x"].values, 0.5e-6 * np.arange(4), rtol=1e-6)
    np.testing.assert_allclose(ds["y"].values, 0.25e-6 * np.arange(3), rtol=1e-6)


def test_raw_spectra_when_no_fit_or_selected(tmp_path):
    path = tmp_path / "raw.h5"
    write(path, sho=False, n_steps=12, n_bins=5)
    ds = load(path)
    assert ds["spectrum"].dims == ("row", "col", "field", "step", "freq")
    assert ds["spectrum"].dtype == np.complex64
    np.testing.assert_allclose(ds["freq"].values, 300e3 + 1e3 * np.arange(5))
    np.testing.assert_allclose(ds["spectrum"].values.imag[1, 2, 0, 3], np.arange(5))
    np.testing.assert_allclose(ds["spectrum"].values.real[1, 2, 1, 3], truth(1, 2, 0, 1, 3), rtol=1e-6)
    # with a fit present, group=Raw_Data still gives the spectra
    path2 = tmp_path / "both.h5"
    write(path2, n_steps=12)
    assert "spectrum" in load(path2, group="Raw_Data")
    assert "spectrum" not in load(path2)


def test_newest_measurement_by_default_and_any_by_name(tmp_path):
    path = tmp_path / "two.h5"
    write(path, extra_measurement=True, n_steps=12)
    ds = load(path)
    assert "Measurement_001" in ds.attrs["usid_read"]
    ds0 = load(path, group="Measurement_000")
    assert "Measurement_000" in ds0.attrs["usid_read"]
    assert "piezoresponse" in ds0 and "amplitude" in ds0
    sho_only = load(path, group="Raw_Data-SHO_Fit_000")
    assert "Measurement_001" in sho_only.attrs["usid_read"]
    with pytest.raises(DataError, match="Measurement_000, Measurement_000/Channel_000/Raw_Data-SHO_Fit_000, "):
        load(path, group="Measurement_007")


def test_selection_defaults_and_choices(tmp_path):
    path = tmp_path / "sel.h5"
    write(path, n_cycles=3, n_steps=12)
    ds = load(path)
    want = _expected(3, 4, 3, ("in-field", "out-of-field"), 12)
    sel = apply_selection(ds)
    assert sel["amplitude"].dims == ("row", "col", "step")
    np.testing.assert_allclose(sel["amplitude"].values, want[:, :, :, 1].mean(axis=2))
    assert sel.attrs["selection"] == "field=out-of-field (default), cycle=mean (default) of 3"
    two = apply_selection(ds, parse_select(["field=in", "cycle=2"]))
    np.testing.assert_allclose(two["amplitude"].values, want[:, :, 1, 0])
    with pytest.raises(DataError, match="has 3 cycle"):
        apply_selection(ds, parse_select("cycle=4"))


@pytest.mark.parametrize("spec, message", [
    ("field=sideways", "in-field or out-of-field"),
    ("cycle=0", "cycle number from 1"),
    ("cycle=two", "cycle number from 1"),
    ("colour=red", "keys are"),
    ("field", "KEY=VALUE"),
])
def test_bad_selection_is_one_line(spec, message):
    from switchscope import ConfigError

    with pytest.raises(ConfigError, match=message):
        parse_select(spec)


def _break(path, how):
    with h5py.File(path, "r+") as f:
        fit = f["Measurement_000/Channel_000/Raw_Data-SHO_Fit_000/Fit"]
        if how == "no_refs":
            del fit.attrs["Spectroscopic_Values"]
        elif how == "missing_field":
            data = fit[()]
            del f[fit.name]
            keep = [n for n in data.dtype.names if n != "Quality Factor"]
            new = f.create_dataset("Measurement_000/Channel_000/Raw_Data-SHO_Fit_000/Fit", data=data[keep])
            for k, val in f["Measurement_000/Channel_000/Raw_Data-SHO_Fit_000/Guess"].attrs.items():
                new.attrs[k] = val
        elif how == "no_field_labels":
            for name in ("Spectroscopic_Indices", "Spectroscopic_Values"):
                del f["Measurement_000/Channel_000"][name].attrs["Field_parameters"]
        elif how == "complex_loops":
            pl = f["Measurement_000/Channel_000/Raw_Data-SHO_Fit_000/Fit-Loop_Fit_000/Projected_Loops"]
            name, attrs = pl.name, dict(pl.attrs)
            data = pl[()].astype(np.complex64)
            del f[name]
            new = f.create_dataset(name, data=data)
            for k, val in attrs.items():
                new.attrs[k] = val


@pytest.mark.parametrize("how, message", [
    ("no_refs", "has no Spectroscopic_Values reference"),
    ("missing_field", "lacks the field"),
    ("no_field_labels", "Field dimension without labels"),
    ("complex_loops", "complex numbers"),
])
def test_damaged_files_are_one_line_errors(tmp_path, how, message):
    path = tmp_path / "bad.h5"
    write(path, n_steps=12)
    _break(path, how)
    with pytest.raises(DataError, match=message) as info:
        load(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("position_order, sho_dtype, spectra", [("YX", "float64", True), ("XY", "float32", False)])
def test_reads_what_the_usid_writer_wrote(tmp_path, position_order, sho_dtype, spectra):
    """Round trip through switchscope's writer (written from the BGlib sources independently)."""
    from switchscope.io.usid_write import make_usid_example

    path = tmp_path / "example.h5"
    truth_ds = make_usid_example(path, rows=4, cols=5, n_steps=24, n_fields=2, n_cycles=2, n_freq=8,
                                 spectra=spectra, position_order=position_order, sho_dtype=sho_dtype)
    ds = load(path)
    rtol = 1e-5 if sho_dtype == "float32" else 1e-9
    for name in ("amplitude", "resonance", "quality_factor", "phase", "piezoresponse"):
        want = truth_ds[name].transpose("row", "col", "cycle", "field", "step")
        got = ds[name].sel(field=list(want["field"].values))
        np.testing.assert_allclose(got.values, want.values, rtol=rtol, atol=1e-6 * float(np.abs(want).max()),
                                   err_msg=name)
    np.testing.assert_allclose(ds["voltage"].values, truth_ds["voltage"].values, atol=1e-5)
    if spectra:
        raw = load(path, group="Raw_Data")
        want = truth_ds["spectrum"].transpose("row", "col", "cycle", "field", "step", "freq")
        np.testing.assert_allclose(raw["spectrum"].sel(field=list(want["field"].values)).values, want.values,
                                   rtol=1e-5, atol=1e-6 * float(np.abs(want).max()))
        np.testing.assert_allclose(raw["freq"].values, want["freq"].values, rtol=1e-6)


def test_usid_file_to_report_end_to_end(tmp_path, capsys):
    """A USID file with two fields and two cycles, from `info` to the report, in the user's commands."""
    import json

    from switchscope.io.usid_write import make_usid_example

    from cli_helpers import run_cli

    path = tmp_path / "film.h5"
    make_usid_example(path, rows=8, cols=8, n_steps=64, n_fields=2, n_cycles=2, n_freq=8, spectra=False)
    code, out, err = run_cli(capsys, "info", path)
    assert code == 0, err
    assert "fields: in-field, out-of-field" in out and "cycles: 2" in out
    assert "bipolar triangle: 1 cycle of 64 steps" in out
    code, _, err = run_cli(capsys, "run", "--data", path, "--select", "cycle=2", "--stages",
                           "clean,loops,decomposition,report", "--out", tmp_path / "out", "--no-progress")
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["dataset"]["selection"] == "field=out-of-field (default), cycle=2 of 2"
    assert summary["dataset"]["n_steps"] == 64
    page = (tmp_path / "out" / "report" / "index.html").read_text()
    assert "field=out-of-field (default), cycle=2 of 2" in page
    code, _, err = run_cli(capsys, "run", "--data", path, "--select", "cycle=3", "--out", tmp_path / "out2",
                           "--no-progress")
    assert code == 2 and "has 2 cycle(s)" in err and not (tmp_path / "out2").exists()


def test_synth_writes_usid_with_truth(tmp_path, capsys):
    from switchscope.synthetic import make_dataset

    from cli_helpers import run_cli

    out = tmp_path / "film.h5"
    code, _, err = run_cli(capsys, "synth", "--format", "usid", "--spectra", "--fields", "2", "--cycles", "2",
                           "--rows", "5", "--cols", "6", "--seed", "3", "--out", out)
    assert code == 0, err
    ds = load(out)
    ref = make_dataset(rows=5, cols=6, seed=3)
    for name in ("truth_c_fraction", "truth_three_state", "truth_coercive_pos"):
        np.testing.assert_allclose(ds[name].values, ref[name].values)
    assert ds.sizes["cycle"] == 2 and list(ds["field"].values) == ["in-field", "out-of-field"]
    raw = load(out, group="Raw_Data")
    assert raw["spectrum"].dims == ("row", "col", "cycle", "field", "step", "freq")
    code, _, err = run_cli(capsys, "synth", "--fields", "2", "--out", tmp_path / "x.nc")
    assert code == 2 and "--format usid" in err


def test_cycles_back_to_back_on_the_step_axis_become_a_cycle_dim():
    from switchscope import make_dataset as make
    from switchscope.waveform import triangle_waveform

    v = triangle_waveform(24, 5.0, start="0", n_cycles=3)
    rng = np.random.default_rng(1)
    arr = rng.normal(size=(2, 3, 72))
    ds = make({"piezoresponse": arr}, v)
    sel = apply_selection(ds, parse_select("cycle=2"))
    np.testing.assert_array_equal(sel["piezoresponse"].values, arr[:, :, 24:48])
    np.testing.assert_allclose(sel["voltage"].values, v[:24])
    mean = apply_selection(ds)
    np.testing.assert_allclose(mean["piezoresponse"].values, arr.reshape(2, 3, 3, 24).mean(axis=2))
    assert mean.attrs["selection"] == "cycle=mean (default) of 3"


@pytest.mark.parametrize("spec", [{}, {"field": "in-field"}, {"cycle": 2}, {"field": "in-field", "cycle": "mean"}])
@pytest.mark.parametrize("position_order", ["YX", "XY"])
def test_selection_while_reading_equals_selection_after(tmp_path, spec, position_order):
    """load(select=...) reduces block by block what apply_selection reduces after a full read."""
    from switchscope.io.usid_write import make_usid_example

    path = tmp_path / "sel.h5"
    make_usid_example(path, rows=5, cols=4, n_steps=24, n_fields=2, n_cycles=3, n_freq=6, spectra=True,
                      artifacts=True, position_order=position_order)
    for group in (None, "Raw_Data"):
        after = apply_selection(load(path, group=group), spec)
        during = apply_selection(load(path, group=group, select=spec), spec)
        assert during.attrs["selection"] == after.attrs["selection"]
        assert set(during.data_vars) == set(after.data_vars)
        for name in after.data_vars:
            assert during[name].dims == after[name].dims, name
            np.testing.assert_allclose(during[name].values, after[name].values, rtol=1e-12, atol=1e-12,
                                       equal_nan=True, err_msg=name)
    with pytest.raises(DataError, match="has 3 cycle"):
        load(path, select={"cycle": 4})


def test_apply_selection_checks_its_selection(tmp_path):
    from switchscope import ConfigError

    path = tmp_path / "c.h5"
    write(path, n_cycles=2, n_steps=12)
    ds = load(path)
    for bad in ({"cycle": 0}, {"cycle": -1}, {"bogus": 1}, "cycle=x"):
        with pytest.raises(ConfigError):
            apply_selection(ds, bad)
    assert apply_selection(ds, {"field": "out", "cycle": "2"}).attrs["selection"] == "field=out-of-field, cycle=2 of 2"


def test_groups_list_raw_data_only_when_present(tmp_path):
    from switchscope.io.usid_write import make_usid_example

    path = tmp_path / "fit.h5"
    make_usid_example(path, rows=3, cols=3, n_steps=16, n_fields=1, n_cycles=1, spectra=False)
    ds = load(path)
    assert "Raw_Data" not in ds.attrs["usid_groups"].split(", ")
    with pytest.raises(DataError, match="is not in"):
        load(path, group="Raw_Data")
