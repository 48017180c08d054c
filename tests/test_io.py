"""Tests of switchscope.io: format detection, readers, the NetCDF writer, describe."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import xarray as xr

from switchscope import DataError, DataWarning, FormatError, OutputError
from switchscope._errors import ConfigError
from switchscope.io import (
    READERS,
    DataConfig,
    describe,
    find_reader,
    load,
    load_data,
    paper_voltage,
    parse_grid,
    parse_voltage,
    save,
)

CHANNEL_KEYS = {
    "Loopdata": "piezoresponse",
    "OutA2": "amplitude",
    "OutPhi1": "phase",
    "Outw2": "resonance",
    "OutQ2": "quality_factor",
}


def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and msg.strip() == msg
    return msg


def _channels(shape=(3, 4, 10), seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {ch: rng.normal(size=shape) + i for i, ch in enumerate(CHANNEL_KEYS.values())}


def _write_mat73(path: Path, arrays: dict[str, np.ndarray], *, header: bool = True) -> None:
    """A v7.3-like file as MATLAB writes it: a 512-byte header, then HDF5 with each array stored
    column-major (axes reversed) and tagged with MATLAB_class."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, arr in arrays.items():
            d = f.create_dataset(name, data=np.asarray(arr).T)
            d.attrs["MATLAB_class"] = np.bytes_(b"double")
        grp = f.create_group("#refs#")  # MATLAB's reference group: not a variable
        grp.attrs["H5PATH"] = np.bytes_(b"/#refs#")
    if header:
        text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
        with open(path, "r+b") as fh:
            fh.write(text.ljust(116, b" "))


# -- paper's waveform ----------------------------------------------------------------------------

def test_paper_voltage_matches_real_file_and_closed_form(real_raw_loops):
    _, v_file = real_raw_loops
    v = paper_voltage()
    np.testing.assert_allclose(v, v_file, rtol=0, atol=1e-12)
    assert v[0] == 16 and v[48] == -16 and np.argmin(v) == 48
    # closed form for a small cycle: +a down to -a in n/2 equal steps and back
    np.testing.assert_allclose(paper_voltage(8, amplitude=2.0), [2, 1, 0, -1, -2, -1, 0, 1], atol=1e-15)


@pytest.mark.parametrize("bad", [0, 1, 2.5, True])
def test_paper_voltage_rejects_bad_step_counts(bad):
    with pytest.raises(DataError, match="n_steps"):
        paper_voltage(bad)


# -- the paper's MATLAB file ---------------------------------------------------------------------

def test_real_mat_loads(mat_path, real_raw_loops):
    loops, v_file = real_raw_loops
    ds = load(mat_path)
    assert ds["piezoresponse"].dims == ("row", "col", "step")
    assert ds["piezoresponse"].shape == (60, 60, 96)
    np.testing.assert_array_equal(ds["piezoresponse"].values, loops)  # NaNs in the same places
    assert int(np.isnan(ds["piezoresponse"].values).sum()) == 3
    v = ds["voltage"].values
    np.testing.assert_array_equal(v, v_file)
    assert v[0] == 16.0 and v.min() == -16.0 and np.argmin(v) == 48
    assert np.all(np.diff(v[:49]) < 0) and np.all(np.diff(v[48:]) > 0)  # down, then back up
    assert ds.attrs["source"] == mat_path.name and ds.attrs["format"] == "matlab-v5"
    assert ds["voltage"].attrs["units"] == "V"
    assert list(ds.data_vars) == ["piezoresponse"]  # VoltageDC_mixed is not a channel


def test_real_mat_voltage_option_replaces_file_voltage(mat_path):
    ds = load(mat_path, voltage=np.linspace(-1, 1, 96))
    np.testing.assert_array_equal(ds["voltage"].values, np.linspace(-1, 1, 96))


