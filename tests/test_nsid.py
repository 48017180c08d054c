"""Tests of the NSID HDF5 reader (switchscope.io.nsid).

The test files are written with h5py the way pyNSID 0.0.7.2 writes them, read from its sources:
``pyNSID/io/hdf_io.py::write_nsid_dataset`` (a group named after the dataset holding the main
dataset of the same name and one 1-D dataset per dimension with attributes ``name``, ``units``,
``quantity``, ``dimension_type``; main attributes ``quantity``, ``units``, ``main_data_name``,
``data_type``, ``modality``, ``source``, ``pyNSID_version``), ``pyNSID/io/hdf_utils.py::link_as_main``
(``make_scale(name)``, ``dims[i].label = name``, ``dims[i].attach_scale``) and sidpy's
``sidpy/hdf/hdf_utils.py::write_book_keeping_attrs`` (``machine_id``, ``timestamp``, ``platform``,
``sidpy_version``). Dimension types are ``sidpy/sid/dimension.py::DimensionType`` names.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np
import pytest

from switchscope import DataError, DataWarning, FormatError
from switchscope._dataset import make_dataset
from switchscope.io import save
from switchscope.io.nsid import NSIDReader

READER = NSIDReader()
ROWS, COLS, STEPS = 3, 4, 6
VOLTS = np.array([0.0, 5.0, 10.0, 0.0, -10.0, -5.0])
X_NM = np.arange(COLS) * 20.0  # 20 nm pixels along x (columns)
Y_NM = np.arange(ROWS) * 30.0 + 5.0

Dim = tuple  # (name, values, quantity, units, dimension_type)


def _book_keeping(obj: Any) -> None:
    obj.attrs.update({"machine_id": "lab-pc", "timestamp": "2024_01_01-00_00_00",
                      "platform": "Linux", "sidpy_version": "0.12.0", "pyNSID_version": "0.0.7.2"})


def _write_nsid(f: h5py.File, group: str, name: str, data: np.ndarray, dims: Sequence[Dim], *,
                quantity: str = "Piezoresponse", units: str = "a.u.",
                data_type: str = "SPECTRAL_IMAGE") -> h5py.Dataset:
    """One NSID main dataset at ``group/name/name`` as ``write_nsid_dataset`` lays it out."""
    grp = f.require_group(group).create_group(name)
    _book_keeping(grp)
    main = grp.create_dataset(name, data=data)
    scales = []
    for dim_name, values, dquantity, dunits, dtype in dims:
        d = grp.create_dataset(dim_name, data=values)
        d.attrs.update({"name": dim_name, "units": dunits, "quantity": dquantity, "dimension_type": dtype})
        scales.append(d)
    main.attrs.update({"quantity": quantity, "units": units, "main_data_name": name, "data_type": data_type,
                       "modality": "BEPS", "source": "test"})
    _book_keeping(main)
    for i, d in enumerate(scales):
        d.make_scale(d.attrs["name"])
        main.dims[i].label = d.attrs["name"]
        main.dims[i].attach_scale(d)
    return main


def _cube(seed: int = 0) -> np.ndarray:
    """A known (rows, cols, steps) cube: value = 100*row + 10*col + step (+ seed)."""
    r, c, s = np.meshgrid(np.arange(ROWS), np.arange(COLS), np.arange(STEPS), indexing="ij")
    return 100.0 * r + 10.0 * c + s + seed


X = ("X", X_NM, "distance", "nm", "SPATIAL")
Y = ("Y", Y_NM, "distance", "nm", "SPATIAL")
V = ("Voltage", VOLTS, "Voltage", "V", "SPECTRAL")


def _xyv(cube: np.ndarray) -> np.ndarray:
    """The cube in NSID's usual (X, Y, Voltage) order."""
    return cube.transpose(1, 0, 2)


def _file(tmp_path: Path, channels: dict[str, tuple[np.ndarray, str, str]] | None = None, *,
          dims: Sequence[Dim] = (X, Y, V), name: str = "beps.h5") -> Path:
    """A file with one ``Measurement_000/Channel_###`` group per ``{name: (data, quantity, units)}``."""
    path = tmp_path / name
    channels = channels or {"Loops": (_xyv(_cube()), "Piezoresponse", "a.u.")}
    with h5py.File(path, "w") as f:
        for i, (dname, (data, quantity, units)) in enumerate(channels.items()):
            _write_nsid(f, f"Measurement_000/Channel_{i:03d}", dname, data, dims, quantity=quantity, units=units)
    return path


