"""Tests of switchscope.preprocess: the paper's cleaning against a slow per-pixel reference."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import xarray as xr
from scipy.signal import savgol_filter

from switchscope.stages import STAGE_CONFIGS, configs_from_mapping
from switchscope.stages import RunContext
from switchscope._dataset import make_dataset
from switchscope._errors import ConfigError, DataError, DataWarning
from switchscope.preprocess import (
    CleanConfig,
    NormStats,
    clean,
    denormalize,
    interpolate_nans,
    normalize,
    remove_outliers,
    stage,
)


# ------------------------------------------------------------------------------------------------
# independent reference: one pixel at a time, np.interp and scipy's savgol_filter on 1-D curves
# ------------------------------------------------------------------------------------------------
def ref_interp(y):
    y = np.array(y, dtype=float)
    bad = np.isnan(y)
    if bad.any():
        x = np.arange(y.size)
        y[bad] = np.interp(x[bad], x[~bad], y[~bad])
    return y


def ref_clean(X, window=7, order=3, n_points=3, value_range=None):
    X = np.array(X, dtype=float)
    out = np.empty_like(X)
    for i in range(X.shape[0]):
        y = X[i].copy()
        y[~np.isfinite(y)] = np.nan
        if value_range is not None:
            with np.errstate(invalid="ignore"):
                y[(y < value_range[0]) | (y > value_range[1])] = np.nan
        y = ref_interp(y)
        if n_points:
            dist = np.abs(y - savgol_filter(y, window, order))
            far = np.argsort(dist, kind="stable")[-n_points:]
            y[far] = np.nan
            y = ref_interp(y)
        out[i] = y
    return out


def smooth_curves(n, n_steps=96, seed=0):
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi, n_steps)
    return (np.sin(t)[None] * rng.uniform(0.5, 2, (n, 1)) + rng.normal(0, 0.01, (n, n_steps))
            + np.cos(2 * t)[None] * rng.uniform(-1, 1, (n, 1)))


# ------------------------------------------------------------------------------------------------
# interpolation
# ------------------------------------------------------------------------------------------------
def test_interpolate_edges_and_runs_match_np_interp():
    X = smooth_curves(6, 20)
    X[0, 0] = np.nan                      # NaN first point
    X[1, -1] = np.nan                     # NaN last point
    X[2, [0, 1, 2]] = np.nan              # several leading NaNs
    X[3, 5:11] = np.nan                   # a run inside
    X[4, [0, 7, 8, 19]] = np.nan          # everything at once
    got = interpolate_nans(X)
    want = np.array([ref_interp(r) for r in X])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-15)
    # the paper's rule: a NaN first point copies the second
    assert got[0, 0] == X[0, 1]
    assert got[2, 0] == got[2, 1] == got[2, 2] == X[2, 3]
    assert got[1, -1] == X[1, -2]
    # a run is a straight line between its neighbours
    np.testing.assert_allclose(got[3, 5:11], np.linspace(X[3, 4], X[3, 11], 8)[1:-1], atol=1e-14)
    assert np.isnan(X).sum() == 1 + 1 + 3 + 6 + 4, "input must not be modified"


def test_interpolate_single_finite_value_gives_constant():
    X = np.full((2, 9), np.nan)
    X[0, 4] = 2.5
    X[1] = np.arange(9.0)
    got = interpolate_nans(X)
    assert np.all(got[0] == 2.5)
    np.testing.assert_array_equal(got[1], np.arange(9.0))


def test_interpolate_empty_pixel_and_inf_raise():
    X = smooth_curves(5, 12)
    X[3] = np.nan
    with pytest.raises(DataError, match=r"1 pixel\(s\) have no finite value \(first at pixel 3\)"):
        interpolate_nans(X)
    X[3] = 0.0
    X[1, 2] = np.inf
    with pytest.raises(DataError, match="1 Inf value"):
        interpolate_nans(X)


# ------------------------------------------------------------------------------------------------
# outlier removal
# ------------------------------------------------------------------------------------------------
def test_remove_outliers_replaces_spikes_and_matches_reference():
    X = smooth_curves(50, 96, seed=1)
    rng = np.random.default_rng(2)
    # one spike in each third of the curve, so no two share a filter window
    spikes = np.stack([rng.integers(3, 29, 3) + [0, 32, 64] for _ in range(50)])
    for i, s in enumerate(spikes):
        # similar heights: a spike h pulls the 7/3 fit at its neighbours by 6h/21, which must stay
        # below the 14h'/21 residual of the smallest spike h' for it to be found (paper's method)
        X[i, s] += rng.choice([-1, 1], 3) * rng.uniform(3, 4, 3)
    got = remove_outliers(X, 7, 3, 3)
    np.testing.assert_allclose(got, ref_clean(X, 7, 3, 3), rtol=1e-12, atol=1e-12)
    # every spike was found: the cleaned curve is back near the smooth one at the spike positions
    for i, s in enumerate(spikes):
        assert np.all(np.abs(got[i, s] - X[i, s]) > 1.0)
    # exactly 3 points per curve changed
    assert np.all((got != X).sum(axis=1) == 3)


def test_remove_outliers_other_window_and_zero_points():
    X = smooth_curves(10, 40, seed=3)
    np.testing.assert_allclose(remove_outliers(X, 11, 2, 5), ref_clean(X, 11, 2, 5), rtol=1e-12,
                               atol=1e-12)
    np.testing.assert_array_equal(remove_outliers(X, 7, 3, 0), X)


def test_remove_outliers_needs_finite_curves():
    X = smooth_curves(3, 20)
    X[0, 3] = np.nan
    with pytest.raises(DataError, match="call interpolate_nans first"):
        remove_outliers(X)


@pytest.mark.parametrize("kwargs, match", [
    ({"window": 6}, "window must be an odd integer >= 3, got 6"),
    ({"window": -7}, "window must be an odd integer >= 3, got -7"),
    ({"window": 1, "order": 0}, "window must be an odd integer >= 3, got 1"),
    ({"order": 7}, r"order must be an integer >= 0 and < window \(7\), got 7"),
    ({"n_points": -1}, "n_points must be an integer >= 0, got -1"),
    ({"window": 7.0}, "window must be an integer, got 7.0"),
])
def test_remove_outliers_bad_options(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        remove_outliers(smooth_curves(2, 20), **kwargs)


def test_remove_outliers_window_longer_than_curve():
    with pytest.raises(DataError, match="fewer than the Savitzky-Golay window"):
        remove_outliers(smooth_curves(2, 5), window=7)


# ------------------------------------------------------------------------------------------------
# the whole recipe on the real data
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_ref(real_raw_loops):
    """The per-pixel reference cleaning of the 3600 real loops (computed once: ~1.5 s)."""
    loops, _ = real_raw_loops
    return ref_clean(loops.reshape(-1, loops.shape[-1]))


def test_clean_real_loops_matches_per_pixel_reference(real_raw_loops, real_ref):
    loops, _ = real_raw_loops
    X = loops.reshape(-1, loops.shape[-1])
    assert np.isnan(X).sum() == 3  # the known NaNs: (2, 29, 0), (2, 31, 0), (2, 31, 1)
    got = clean(X)
    want = real_ref
    scale = np.abs(want).max()
    np.testing.assert_allclose(got / scale, want / scale, rtol=0, atol=1e-10)
    assert np.isfinite(got).all()
    # 3 points per loop replaced, everything else untouched
    changed = ~np.isclose(got, X, rtol=0, atol=0) | np.isnan(X)
    assert np.all(changed.sum(axis=1) >= 3)
    assert np.all(changed.sum(axis=1) <= 3 + np.isnan(X).sum(axis=1))
    # the 3-D grid gives the same curves on the grid
    np.testing.assert_array_equal(clean(loops), got.reshape(loops.shape))


def test_clean_real_dataset_attrs_and_normalization(real_raw_loops, real_ref):
    loops, voltage = real_raw_loops
    ds = make_dataset({"piezoresponse": loops}, voltage)
    out = clean(ds)
    assert "piezoresponse_clean" not in ds and "piezoresponse" in out
    da = out["piezoresponse_clean"]
    assert da.dims == ("row", "col", "step")
    np.testing.assert_array_equal(da.values.reshape(3600, 96), clean(loops.reshape(3600, 96)))
    np.testing.assert_array_equal(out["piezoresponse"].values, ds["piezoresponse"].values)
    assert da.attrs["n_nonfinite"] == 3
    assert da.attrs["n_out_of_range"] == 0
    assert da.attrs["n_outliers"] == 3 * 3600
    assert da.attrs["units"] == "a.u."
    ref = real_ref
    assert da.attrs["norm_mean"] == pytest.approx(ref.mean(), rel=1e-9)
    assert da.attrs["norm_std"] == pytest.approx(ref.std(), rel=1e-9)
    # raw loops are ~1e-4 in their physical units: the cleaned ones are not normalized
    assert np.abs(da.values).max() < 1e-3


def test_real_resonance_is_not_range_filtered_when_normalized(real_resonance):
    # Already cleaned and normalized by the paper: with normalized=1 no value is out of range,
    # and cleaning it again barely moves it (3 points per loop re-interpolated).
    res = real_resonance.reshape(60, 60, 96)
    ds = make_dataset({"resonance": res}, np.arange(96.0),
                      channel_attrs={"resonance": {"normalized": 1}})
    da = clean(ds)["resonance_clean"]
    assert da.attrs["n_out_of_range"] == 0
    np.testing.assert_allclose(da.values.reshape(3600, 96), ref_clean(real_resonance), rtol=0,
                               atol=1e-10)
    # without the mark, the range derived from the data leaves every value in place...
    ds2 = make_dataset({"resonance": res}, np.arange(96.0))
    assert clean(ds2)["resonance_clean"].attrs["n_out_of_range"] == 0
    # ...and the paper's 1300-1340 kHz finds nothing in range and says what to do
    with pytest.raises(DataError, match="no value lies in the valid range 1300.0-1340.0 kHz"):
        clean(ds2, CleanConfig.preset("paper"))


# ------------------------------------------------------------------------------------------------
# range filter, Inf, bad pixels
# ------------------------------------------------------------------------------------------------
def test_resonance_range_filter_matches_reference():
    X = 1320 + 10 * smooth_curves(20, 96, seed=4) / 3
    X[0, 10] = 1250.0     # out of range low
    X[1, 50] = 1400.0     # out of range high
    X[2, 0] = 1500.0      # out of range at the first point
    X[3, [20, 21, 22]] = 0.0
    got = clean(X, CleanConfig.preset("paper"), channel="resonance")
    want = ref_clean(X, value_range=(1300, 1340))
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-10)
    assert got.min() >= 1300 - 1e-9 and got.max() <= 1340 + 1e-9
    # the other channels (and channel=None) have no range filter
    assert clean(X, channel="amplitude").min() < 1300
    np.testing.assert_allclose(clean(X), ref_clean(X), rtol=1e-13, atol=1e-10)
    # the counts in a Dataset
    ds = make_dataset({"resonance": X.reshape(4, 5, 96)}, np.arange(96.0))
    a = clean(ds, CleanConfig.preset("paper"))["resonance_clean"].attrs
    assert (a["n_out_of_range"], a["n_nonfinite"]) == (6, 0)
    assert a["resonance_range_khz"] == [1300.0, 1340.0]


def test_inf_warns_and_is_interpolated():
    X = smooth_curves(4, 30)
    X[1, 4] = np.inf
    X[2, -1] = -np.inf
    X[3, 7] = np.nan
    with pytest.warns(DataWarning, match="2 Inf value"):
        got = clean(X, CleanConfig(n_outliers=0))
    assert got[1, 4] == pytest.approx((X[1, 3] + X[1, 5]) / 2, abs=1e-14)
    assert got[2, -1] == X[2, -2]
    with pytest.warns(DataWarning):
        np.testing.assert_allclose(clean(X), ref_clean(X), rtol=1e-12, atol=1e-12)


def test_nan_only_does_not_warn():
    X = smooth_curves(3, 30)
    X[0, 0] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clean(X)


@pytest.mark.filterwarnings("ignore::switchscope.DataWarning")
def test_empty_pixels_name_count_and_first_grid_position():
    X = smooth_curves(12, 20).reshape(3, 4, 20)
    X[1, 2] = np.nan
    X[2, 3] = np.inf
    ds = make_dataset({"amplitude": X}, np.arange(20.0))
    with pytest.raises(DataError, match=r"amplitude: 2 pixel\(s\) have no finite value \(first at "
                                        r"\(row, col\) = \(1, 2\)\); remove those pixels"):
        clean(ds)


def test_short_curves_raise():
    with pytest.raises(DataError, match="fewer than the Savitzky-Golay window"):
        clean(smooth_curves(3, 5))
    with pytest.raises(DataError, match=r"n_outliers \(3\) must be smaller"):
        clean(smooth_curves(3, 3), CleanConfig(savgol_window=3, savgol_order=1))


# ------------------------------------------------------------------------------------------------
# normalization
# ------------------------------------------------------------------------------------------------
def test_normalize_round_trip_and_validation_set():
    rng = np.random.default_rng(5)
    train = rng.normal(3e-4, 2e-5, (100, 96))
    val = rng.normal(1e-4, 5e-5, (30, 96))
    tn, st = normalize(train)
    assert isinstance(st, NormStats)
    assert st.mean == pytest.approx(np.mean(train), rel=1e-12)
    assert st.std == pytest.approx(np.std(train), rel=1e-12)   # population std, as the paper
    assert tn.mean() == pytest.approx(0, abs=1e-12) and tn.std() == pytest.approx(1, rel=1e-12)
    vn, st2 = normalize(val, st)
    assert st2 == st
    np.testing.assert_allclose(vn, (val - train.mean()) / train.std(), rtol=1e-12)
    np.testing.assert_allclose(denormalize(vn, st), val, rtol=1e-12)
    np.testing.assert_allclose(denormalize(vn, st.to_dict()), val, rtol=1e-12)
    np.testing.assert_allclose(normalize(val, (st.mean, st.std))[0], vn, rtol=0, atol=0)
    assert json.loads(json.dumps(st.to_dict())) == st.to_dict()


def test_normalize_ignores_nan_and_rejects_constant():
    X = np.array([[1.0, np.nan, 3.0]])
    Xn, st = normalize(X)
    assert st == NormStats(2.0, 1.0) and np.isnan(Xn[0, 1])
    with pytest.raises(DataError, match="every value is the same"):
        normalize(np.ones((2, 3)))
    with pytest.raises(DataError, match="no finite value"):
        normalize(np.full((2, 3), np.nan))
    with pytest.raises(ConfigError, match="std > 0"):
        denormalize(X, (0.0, 0.0))
    with pytest.raises(ConfigError, match=r"stats must be a NormStats"):
        normalize(X, "paper")


# ------------------------------------------------------------------------------------------------
# config
# ------------------------------------------------------------------------------------------------
def test_config_defaults_are_the_paper_values_and_registered():
    c = CleanConfig()
    assert (c.savgol_window, c.savgol_order, c.n_outliers) == (7, 3, 3)
    # the range and the normalization come from the data unless the paper's preset fixes them
    assert (c.resonance_range_khz, c.normalization) == ("auto", "auto")
    paper = CleanConfig.preset("paper")
    assert (paper.resonance_range_khz, paper.normalization) == ((1300.0, 1340.0), "global")
    assert paper == c.replace(resonance_range_khz=(1300.0, 1340.0), normalization="global")
    assert STAGE_CONFIGS["clean"] is CleanConfig
    got = configs_from_mapping({"clean": {"savgol_window": 9, "channels": ["piezoresponse"]}})
    assert got["clean"].savgol_window == 9 and got["clean"].channels == ("piezoresponse",)


@pytest.mark.parametrize("kwargs, match", [
    ({"savgol_window": 6}, r"\[clean\] savgol_window must be an odd integer >= 3 and <= 1001, got 6"),
    ({"savgol_window": -7}, r"\[clean\] savgol_window must be an odd integer >= 3 and <= 1001, got -7"),
    ({"savgol_window": 1}, r"\[clean\] savgol_window must be an odd integer >= 3 and <= 1001, got 1"),
    ({"savgol_order": 7}, r"\[clean\] savgol_order must be an integer < savgol_window \(7\), got 7"),
    ({"savgol_window": 5, "savgol_order": 5}, r"savgol_order must be an integer < savgol_window"),
    ({"savgol_order": -1}, r"\[clean\] savgol_order must be an integer >= 0, got -1"),
    ({"n_outliers": -1}, r"\[clean\] n_outliers must be an integer >= 0 and <= 1000, got -1"),
    ({"n_outliers": 2.5}, r"\[clean\] n_outliers must be an integer >= 0 and <= 1000, got 2.5"),
    ({"resonance_range_khz": (1340.0, 1340.0)}, r"\[clean\] resonance_range_khz must be \"auto\" or "
                                                r"\[low, high\] in kHz with low < high, got \(1340.0, 1340.0\)"),
    ({"resonance_range_khz": [1400, 1300]}, "resonance_range_khz must be"),
    ({"resonance_range_khz": "paper"}, "resonance_range_khz must be"),
    ({"resonance_range_khz": [1300, float("nan")]}, "resonance_range_khz must be"),
    ({"normalization": "minmax"}, r"\[clean\] normalization must be one of 'auto', 'global', 'pixel', "
                                  r"'robust', got 'minmax'"),
    ({"range_filter": "yes"}, r"\[clean\] range_filter must be true or false, got 'yes'"),
    ({"channels": ["piezo"]}, r"\[clean\] channels must be a list of: piezoresponse"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        CleanConfig(**kwargs)


def test_config_error_is_one_line_and_unknown_option():
    with pytest.raises(ConfigError) as exc:
        CleanConfig.from_dict({"window": 7})
    assert "\n" not in str(exc.value) and "savgol_window" in str(exc.value)
    with pytest.raises(ConfigError, match="config must be a CleanConfig"):
        clean(smooth_curves(2, 20), config=7)


def test_dataset_channel_selection():
    X = smooth_curves(6, 30).reshape(2, 3, 30)
    ds = make_dataset({"piezoresponse": X, "amplitude": np.abs(X)}, np.arange(30.0))
    out = clean(ds, channel="amplitude")
    assert "amplitude_clean" in out and "piezoresponse_clean" not in out
    out = clean(ds, CleanConfig(channels=("piezoresponse",)))
    assert "piezoresponse_clean" in out and "amplitude_clean" not in out
    with pytest.raises(DataError, match="channel\\(s\\) phase not in the data"):
        clean(ds, channel="phase")
    with pytest.raises(DataError, match="unknown channel 'piezo'"):
        clean(ds, channel="piezo")


# ------------------------------------------------------------------------------------------------
# pipeline stage
# ------------------------------------------------------------------------------------------------
def test_stage_summary_and_figure(tmp_path, real_raw_loops):
    loops, voltage = real_raw_loops
    res = 1320 + 5 * smooth_curves(3600, 96, seed=6).reshape(60, 60, 96)
    res[0, 0, 5] = 1200.0
    ds = make_dataset({"piezoresponse": loops, "resonance": res}, voltage)
    ctx = RunContext(workdir=tmp_path)
    out = stage(ds, CleanConfig(), ctx)
    assert isinstance(out, xr.Dataset) and "piezoresponse_clean" in out and "resonance_clean" in out
    s = ctx.summary["clean"]
    json.dumps(s)
    assert s["piezoresponse"]["n_nonfinite"] == 3 and s["piezoresponse"]["n_outliers"] == 10800
    assert s["resonance"]["n_out_of_range"] == 1
    assert s["piezoresponse"]["norm_std"] == pytest.approx(
        float(out["piezoresponse_clean"].std()), rel=1e-9)
    assert s["seconds"] >= 0
    assert not (tmp_path / "report").exists()  # the stage computes; the report draws
    from switchscope.report.figures import clean as figures

    (section, png), = figures.draw(out, tmp_path)
    assert section == "cleaning" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_outlier_ties_go_to_the_later_steps():
    # exact ties: a zero curve has distance 0 everywhere, and equal spikes far apart tie exactly
    X = np.zeros((2, 40))
    X[1, [5, 15, 25, 35]] = 1.0
    mask_ref = []
    for y in X:
        d = np.abs(y - savgol_filter(y, 7, 3))
        m = np.zeros(40, bool)
        m[np.argsort(d, kind="stable")[-3:]] = True
        mask_ref.append(m)
    from switchscope.preprocess import _outlier_mask

    got = _outlier_mask(X, 7, 3, 3)
    np.testing.assert_array_equal(got, np.array(mask_ref))
    assert got.sum(axis=1).tolist() == [3, 3]
    assert np.flatnonzero(got[0]).tolist() == [37, 38, 39]
