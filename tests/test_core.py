"""The data model, the grid helpers and the stage configuration base."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import xarray as xr
from hypothesis import given
from hypothesis import strategies as st

from switchscope import ConfigError, DataError, StageConfig, flatten, make_dataset, unflatten
from switchscope.stages import configs_from_mapping, load_config, register


@given(rows=st.integers(1, 7), cols=st.integers(1, 7), steps=st.integers(1, 9))
def test_flatten_unflatten_round_trip(rows, cols, steps):
    arr = np.arange(rows * cols * steps, dtype=float).reshape(rows, cols, steps)
    X, grid = flatten(arr)
    assert X.shape == (rows * cols, steps) and grid == (rows, cols)
    # row-major: pixel k is (k // cols, k % cols)
    k = rows * cols - 1
    np.testing.assert_array_equal(X[k], arr[k // cols, k % cols])
    np.testing.assert_array_equal(unflatten(X, grid), arr)


def test_flatten_dataset_and_dataarray_agree():
    rng = np.random.default_rng(0)
    ds = make_dataset({"piezoresponse": rng.normal(size=(3, 4, 5))}, np.linspace(1, -1, 5))
    X1, g1 = flatten(ds, "piezoresponse")
    X2, g2 = flatten(ds["piezoresponse"])
    np.testing.assert_array_equal(X1, X2)
    assert g1 == g2 == (3, 4)
    X3, g3 = flatten(X1)
    assert g3 is None and X3 is X1


def test_flatten_errors():
    ds = make_dataset({"piezoresponse": np.zeros((2, 2, 3))}, [1, 0, -1])
    with pytest.raises(DataError, match="channel"):
        flatten(ds)
    with pytest.raises(DataError, match="'phase' is not in the data"):
        flatten(ds, "phase")
    with pytest.raises(DataError, match=r"shape \(4,\)"):
        flatten(np.zeros(4))
    with pytest.raises(DataError, match="5 pixels on a 2x2 grid"):
        unflatten(np.zeros((5, 3)), (2, 2))


def test_make_dataset_model():
    v = np.r_[np.linspace(16, -16, 49), np.linspace(-15, 15, 46)]
    ds = make_dataset({"piezoresponse": np.zeros((2, 3, v.size)), "resonance": np.ones((2, 3, v.size))}, v)
    assert ds["piezoresponse"].dims == ("row", "col", "step")
    assert ds["resonance"].attrs["units"] == "kHz"
    assert ds["voltage"].attrs["units"] == "V"
    np.testing.assert_array_equal(ds["voltage"].values, v)


@pytest.mark.parametrize("channels, voltage, match", [
    ({"polarisation": np.zeros((2, 2, 3))}, [0, 1, 2], "unknown channel 'polarisation'"),
    ({"piezoresponse": np.zeros((2, 3))}, [0, 1, 2], "expected \\(rows, cols, steps\\)"),
    ({"piezoresponse": np.zeros((2, 2, 3))}, [0, 1], "2 values but the data has 3 steps"),
    ({"piezoresponse": np.zeros((2, 2, 3))}, [0, np.nan, 1], "NaN or Inf"),
    ({"piezoresponse": np.zeros((2, 2, 3)), "phase": np.zeros((2, 1, 3))}, [0, 1, 2], "share one grid"),
    ({}, [], "no channel"),
])
def test_make_dataset_errors(channels, voltage, match):
    with pytest.raises(DataError, match=match):
        make_dataset(channels, voltage)


@register("_toy")
@dataclasses.dataclass(frozen=True, kw_only=True)
class ToyConfig(StageConfig):
    window: int = 7
    method: str = "a"
    presets = {"paper": {"window": 9}}

    def validate(self) -> None:
        self.check_number("window", lo=3, integer=True, odd=True)
        self.check_choice("method", ("a", "b"))


def test_config_validation_messages():
    assert ToyConfig().window == 7
    with pytest.raises(ConfigError, match=r"\[_toy\] window must be an odd integer >= 3, got 6"):
        ToyConfig(window=6)
    with pytest.raises(ConfigError, match=r"\[_toy\] window must be .*, got -7"):
        ToyConfig(window=-7)
    with pytest.raises(ConfigError, match=r"\[_toy\] method must be one of 'a', 'b', got 'c'"):
        ToyConfig(method="c")
    with pytest.raises(ConfigError, match="got True"):
        ToyConfig(window=True)


def test_config_presets_and_mapping(tmp_path):
    assert ToyConfig.preset("paper").window == 9
    assert ToyConfig.preset("paper", window=11).window == 11
    with pytest.raises(ConfigError, match="unknown preset 'fast'.*paper"):
        ToyConfig.preset("fast")
    with pytest.raises(ConfigError, match="unknown option.*windw.*valid options are: window, method"):
        ToyConfig.from_dict({"windw": 3})
    path = tmp_path / "run.toml"
    path.write_text('[_toy]\nwindow = 5\nmethod = "b"\n')
    cfg = load_config(path)["_toy"]
    assert (cfg.window, cfg.method) == (5, "b")
    with pytest.raises(ConfigError, match=r"unknown config section \[nope\]"):
        configs_from_mapping({"nope": {}})
    bad = tmp_path / "bad.toml"
    bad.write_text("[_toy\nwindow=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_dataset_is_xarray():
    ds = make_dataset({"phase": np.zeros((1, 1, 2))}, [0.0, 1.0])
    assert isinstance(ds, xr.Dataset) and ds["phase"].attrs["units"] == "deg"


# -- threads, dtypes and devices without importing torch (switchscope._device) -------------------
def test_thread_contexts_set_and_restore():
    import numba
    import torch

    from switchscope._device import cpu_threads, numba_threads, torch_threads

    n_before, t_before = numba.get_num_threads(), torch.get_num_threads()
    with numba_threads(1):
        assert numba.get_num_threads() == 1
    with numba_threads():  # torch is loaded here: its setting is the default
        assert numba.get_num_threads() == min(cpu_threads(), numba.config.NUMBA_NUM_THREADS)
    with pytest.raises(RuntimeError), torch_threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError("restored even on an error")
    assert (numba.get_num_threads(), torch.get_num_threads()) == (n_before, t_before)


@pytest.mark.parametrize("given, name", [("float64", "float64"), ("float32", "float32"),
                                         (np.float32, "float32"), (np.dtype("float64"), "float64")])
def test_float_dtype_accepts_names_and_numpy(given, name):
    import torch

    from switchscope._device import float_dtype

    assert float_dtype(given, "f") == name
    assert float_dtype(getattr(torch, name), "f") == name


@pytest.mark.parametrize("bad", ["float16", "int64", np.int32, None, "torch.float32x"])
def test_float_dtype_refuses_others(bad):
    from switchscope._device import float_dtype

    with pytest.raises(ConfigError, match="dtype must be float32 or float64"):
        float_dtype(bad, "f")