def _one_line(exc_info: Any) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and msg.strip() == msg and "\x1b" not in msg
    return msg


# -- layout and values ---------------------------------------------------------------------------

def test_xyv_cube_lands_on_row_col_step(tmp_path):
    path = _file(tmp_path)
    assert READER.guess_can_open(path)
    READER.check_size(path)
    ds = READER.open(path)
    da = ds["piezoresponse"]
    assert da.dims == ("row", "col", "step") and da.dtype == np.float64
    np.testing.assert_array_equal(da.values, _cube())
    np.testing.assert_array_equal(ds["voltage"].values, VOLTS)
    assert ds["voltage"].dims == ("step",) and ds["voltage"].attrs["units"] == "V"
    np.testing.assert_allclose(ds["x"].values, X_NM * 1e-9)
    np.testing.assert_allclose(ds["y"].values, Y_NM * 1e-9)
    assert ds["x"].dims == ("col",) and ds["y"].dims == ("row",) and ds["x"].attrs["units"] == "m"
    assert ds.attrs["source"] == "beps.h5" and ds.attrs["format"] == "nsid"
    assert da.attrs["units"] == "a.u." and da.attrs["nsid_path"] == "/Measurement_000/Channel_000/Loops/Loops"


@pytest.mark.parametrize("order", [(0, 1, 2), (1, 0, 2), (2, 0, 1), (2, 1, 0), (1, 2, 0)])
def test_axis_order_follows_names_not_position(tmp_path, order):
    """Any order of (Y, X, Voltage) axes: values land by name."""
    ryx = [Y, X, V]  # axes of _cube(): row=Y, col=X, step=Voltage
    data = _cube().transpose(order)
    path = _file(tmp_path, {"Loops": (data, "Piezoresponse", "a.u.")}, dims=[ryx[i] for i in order])
    ds = READER.open(path)
    np.testing.assert_array_equal(ds["piezoresponse"].values, _cube())
    np.testing.assert_allclose(ds["x"].values, X_NM * 1e-9)
    np.testing.assert_allclose(ds["y"].values, Y_NM * 1e-9)


def test_unnamed_spatial_axes_fill_row_then_col(tmp_path):
    """sidpy's ``dim_0``/``dim_1`` (a C-ordered (rows, cols) array) have no x/y name: file order."""
    dims = [("dim_0", np.arange(ROWS), "generic", "generic", "SPATIAL"),
            ("dim_1", np.arange(COLS), "generic", "generic", "SPATIAL"),
            ("DC Offset", VOLTS, "Voltage", "Volts", "SPECTRAL")]
    ds = READER.open(_file(tmp_path, {"Loops": (_cube(), "Piezoresponse", "a.u.")}, dims=dims))
    np.testing.assert_array_equal(ds["piezoresponse"].values, _cube())
    assert "x" not in ds.coords and "y" not in ds.coords  # generic units: pixels
    np.testing.assert_array_equal(ds["voltage"].values, VOLTS)


@pytest.mark.parametrize("units, factor", [("nm", 1e-9), ("um", 1e-6), ("\u00b5m", 1e-6), ("mm", 1e-3),
                                           ("m", 1.0)])
def test_spatial_units_to_metres(tmp_path, units, factor):
    dims = [("X", X_NM, "distance", units, "SPATIAL"), ("Y", Y_NM, "distance", units, "SPATIAL"), V]
    ds = READER.open(_file(tmp_path, dims=dims))
    np.testing.assert_allclose(ds["x"].values, X_NM * factor)
    np.testing.assert_allclose(ds["y"].values, Y_NM * factor)


@pytest.mark.parametrize("units", ["pixel", "px", "generic", ""])
def test_pixel_units_give_no_xy(tmp_path, units):
    dims = [("X", np.arange(COLS), "x", units, "SPATIAL"), ("Y", np.arange(ROWS), "y", units, "SPATIAL"), V]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = READER.open(_file(tmp_path, dims=dims))
    assert "x" not in ds.coords and "y" not in ds.coords


def test_millivolts_become_volts(tmp_path):
    dims = [X, Y, ("Bias", VOLTS * 1000, "Bias", "mV", "SPECTRAL")]
    ds = READER.open(_file(tmp_path, dims=dims))
    np.testing.assert_allclose(ds["voltage"].values, VOLTS)