def test_mat_accepts_matching_grid_and_keys(mat_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load(mat_path, grid=(60, 60), keys={"Loopdata_mixed": "piezoresponse",
                                                 "Voltagedata_mixed": "voltage"})
    assert ds["piezoresponse"].shape == (60, 60, 96)
    with pytest.raises(DataError, match="already on a 60x60 grid but grid=36x100"):
        load(mat_path, grid=(36, 100))


def test_option_a_format_does_not_use_warns(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((2, 2, 3)))
    with pytest.warns(DataWarning, match="keys= does not apply to NumPy .npy files; ignored"):
        ds = load(path, voltage="paper", keys={"a": "phase"})
    assert list(ds.data_vars) == ["piezoresponse"]


def test_mat_v5_all_channels_without_suffix(tmp_path):
    chans = _channels((3, 4, 10))
    v = np.linspace(5, -5, 10)
    arrays = {k: chans[c] for k, c in CHANNEL_KEYS.items()}
    path = tmp_path / "scan.mat"
    scipy.io.savemat(path, {**arrays, "Voltagedata": v[:, None], "notes": np.array(["x"])})
    ds = load(path)
    assert ds.attrs["format"] == "matlab-v5"
    for c, arr in chans.items():
        np.testing.assert_array_equal(ds[c].values, arr)  # non-square grid: catches transposes
    assert ds["resonance"].attrs["units"] == "kHz"
    np.testing.assert_array_equal(ds["voltage"].values, v)
    only = load(path, channel="phase")
    assert list(only.data_vars) == ["phase"]


def test_mat_keys_mapping_and_conflicts(tmp_path):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 3, 6)), rng.normal(size=(2, 3, 6))
    path = tmp_path / "two.mat"
    scipy.io.savemat(path, {"Loopdata_mixed": a, "Loopdata": b, "V": np.arange(6.0)})
    with pytest.raises(DataError, match="several variables for 'piezoresponse'") as e:
        load(path)
    assert "two.mat" in _one_line(e)
    ds = load(path, keys={"Loopdata": "piezoresponse", "Loopdata_mixed": "amplitude", "V": "voltage"})
    np.testing.assert_array_equal(ds["piezoresponse"].values, b)
    np.testing.assert_array_equal(ds["amplitude"].values, a)
    with pytest.raises(DataError, match="'missing' named in keys is not in 'two.mat'"):
        load(path, keys={"missing": "piezoresponse"})
    with pytest.raises(DataError, match="unknown channel 'loops'"):
        load(path, keys={"V": "loops"})


def test_mat73_loads_transposed_arrays(tmp_path):
    chans = _channels((3, 4, 10), seed=2)
    v = paper_voltage(10)
    arrays = {f"{k}_mixed": chans[c] for k, c in CHANNEL_KEYS.items()}
    path = tmp_path / "scan73.mat"
    _write_mat73(path, {**arrays, "Voltagedata_mixed": v[:, None]})
    assert open(path, "rb").read(512)[:19] == b"MATLAB 7.3 MAT-file"
    ds = load(path)
    assert ds.attrs["format"] == "matlab-v7.3"
    for c, arr in chans.items():
        assert ds[c].shape == (3, 4, 10)
        np.testing.assert_array_equal(ds[c].values, arr)
    np.testing.assert_array_equal(ds["voltage"].values, v)


def test_mat73_detected_from_matlab_class_without_header(tmp_path):
    x = np.random.default_rng(3).normal(size=(2, 5, 4))
    path = tmp_path / "data.h5"
    _write_mat73(path, {"Loopdata": x, "Voltagedata": np.arange(4.0)}, header=False)
    assert find_reader(path).name == "matlab-v7.3"
    np.testing.assert_array_equal(load(path)["piezoresponse"].values, x)


# -- NumPy files ---------------------------------------------------------------------------------