def test_several_channel_groups_merge_with_unit_conversions(tmp_path):
    rad = np.deg2rad(_cube(3) % 360)
    channels = {
        "Loops": (_xyv(_cube(0)), "Projected piezoresponse", "a.u."),
        "Amp": (_xyv(_cube(1)), "Amplitude", "V"),
        "Phase": (_xyv(rad), "Phase", "rad"),
        "Freq": (_xyv(_cube(2) + 1.3e6), "Resonance frequency", "Hz"),
        "Q": (_xyv(_cube(4)), "quality_factor", ""),
    }
    ds = READER.open(_file(tmp_path, channels))
    assert list(ds.data_vars) == ["piezoresponse", "amplitude", "phase", "resonance", "quality_factor"]
    np.testing.assert_array_equal(ds["piezoresponse"].values, _cube(0))
    np.testing.assert_array_equal(ds["amplitude"].values, _cube(1))
    assert ds["amplitude"].attrs["units"] == "V"  # the file's own units of a free-unit channel
    np.testing.assert_allclose(ds["phase"].values, _cube(3) % 360)
    assert ds["phase"].attrs["units"] == "deg"
    np.testing.assert_allclose(ds["resonance"].values, (_cube(2) + 1.3e6) / 1e3)
    assert ds["resonance"].attrs["units"] == "kHz"
    np.testing.assert_array_equal(ds["quality_factor"].values, _cube(4))
    for c in ds.data_vars:
        assert ds[c].dims == ("row", "col", "step") and ds[c].dtype == np.float64


@pytest.mark.parametrize("quantity, units, factor", [("Resonance", "kHz", 1.0), ("resonance_frequency", "MHz", 1e3),
                                                     ("Frequency", "Hz", 1e-3), ("FREQUENCY", "khz", 1.0)])
def test_resonance_units_to_khz(tmp_path, quantity, units, factor):
    ds = READER.open(_file(tmp_path, {"w": (_xyv(_cube()), quantity, units)}))
    assert list(ds.data_vars) == ["resonance"]
    np.testing.assert_allclose(ds["resonance"].values, _cube() * factor)


def test_phase_in_degrees_kept(tmp_path):
    ds = READER.open(_file(tmp_path, {"p": (_xyv(_cube()), "Phase", "deg")}))
    np.testing.assert_array_equal(ds["phase"].values, _cube())


def test_cycle_and_field_dims(tmp_path):
    """File order (X, Cycle, Y, Field, Voltage) comes out as (row, col, cycle, field, step)."""
    n_cyc = 2
    ref = np.stack([np.stack([_cube(1000 * c + 500 * k) for k in range(2)], axis=2) for c in range(n_cyc)],
                   axis=2)  # (row, col, cycle, field, step)
    data = ref.transpose(1, 2, 0, 3, 4)  # (X, Cycle, Y, Field, Voltage)
    dims = [X, ("Cycle", np.array([0, 1]), "Cycle", "", "SPECTRAL"), Y,
            ("Field", np.array([b"in-field", b"out-of-field"]), "Field", "", "SPECTRAL"), V]
    ds = READER.open(_file(tmp_path, {"Loops": (data, "Piezoresponse", "a.u.")}, dims=dims))
    da = ds["piezoresponse"]
    assert da.dims == ("row", "col", "cycle", "field", "step")
    np.testing.assert_array_equal(da.values, ref)
    assert list(ds["field"].values) == ["in-field", "out-of-field"]
    assert list(ds["cycle"].values) == [1, 2]  # numbered from 1, as select counts cycles
    assert float(da.sel(field="out-of-field", cycle=2, row=1, col=3, step=4)) == 1000 + 500 + 134


def test_numeric_field_values_one_is_in_field(tmp_path):
    ref = np.stack([_cube(0), _cube(7)], axis=2)  # (row, col, field, step) with field values [0, 1]
    data = ref.transpose(2, 1, 0, 3)  # (Field, X, Y, Voltage)
    dims = [("field", np.array([0, 1]), "field", "", "SPECTRAL"), X, Y, V]
    ds = READER.open(_file(tmp_path, {"Loops": (data, "Piezoresponse", "a.u.")}, dims=dims))
    assert ds["piezoresponse"].dims == ("row", "col", "field", "step")
    assert list(ds["field"].values) == ["out-of-field", "in-field"]
    np.testing.assert_array_equal(ds["piezoresponse"].sel(field="in-field").values, _cube(7))


def test_spectrum_without_spatial_axes_is_one_pixel(tmp_path):
    path = _file(tmp_path, {"s": (VOLTS * 2, "Piezoresponse", "a.u.")}, dims=[V])
    ds = READER.open(path)
    assert ds["piezoresponse"].shape == (1, 1, STEPS)
    np.testing.assert_array_equal(ds["piezoresponse"].values[0, 0], VOLTS * 2)


# -- options ---------------------------------------------------------------------------------------

def test_unknown_quantity_takes_channel_option(tmp_path):
    path = _file(tmp_path, {"w": (_xyv(_cube()), "Contact stiffness", "Hz")})
    assert list(READER.open(path).data_vars) == ["piezoresponse"]
    ds = READER.open(path, channel="resonance")
    np.testing.assert_allclose(ds["resonance"].values, _cube() / 1e3)


def test_channel_option_selects_one(tmp_path):
    path = _file(tmp_path, {"a": (_xyv(_cube(0)), "Piezoresponse", ""), "b": (_xyv(_cube(1)), "Amplitude", "")})
    ds = READER.open(path, channel="amplitude")
    assert list(ds.data_vars) == ["amplitude"]
    np.testing.assert_array_equal(ds["amplitude"].values, _cube(1))
    with pytest.raises(DataError, match=r"channel 'phase' is not in .*has: amplitude, piezoresponse"):
        READER.open(path, channel="phase")


def test_unknown_among_several_warns_and_keys_name_it(tmp_path):
    path = _file(tmp_path, {"a": (_xyv(_cube(0)), "Piezoresponse", ""),
                            "b": (_xyv(_cube(1)), "Topography", "nm")})
    with pytest.warns(DataWarning, match=r"Channel_001/b/b \('Topography'\)"):
        ds = READER.open(path)
    assert list(ds.data_vars) == ["piezoresponse"]
    ds = READER.open(path, keys={"b": "amplitude", "/Measurement_000/Channel_000/a/a": "piezoresponse"})
    np.testing.assert_array_equal(ds["amplitude"].values, _cube(1))
    with pytest.raises(DataError, match="'c' named in keys is not in"):
        READER.open(path, keys={"c": "amplitude"})


def test_voltage_option_and_normalized(tmp_path):
    path = _file(tmp_path)
    ds = READER.open(path, voltage=VOLTS * 2, normalized=True)
    np.testing.assert_array_equal(ds["voltage"].values, VOLTS * 2)
    assert ds["piezoresponse"].attrs["normalized"] == 1 and ds["piezoresponse"].attrs["units"] == "1"


def test_voltage_option_names_the_step_axis_when_the_file_has_none(tmp_path):
    dims = [X, Y, ("a", np.arange(STEPS), "generic", "generic", "UNKNOWN")]
    path = _file(tmp_path, dims=dims)
    with pytest.raises(DataError, match="no voltage axis"):
        READER.open(path)
    ds = READER.open(path, voltage=VOLTS)
    np.testing.assert_array_equal(ds["piezoresponse"].values, _cube())
    np.testing.assert_array_equal(ds["voltage"].values, VOLTS)


# -- bad input -------------------------------------------------------------------------------------

def test_main_without_scales_or_labels(tmp_path):
    path = tmp_path / "bare.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("Channel_000/Loops", data=_cube())
        d.attrs.update({"quantity": "Piezoresponse", "units": "a.u.", "main_data_name": "Loops",
                        "data_type": "SPECTRAL_IMAGE", "pyNSID_version": "0.0.7.2"})
    with pytest.raises(DataError, match="has no dimension scales or labels") as e:
        READER.open(path)
    _one_line(e)


def test_labels_without_scales_need_the_voltage_option(tmp_path):
    path = tmp_path / "labels.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("Channel_000/Loops/Loops", data=_xyv(_cube()))
        d.attrs.update({"quantity": "Piezoresponse", "units": "a.u.", "main_data_name": "Loops",
                        "data_type": "SPECTRAL_IMAGE", "pyNSID_version": "0.0.7.2"})
        for i, label in enumerate(("X", "Y", "Voltage")):
            d.dims[i].label = label
    assert READER.guess_can_open(path)
    with pytest.raises(DataError, match="holds no voltage; pass voltage=") as e:
        READER.open(path)
    _one_line(e)
    ds = READER.open(path, voltage=VOLTS)
    np.testing.assert_array_equal(ds["piezoresponse"].values, _cube())
    assert "x" not in ds.coords