def test_real_resonance_npy(resonance_path, real_resonance):
    ds = load(resonance_path, channel="resonance", grid=(60, 60), voltage="paper", normalized=True)
    assert ds["resonance"].shape == (60, 60, 96)
    assert ds["resonance"].attrs["normalized"] == 1
    assert ds.attrs["format"] == "npy"
    # independent reference: pixel p sits at row p // 60, col p % 60 (row-major)
    for p in (0, 1, 59, 60, 1234, 3599):
        np.testing.assert_array_equal(ds["resonance"].values[p // 60, p % 60], real_resonance[p])
    np.testing.assert_allclose(ds["voltage"].values, paper_voltage(96))
    assert abs(float(ds["resonance"].mean())) < 1e-6  # it is the normalized file


@pytest.mark.parametrize("grid", [(2, 6), (6, 2), (3, 4), (1, 12)])
def test_npy_2d_grid_placement_against_loop(tmp_path, grid):
    x = np.random.default_rng(4).normal(size=(12, 7))
    path = tmp_path / "x.npy"
    np.save(path, x)
    ds = load(path, grid=grid, voltage=np.arange(7.0))
    for r in range(grid[0]):
        for c in range(grid[1]):
            np.testing.assert_array_equal(ds["piezoresponse"].values[r, c], x[r * grid[1] + c])


def test_npy_3d_and_int_dtype(tmp_path):
    x = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    path = tmp_path / "ints.npy"
    np.save(path, x)
    ds = load(path, voltage=[1, 2, 3, 4], channel="quality_factor")
    assert ds["quality_factor"].dtype == float
    np.testing.assert_array_equal(ds["quality_factor"].values, x)
    assert ds["quality_factor"].attrs["units"] == "1"


def test_npz_channels_voltage_and_selection(tmp_path):
    chans = _channels((4, 3, 5), seed=5)
    v = np.linspace(1, -1, 5)
    path = tmp_path / "scan.npz"
    np.savez(path, voltage=v, **chans)
    ds = load(path)
    assert ds.attrs["format"] == "npz"
    for c, arr in chans.items():
        np.testing.assert_array_equal(ds[c].values, arr)
    np.testing.assert_array_equal(ds["voltage"].values, v)
    assert list(load(path, channel="resonance").data_vars) == ["resonance"]


def test_npz_single_unnamed_array_and_keys(tmp_path):
    x = np.random.default_rng(6).normal(size=(6, 5))
    path = tmp_path / "one.npz"
    np.savez(path, loops=x)
    ds = load(path, grid=(2, 3), voltage="paper", channel="amplitude")
    np.testing.assert_array_equal(ds["amplitude"].values.reshape(6, 5), x)
    ds2 = load(path, grid=(3, 2), voltage="paper", keys={"loops": "phase"})
    np.testing.assert_array_equal(ds2["phase"].values[2, 1], x[5])


def test_detection_uses_content_not_suffix(tmp_path, mat_path):
    x = np.random.default_rng(7).normal(size=(2, 2, 3))
    npy_as_mat = tmp_path / "really_numpy.mat"
    with open(npy_as_mat, "wb") as fh:
        np.save(fh, x)
    assert find_reader(npy_as_mat).name == "npy"
    np.testing.assert_array_equal(load(npy_as_mat, voltage=[0, 1, 2])["piezoresponse"].values, x)
    nc_as_mat = tmp_path / "results.mat"
    save(load(mat_path), nc_as_mat)
    assert find_reader(nc_as_mat).name == "netcdf"
    # every fixture is claimed by exactly one reader
    for path in (npy_as_mat, nc_as_mat, mat_path):
        assert sum(r.guess_can_open(path) for r in READERS) == 1


# -- bad input -----------------------------------------------------------------------------------

def _raises(exc, path, match, **options):
    with pytest.raises(exc, match=match) as e:
        load(path, **options)
    msg = _one_line(e)
    assert Path(path).name in msg
    return msg


def test_missing_directory_empty(tmp_path):
    _raises(DataError, tmp_path / "nope.mat", "does not exist")
    _raises(DataError, tmp_path, "is a folder")
    empty = tmp_path / "empty.mat"
    empty.write_bytes(b"")
    _raises(FormatError, empty, "is empty")


@pytest.mark.parametrize("cut", [100, 128, 300, 5000, 1_000_000])
def test_truncated_real_mat(tmp_path, mat_path, cut):
    path = tmp_path / "cut.mat"
    path.write_bytes(mat_path.read_bytes()[:cut])
    _raises(FormatError, path, "truncated")


def test_corrupt_hdf5(tmp_path):
    path = tmp_path / "bad.nc"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 8)
    _raises(FormatError, path, "HDF5 file that cannot be opened")


def test_foreign_hdf5_and_zip(tmp_path):
    h5 = tmp_path / "other.h5"
    with h5py.File(h5, "w") as f:
        f["x"] = np.arange(3)
    msg = _raises(FormatError, h5, "neither a MATLAB v7.3 file, a NetCDF file written by switchscope, a USID file")
    assert "NumPy .npz" in msg
    import zipfile

    z = tmp_path / "a.npz"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("readme.txt", "hello")
    _raises(FormatError, z, "zip archive but not a NumPy .npz")


def test_text_renamed_mat_lists_formats(tmp_path):
    path = tmp_path / "notes.mat"
    path.write_text("row,col,value\n1,2,3\n")
    msg = _raises(FormatError, path, "not in a format switchscope reads")
    assert "ends in .mat" in msg
    for r in READERS:
        assert r.description in msg


def test_npy_shape_grid_voltage_channel_errors(tmp_path):
    path = tmp_path / "flat.npy"
    np.save(path, np.zeros((12, 5)))
    _raises(DataError, path, r"no grid; pass grid=\(rows, cols\) \(--grid ROWSxCOLS\)", voltage="paper")
    _raises(DataError, path, "grid 5x5 has 25 pixels but 'flat.npy' has 12", grid=(5, 5), voltage="paper")
    _raises(DataError, path, "voltage has 4 values but the data has 5 steps", grid=(3, 4), voltage=[1, 2, 3, 4])
    _raises(DataError, path, "NaN or Inf", grid=(3, 4), voltage=[1, 2, np.nan, 4, 5])
    _raises(DataError, path, "holds no voltage", grid=(3, 4))
    with pytest.raises(DataError, match="unknown channel 'piezo'") as e:
        load(path, grid=(3, 4), voltage="paper", channel="piezo")
    _one_line(e)
    with pytest.raises(DataError, match="grid must be two positive integers"):
        load(path, grid=(0, 12), voltage="paper")
    cube = tmp_path / "cube.npy"
    np.save(cube, np.zeros((3, 4, 5)))
    _raises(DataError, cube, "already on a 3x4 grid", grid=(4, 3), voltage="paper")
    vec = tmp_path / "vec.npy"
    np.save(vec, np.zeros(5))
    _raises(DataError, vec, "expected \\(rows, cols, steps\\)", voltage="paper")
    text = tmp_path / "text.npy"
    np.save(text, np.array([["a", "b"]]))
    _raises(DataError, text, "dtype <U1", voltage="paper", grid=(1, 1))


def test_object_npy_refused_without_unpickling(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    _raises(DataError, path, "Python objects \\(pickle\\)", voltage="paper")
    npz = tmp_path / "objects.npz"
    np.savez(npz, piezoresponse=np.array([[1, None]], dtype=object), voltage=np.arange(2.0))
    _raises(DataError, npz, "pickle", grid=(1, 1))


def test_truncated_npy(tmp_path):
    full = tmp_path / "full.npy"
    np.save(full, np.zeros((10, 10, 10)))
    cut = tmp_path / "cut.npy"
    cut.write_bytes(full.read_bytes()[:500])
    _raises(FormatError, cut, "it is truncated", voltage="paper")


def test_mat_without_channel_or_voltage(tmp_path):
    path = tmp_path / "none.mat"
    scipy.io.savemat(path, {"a": np.zeros((2, 2, 3)), "b": np.zeros(3)})
    _raises(DataError, path, "holds no channel switchscope recognises \\(has: a, b\\)")
    path2 = tmp_path / "novolt.mat"
    scipy.io.savemat(path2, {"Loopdata": np.zeros((2, 2, 3))})
    _raises(DataError, path2, "holds no voltage; pass voltage=")
    assert load(path2, voltage="paper")["voltage"].size == 3


# -- NetCDF round trip and the writer --------------------------------------------------------------

def _rich_dataset() -> xr.Dataset:
    rng = np.random.default_rng(8)
    x = rng.normal(size=(3, 4, 6))
    x[0, 0, 0] = np.nan
    x[1, 2, 3] = np.inf
    ds = xr.Dataset(
        {
            "piezoresponse": (("row", "col", "step"), x, {"units": "a.u.", "normalized": 1}),
            "loop_converged": (("row", "col"), rng.random((3, 4)) > 0.5),
            "cluster_kmeans_pca": (("row", "col"), rng.integers(0, 5, (3, 4))),
            "embedding_history_piezoresponse": (("checkpoint", "row", "col", "neuron"),
                                                rng.random((2, 3, 4, 5)).astype(np.float32)),
        },
        coords={
            "row": np.arange(3), "col": np.arange(4), "step": np.arange(6),
            "voltage": ("step", paper_voltage(6), {"units": "V"}),
            "checkpoint_epoch": ("checkpoint", np.array([3, 17])),
        },
        attrs={
            "source": "scan.mat", "format": "matlab-v5", "int": 3, "float": 0.25, "empty": "",
            "flag": True, "nothing": None, "params": {"lr": 3e-5, "layers": [64, 64], "ok": False},
            "pair": [1, "a"], "one": np.array([2.5]), "mask": np.array([True, False]),
            "vec": np.array([1.0, 2.0, 3.0]),
        },
    )
    ds["piezoresponse"].attrs["fit_ok"] = np.bool_(True)
    return ds


def test_netcdf_round_trip_exact(tmp_path):
    ds = _rich_dataset()
    before = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in ds.attrs.items()}
    path = save(ds, tmp_path / "results.nc")
    back = load(path)
    xr.testing.assert_identical(back, ds)
    assert back["loop_converged"].dtype == bool
    assert back["embedding_history_piezoresponse"].dtype == np.float32
    assert back.attrs["flag"] is True and back.attrs["nothing"] is None
    assert back.attrs["params"] == {"lr": 3e-5, "layers": [64, 64], "ok": False}
    assert back["piezoresponse"].attrs["fit_ok"] is True
    assert back.attrs["mask"].dtype == bool and back.attrs["one"].shape == (1,)
    assert "switchscope_json_attrs" not in back.attrs
    # the caller's dataset is not touched by the attribute encoding
    assert ds.attrs["flag"] is True and ds.attrs.keys() == before.keys()
    assert "switchscope_json_attrs" not in ds.attrs


def test_netcdf_round_trip_real(tmp_path, mat_path):
    ds = load(mat_path)
    back = load(save(ds, tmp_path / "r.nc"))
    xr.testing.assert_identical(back, ds)
    assert back.attrs["format"] == "matlab-v5"  # provenance survives the round trip


def test_save_refuses_to_overwrite_and_bad_targets(tmp_path):
    ds = _rich_dataset()
    path = tmp_path / "out.nc"
    save(ds, path)
    with pytest.raises(OutputError, match="already exists; pass overwrite=True \\(--force\\)"):
        save(ds, path)
    ds2 = ds.assign(piezoresponse=ds["piezoresponse"] * 2)
    save(ds2, path, overwrite=True)
    np.testing.assert_array_equal(load(path)["piezoresponse"].values, ds2["piezoresponse"].values)
    with pytest.raises(OutputError, match="is a folder"):
        save(ds, tmp_path)
    with pytest.raises(OutputError, match="does not exist; create it"):
        save(ds, tmp_path / "no" / "out.nc")
    with pytest.raises(DataError, match="needs an xarray.Dataset"):
        save(np.zeros(3), tmp_path / "x.nc")


def test_save_failure_keeps_existing_file(tmp_path, monkeypatch):
    ds = _rich_dataset()
    path = tmp_path / "keep.nc"
    save(ds, path)
    original = path.read_bytes()

    def half_write(self, target, *args, **kwargs):
        Path(target).write_bytes(b"\x89HDF\r\n\x1a\n partial")
        raise OSError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", half_write)
    with pytest.raises(OutputError, match="cannot write .*disk full"):
        save(ds, path, overwrite=True)
    monkeypatch.undo()
    assert path.read_bytes() == original
    assert sorted(os.listdir(tmp_path)) == ["keep.nc"]  # no temporary left behind
    bad = ds.assign_attrs(handle=object())
    with pytest.raises(DataError, match="'handle' of the dataset holds a object"):
        save(bad, path, overwrite=True)
    assert path.read_bytes() == original and sorted(os.listdir(tmp_path)) == ["keep.nc"]


def test_netcdf_without_grid_dims(tmp_path):
    path = tmp_path / "plain.nc"
    xr.Dataset({"x": ("t", np.arange(3.0))}).to_netcdf(path, engine="h5netcdf")
    _raises(DataError, path, "needs row, col, step")


def test_netcdf_normalized_option(tmp_path, mat_path):
    path = save(load(mat_path), tmp_path / "n.nc")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load(path, normalized=True)
    assert ds["piezoresponse"].attrs["normalized"] == 1
    with pytest.warns(DataWarning, match="channel= does not apply"):
        load(path, channel="piezoresponse")


# -- describe and config -----------------------------------------------------------------------------

def test_describe_real_mat(mat_path, real_raw_loops):
    loops, _ = real_raw_loops
    text = describe(load(mat_path))
    assert "piezoresponse (60, 60, 96)" in text
    assert "NaN 3  Inf 0" in text
    assert "voltage: -16..16 V, 96 steps" in text
    assert f"min {np.nanmin(loops):.6g}  max {np.nanmax(loops):.6g}" in text
    assert text.splitlines()[0] == f"source: {mat_path.name} (matlab-v5)"


def test_describe_counts_inf_and_lists_results_and_attrs():
    text = describe(_rich_dataset())
    line = next(s for s in text.splitlines() if s.strip().startswith("piezoresponse"))
    x = _rich_dataset()["piezoresponse"].values
    finite = x[np.isfinite(x)]
    assert "NaN 1  Inf 1" in line and f"max {finite.max():.6g}" in line
    assert "cluster_kmeans_pca (3, 4)" in text and "loop_converged" in text
    assert "flag: True" in text


def test_parse_grid_voltage_and_data_config(tmp_path, resonance_path, real_resonance):
    assert parse_grid("60x60") == (60, 60) and parse_grid([3, 4]) == (3, 4)
    for bad in ("60", "axb", [1, 2, 3], "0x5"):
        with pytest.raises(ConfigError):
            parse_grid(bad)
    assert parse_voltage("paper") == "paper"
    np.testing.assert_array_equal(parse_voltage("1,2.5,-3"), [1, 2.5, -3])
    vfile = tmp_path / "v.txt"
    np.savetxt(vfile, paper_voltage(96))
    np.testing.assert_allclose(parse_voltage(str(vfile)), paper_voltage(96))
    cfg = DataConfig.from_dict({"path": str(resonance_path), "channel": "resonance", "grid": [60, 60],
                                "voltage": "paper", "normalized": True})
    ds = load_data(cfg)
    np.testing.assert_array_equal(ds["resonance"].values.reshape(3600, 96), real_resonance)
    with pytest.raises(ConfigError, match=r"\[data\] channel must be one of"):
        DataConfig(channel="loops")
    with pytest.raises(ConfigError, match="grid"):
        DataConfig(grid="sixty")