def test_missing_voltage_axis(tmp_path):
    dims = [X, Y, ("Time", np.arange(STEPS) * 0.1, "Time", "s", "TEMPORAL")]
    with pytest.raises(DataError, match=r"no voltage axis \(axes: 'X', 'Y', 'Time'\)") as e:
        READER.open(_file(tmp_path, dims=dims))
    _one_line(e)


def test_extra_spectral_axis_refused(tmp_path):
    data = np.zeros((COLS, ROWS, 5, STEPS))
    dims = [X, Y, ("Frequency", np.linspace(1e6, 2e6, 5), "Frequency", "Hz", "SPECTRAL"), V]
    with pytest.raises(DataError, match=r"axis 'Frequency' \(SPECTRAL, 5 values\) is not a position"):
        READER.open(_file(tmp_path, {"raw": (data, "Piezoresponse", "")}, dims=dims))


def test_mismatched_grids_and_voltages(tmp_path):
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as f:
        _write_nsid(f, "Measurement_000/Channel_000", "a", _xyv(_cube()), [X, Y, V])
        _write_nsid(f, "Measurement_000/Channel_001", "b", _xyv(_cube())[:, :2],
                    [X, ("Y", Y_NM[:2], "distance", "nm", "SPATIAL"), V], quantity="Amplitude")
    with pytest.raises(DataError, match=r"differ in shape .*share one grid and voltage") as e:
        READER.open(path)
    _one_line(e)
    with h5py.File(path, "w") as f:
        _write_nsid(f, "Measurement_000/Channel_000", "a", _xyv(_cube()), [X, Y, V])
        _write_nsid(f, "Measurement_000/Channel_001", "b", _xyv(_cube()),
                    [X, Y, ("Voltage", -VOLTS, "Voltage", "V", "SPECTRAL")], quantity="Amplitude")
    with pytest.raises(DataError, match="differ in voltage"):
        READER.open(path)


def test_nan_voltage(tmp_path):
    bad = VOLTS.copy()
    bad[2] = np.nan
    with pytest.raises(DataError, match="NaN or Inf") as e:
        READER.open(_file(tmp_path, dims=[X, Y, ("Voltage", bad, "Voltage", "V", "SPECTRAL")]))
    _one_line(e)


def test_complex_channel_refused(tmp_path):
    data = _xyv(_cube()) * (1 + 1j)
    with pytest.raises(DataError, match="complex numbers") as e:
        READER.open(_file(tmp_path, {"raw": (data, "Piezoresponse", "")}))
    _one_line(e)


def test_scale_of_wrong_length(tmp_path):
    path = tmp_path / "len.h5"
    with h5py.File(path, "w") as f:
        main = _write_nsid(f, "Channel_000", "a", _xyv(_cube()), [X, Y, V])
        short = main.parent.create_dataset("short", data=VOLTS[:3])
        short.attrs.update({"name": "Voltage", "units": "V", "quantity": "Voltage", "dimension_type": "SPECTRAL"})
        short.make_scale("Voltage")
        main.dims[2].detach_scale(main.parent["Voltage"])
        main.dims[2].attach_scale(short)
    with pytest.raises(DataError, match="has 3 values but its axis has 6"):
        READER.open(path)


def test_voltage_axis_in_wrong_units(tmp_path):
    with pytest.raises(DataError, match="voltage axis 'Voltage' has units 'Hz', not volts"):
        READER.open(_file(tmp_path, dims=[X, Y, ("Voltage", VOLTS, "Voltage", "Hz", "SPECTRAL")]))


def test_phase_in_unknown_units(tmp_path):
    with pytest.raises(DataError, match=r"holds phase in units 'V'; switchscope reads rad or deg"):
        READER.open(_file(tmp_path, {"p": (_xyv(_cube()), "Phase", "V")}))


def test_missing_channel_units_warn(tmp_path):
    with pytest.warns(DataWarning, match="no units for resonance; taken as kHz"):
        ds = READER.open(_file(tmp_path, {"w": (_xyv(_cube()), "Resonance", "generic")}))
    np.testing.assert_array_equal(ds["resonance"].values, _cube())


def test_hostile_attribute_text_is_escaped(tmp_path):
    evil = "Volt\x1b[31mage\nrm -rf\u202e"
    dims = [X, Y, (evil, VOLTS, evil, "Hz", "SPECTRAL")]
    with pytest.raises(DataError) as e:
        READER.open(_file(tmp_path, dims=dims))
    msg = _one_line(e)
    assert "\\x1b" in msg and "\u202e" not in msg
    path = _file(tmp_path, {"a": (_xyv(_cube()), "Piezoresponse", ""), "b": (_xyv(_cube()), evil, "")},
                 name="two.h5")
    with pytest.warns(DataWarning) as rec:
        READER.open(path)
    text = str(rec[0].message)
    assert "\x1b" not in text and "\n" not in text and "\\x1b" in text


def test_duplicate_channel_asks_for_keys(tmp_path):
    path = _file(tmp_path, {"a": (_xyv(_cube()), "Piezoresponse", ""), "b": (_xyv(_cube()), "piezoresponse", "")})
    with pytest.raises(DataError, match=r"several datasets for 'piezoresponse' .*keys="):
        READER.open(path)


def test_damaged_file(tmp_path):
    good = _file(tmp_path)
    cut = tmp_path / "cut.h5"
    cut.write_bytes(good.read_bytes()[:1500])
    assert not READER.guess_can_open(cut)
    with pytest.raises(FormatError, match="HDF5 cannot open it") as e:
        READER.open(cut)
    _one_line(e)


def test_not_nsid_hdf5(tmp_path):
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.zeros(3)
    assert not READER.guess_can_open(path)
    with pytest.raises(DataError, match="holds no NSID main dataset"):
        READER.open(path)


# -- detection -------------------------------------------------------------------------------------

def test_detected_from_content_not_suffix(tmp_path):
    path = _file(tmp_path, name="scan.txt")
    assert READER.guess_can_open(path)
    text = tmp_path / "fake.h5"
    text.write_text("not hdf5")
    assert not READER.guess_can_open(text)
    assert not READER.guess_can_open(tmp_path / "missing.h5")
    assert not READER.guess_can_open(tmp_path)


def test_netcdf_written_by_switchscope_is_not_claimed(tmp_path):
    ds = make_dataset({"piezoresponse": _cube()}, VOLTS, attrs={"quantity": "Piezoresponse"})
    ds["piezoresponse"].attrs["quantity"] = "Piezoresponse"
    ds["piezoresponse"].attrs["data_type"] = "SPECTRAL_IMAGE"
    path = save(ds, tmp_path / "results.nc")
    assert not READER.guess_can_open(path)


def test_matlab_v73_is_not_claimed(tmp_path):
    path = tmp_path / "loops.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        d = f.create_dataset("Loopdata", data=_cube().T)
        d.attrs["MATLAB_class"] = np.bytes_(b"double")
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116, b" "))
    assert not READER.guess_can_open(path)
    # the same content without the MATLAB header but with NSID-like attributes is still MATLAB's
    bare = tmp_path / "bare.h5"
    with h5py.File(bare, "w") as f:
        _write_nsid(f, "Channel_000", "a", _xyv(_cube()), [X, Y, V])
        f["Loopdata"] = _cube()
        f["Loopdata"].attrs["MATLAB_class"] = np.bytes_(b"double")
    assert not READER.guess_can_open(bare)


def test_usid_is_not_claimed(tmp_path):
    """USID main datasets carry ``Position_Indices`` references (pyUSID ``write_main_dataset``)."""
    path = tmp_path / "usid.h5"
    with h5py.File(path, "w") as f:
        _write_nsid(f, "Measurement_000/Channel_000", "a", _xyv(_cube()), [X, Y, V])
        raw = f.create_dataset("Measurement_000/Channel_000/Raw_Data", data=np.zeros((ROWS * COLS, STEPS)))
        pos = f.create_dataset("Measurement_000/Channel_000/Position_Indices", data=np.zeros((ROWS * COLS, 2)))
        raw.attrs.update({"quantity": "Piezoresponse", "units": "a.u.", "Position_Indices": pos.ref})
    assert not READER.guess_can_open(path)
