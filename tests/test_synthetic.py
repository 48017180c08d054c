"""Tests of the synthetic dataset: properties checked on the generated curves themselves."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy.optimize import least_squares
from scipy.special import erf

from switchscope import ConfigError, DataError
from switchscope.stages import STAGE_CONFIGS
from switchscope.stages import RunContext
from switchscope.synthetic import (
    TRUTH_MAPS,
    SyntheticConfig,
    make_dataset,
    paper_waveform,
    score_stage,
    sho_response,
    truth_scores,
)

CHANNEL_UNITS = {"piezoresponse": "a.u.", "amplitude": "a.u.", "phase": "deg",
                 "resonance": "kHz", "quality_factor": "1"}


@pytest.fixture(scope="module")
def ds() -> xr.Dataset:
    return make_dataset()


@pytest.fixture(scope="module")
def flat(ds):
    """Per-pixel arrays (n_pixels, ...) of the default dataset."""
    out = {name: ds[name].values.reshape(-1, *ds[name].shape[2:]) for name in ds.data_vars
           if ds[name].dims[:2] == ("row", "col")}
    out["voltage"] = ds["voltage"].values
    return out


def _interp_nonfinite(x: np.ndarray) -> np.ndarray:
    """Independent minimal cleaning: non-finite points linearly interpolated along the steps."""
    x = x.copy()
    idx = np.arange(x.shape[1])
    for i in np.where((~np.isfinite(x)).any(axis=1))[0]:
        ok = np.isfinite(x[i])
        x[i, ~ok] = np.interp(idx[~ok], idx[ok], x[i, ok])
    return x


def _half_height(p: np.ndarray, n_steps: int) -> np.ndarray:
    """Loop half-height from the saturated ends: median near +V_max minus median near -V_max."""
    half = n_steps // 2
    top = np.nanmedian(np.where(np.isfinite(p[:, :4]), p[:, :4], np.nan), axis=1)
    bottom_idx = slice(half - 3, half + 4)
    bottom = np.nanmedian(np.where(np.isfinite(p[:, bottom_idx]), p[:, bottom_idx], np.nan), axis=1)
    return (top - bottom) / 2


# -- determinism, shapes, units ------------------------------------------------------------------
def test_same_seed_identical_and_other_seed_differs():
    a = make_dataset(rows=12, cols=10, seed=3)
    b = make_dataset(rows=12, cols=10, seed=3)
    xr.testing.assert_identical(a, b)
    c = make_dataset(rows=12, cols=10, seed=4)
    assert not np.allclose(a["truth_piezoresponse"].values, c["truth_piezoresponse"].values)
    assert not np.array_equal(a["truth_coercive_pos"].values, c["truth_coercive_pos"].values)


def test_truth_does_not_depend_on_artifact_options():
    a = make_dataset(rows=8, cols=8, seed=2)
    b = make_dataset(rows=8, cols=8, seed=2, artifacts=False)
    for name in ("truth_piezoresponse", "truth_resonance", "truth_three_state"):
        np.testing.assert_array_equal(a[name].values, b[name].values)


def test_shapes_dims_units(ds):
    assert dict(ds.sizes) == {"row": 60, "col": 60, "step": 96}
    for name, unit in CHANNEL_UNITS.items():
        assert ds[name].dims == ("row", "col", "step")
        assert ds[name].attrs["units"] == unit
        assert ds[f"truth_{name}"].dims == ("row", "col", "step")
        assert ds[f"truth_{name}"].attrs["units"] == unit
    for name in TRUTH_MAPS:
        assert ds[name].dims == ("row", "col")
        assert np.all(np.isfinite(ds[name].values))
    assert ds["truth_domain"].dtype.kind == "i"
    assert set(np.unique(ds["truth_domain"].values)) == {0, 1}
    for name in ("truth_band_position", "truth_c_fraction", "truth_three_state", "truth_hardening"):
        v = ds[name].values
        assert v.min() >= 0 and v.max() <= 1
        assert v.max() - v.min() > 0.5  # spans the range, not a constant
    assert ds["voltage"].attrs["units"] == "V"
    assert ds.attrs["source"] == "synthetic"


def test_waveform_closed_form():
    v = paper_waveform()
    assert v.shape == (96,)
    assert v[0] == 16.0 and v[48] == -16.0
    np.testing.assert_allclose(np.diff(v[:49]), -2 / 3)
    np.testing.assert_allclose(np.diff(v[48:]), 2 / 3)
    w = paper_waveform(40, 10.0)
    assert w[0] == 10.0 and w[20] == -10.0 and w.argmin() == 20


def test_waveform_matches_paper_file(mat_path):
    import scipy.io

    paper = scipy.io.loadmat(mat_path)["Voltagedata_mixed"].ravel()
    np.testing.assert_allclose(paper_waveform(), paper, atol=1e-9)


def test_other_grid_sizes_and_tiny_grid():
    small = make_dataset(rows=4, cols=3, seed=1)
    assert dict(small.sizes) == {"row": 4, "col": 3, "step": 96}
    one = make_dataset(rows=1, cols=1, n_steps=20, v_max=8.0)
    assert one["piezoresponse"].shape == (1, 1, 20)
    assert np.isfinite(one["piezoresponse"].values).sum() >= 18
    # a bigger grid is the same film sampled more finely: similar a1/a2 share
    fine = make_dataset(rows=90, cols=90, seed=0, artifacts=False)
    coarse = make_dataset(rows=30, cols=30, seed=0, artifacts=False)
    assert abs(fine["truth_domain"].mean() - coarse["truth_domain"].mean()) < 0.08


# -- physics on the curves -----------------------------------------------------------------------
def test_band_structure_is_oblique_stripes(ds):
    dom = ds["truth_domain"].values.astype(float)
    share = dom.mean()
    assert 0.25 < share < 0.45  # about a third of each period, as in the real film
    # bands: the map is almost constant along the anti-diagonal direction and alternates along rows
    along = np.mean(dom[1:, :-1] == dom[:-1, 1:])
    across = np.mean(dom[1:, 1:] == dom[:-1, :-1])
    assert along > 0.93 and along > across + 0.05
    changes_along_row = np.abs(np.diff(dom, axis=1)).sum(axis=1)
    assert np.median(changes_along_row) >= 4  # several bands cross the field of view
    # c fraction is high in c/a bands and low in a1/a2 bands
    cf = ds["truth_c_fraction"].values
    assert np.median(cf[dom == 0]) > 0.55 and np.median(cf[dom == 1]) < 0.25


def test_a1a2_pixels_have_smaller_loop_height(ds, flat):
    dom = flat["truth_domain"]
    h = _half_height(flat["piezoresponse"], 96)
    assert np.median(h[dom == 1]) < 0.7 * np.median(h[dom == 0])
    assert np.median(h[dom == 0]) > 0  # + to - on the way down
    # a pixel's height follows its c fraction (rank correlation)
    from scipy.stats import spearmanr

    assert spearmanr(h, flat["truth_c_fraction"]).statistic > 0.8


def test_loops_are_square_with_saturation_in_ca_bands(flat):
    p = flat["truth_piezoresponse"]
    ca = (flat["truth_domain"] == 0) & (flat["truth_three_state"] < 0.2)
    h = _half_height(p, 96)
    # saturated: the first and last five points on the way down stay within 10 % of the height
    top = p[ca, :5]
    assert np.all(np.abs(top - top.mean(axis=1, keepdims=True)) < 0.1 * h[ca, None])
    # square: the descending branch crosses from +h/2 to -h/2 within a few volts, more sharply
    # than in the slanted a1/a2 loops
    v = flat["voltage"][:49]

    def widths(mask):
        out = []
        for row, hh in zip(p[mask, :49], h[mask]):
            out.append(v[np.where(row > 0.5 * hh)[0].max()] - v[np.where(row < -0.5 * hh)[0].min()])
        return np.array(out)

    w_ca, w_a = widths(ca), widths(flat["truth_domain"] == 1)
    assert np.median(w_ca) < 4.0  # switching as broad as the real film's (a 6 V 80-20 % median)
    assert np.median(w_a) > np.median(w_ca) + 1.0


def _crossings(v: np.ndarray, y: np.ndarray, falling: bool) -> list[float]:
    """Voltages where ``y`` changes sign (linear interpolation), in the given direction."""
    s = np.sign(y)
    out = []
    for i in range(len(y) - 1):
        if (s[i] > 0 >= s[i + 1]) if falling else (s[i] < 0 <= s[i + 1]):
            out.append(v[i] + (v[i + 1] - v[i]) * y[i] / (y[i] - y[i + 1]))
    return out


def test_zero_crossings_sit_at_coercive_voltages(flat):
    v = flat["voltage"]
    p = flat["truth_piezoresponse"]
    cn, cp = flat["truth_coercive_neg"], flat["truth_coercive_pos"]
    assert np.all(cp > 0) and np.all(cn < 0)
    np.testing.assert_allclose(flat["truth_imprint"], (cp + cn) / 2)
    rng = np.random.default_rng(0)
    for i in rng.choice(p.shape[0], 400, replace=False):
        down = _crossings(v[:49], p[i, :49], falling=True)
        up = _crossings(v[48:], p[i, 48:], falling=False)
        # one clean crossing per noise-free branch, at the truth (linear interpolation error only)
        assert len(down) == 1 and len(up) == 1
        assert abs(down[0] - cn[i]) < 0.15 and abs(up[0] - cp[i]) < 0.15
    # on the noisy measurement: the median crossing of simple (non three-state) loops is close
    meas = _interp_nonfinite(flat["piezoresponse"])
    simple = np.where(flat["truth_three_state"] < 0.15)[0][:300]
    err = [abs(np.median(_crossings(v[:49], meas[i, :49], True)) - cn[i]) for i in simple]
    assert np.median(err) < 0.3


def test_three_state_pixels_show_plateau_near_zero(flat):
    v = flat["voltage"]
    meas = _interp_nonfinite(flat["piezoresponse"])
    h = _half_height(meas, 96)
    three = flat["truth_three_state"]
    ca = flat["truth_domain"] == 0
    high = ca & (three > 0.8)
    low = ca & (three < 0.15)
    assert high.sum() > 50 and low.sum() > 50

    def near_zero_steps(idx, c, branch):
        # steps within 6 V of the coercive voltage on a branch whose value is near zero
        vv = v[branch]
        win = np.abs(vv[None, :] - c[idx, None]) < 6.0
        small = np.abs(meas[idx][:, branch]) < 0.2 * h[idx, None]
        return (win & small).sum(axis=1)

    down, up = slice(0, 49), slice(48, 96)
    for c, br in ((flat["truth_coercive_neg"], down), (flat["truth_coercive_pos"], up)):
        n_high = near_zero_steps(np.where(high)[0], c, br)
        n_low = near_zero_steps(np.where(low)[0], c, br)
        assert np.median(n_high) >= 5  # a plateau several volts wide
        assert np.median(n_high) >= 3 * max(np.median(n_low), 1)
    # the plateau is at zero: for high pixels, the response at the coercive voltage is ~0
    # while it is not a plateau for low pixels (response 1.5 V either side is already large)
    i = np.where(high)[0]
    at_c = np.array([np.interp(flat["truth_coercive_neg"][k], v[48::-1], flat["truth_piezoresponse"][k, 48::-1])
                     for k in i])
    side = np.array([np.interp(flat["truth_coercive_neg"][k] + 1.5, v[48::-1],
                               flat["truth_piezoresponse"][k, 48::-1]) for k in i])
    assert np.all(np.abs(at_c) < 0.02 * h[i])
    assert np.median(np.abs(side) / h[i]) < 0.2
    j = np.where(low)[0]
    side_low = np.array([np.interp(flat["truth_coercive_neg"][k] + 1.5, v[48::-1],
                                   flat["truth_piezoresponse"][k, 48::-1]) for k in j])
    assert np.median(np.abs(side_low) / h[j]) > 0.5


def test_hardening_rises_before_switching_dip(flat):
    v = flat["voltage"]
    hard = flat["truth_hardening"]
    res_meas = _interp_nonfinite(np.where((flat["resonance"] > 1300) & (flat["resonance"] < 1340),
                                          flat["resonance"], np.nan))

    def rise_and_dip(res, idx):
        rises, dips, order = [], [], []
        for k in idx:
            for c, br, sgn in ((flat["truth_coercive_neg"][k], slice(0, 49), 1.0),
                               (flat["truth_coercive_pos"][k], slice(48, 96), -1.0)):
                vv, rr = v[br], res[k, br]
                # "before" switching: voltages already passed on the way to c
                before = (sgn * (vv - c) > 1.5) & (sgn * (vv - c) < 8.0)
                base = (sgn * (vv - c) > 10.0) & (sgn * (vv - c) < 12.0)
                at = np.abs(vv - c) < 1.0
                if not (before.any() and base.any() and at.any()):
                    continue
                rises.append(rr[before].max() - np.median(rr[base]))
                dips.append(np.median(rr[base]) - rr[at].min())
                t_peak = np.where(before)[0][np.argmax(rr[before])]
                t_dip = np.where(at)[0][np.argmin(rr[at])]
                order.append(t_peak < t_dip)  # the rise comes first in time
        return np.array(rises), np.array(dips), np.array(order)

    high = np.where(hard > 0.8)[0][:200]
    low = np.where(hard < 0.2)[0][:200]
    assert len(high) > 30 and len(low) > 30
    for res in (flat["truth_resonance"], res_meas):
        r_hi, d_hi, o_hi = rise_and_dip(res, high)
        r_lo, d_lo, _ = rise_and_dip(res, low)
        # kHz, for the amplitudes calibrated on the real film (hardening up to 1.2 kHz, softening
        # 1.4 kHz, noise 0.15 kHz; benchmarks/synthetic_vs_real.py)
        assert np.median(r_hi) > 0.35  # kHz of hardening
        assert np.median(r_lo) < 0.12
        assert np.median(r_hi) > np.median(r_lo) + 0.45
        assert np.median(d_hi) > 0.6 and np.median(d_lo) > 0.6  # softening at switching
        assert o_hi.mean() > 0.9


def test_channel_ranges_and_consistency(flat):
    for prefix in ("truth_", ""):
        p, a, ph = flat[prefix + "piezoresponse"], flat[prefix + "amplitude"], flat[prefix + "phase"]
        ok = np.isfinite(p) & np.isfinite(a) & np.isfinite(ph)
        np.testing.assert_allclose(p[ok], a[ok] * np.cos(np.deg2rad(ph[ok])), rtol=1e-9, atol=1e-15)
        assert np.all(a[ok] >= 0)
    # the two polarization states sit near 0 and 180 degrees
    p, ph = flat["truth_piezoresponse"], flat["truth_phase"]
    h = np.abs(p).max(axis=1, keepdims=True)
    sat_pos, sat_neg = p > 0.5 * h, p < -0.5 * h
    assert np.all(np.abs(ph[sat_pos]) < 10) and np.all(np.abs(ph[sat_neg] - 180) < 10)
    res = flat["truth_resonance"]
    assert 1320 <= np.median(res) <= 1330 and res.min() > 1305 and res.max() < 1340
    # butterfly: positive state gains frequency with voltage, negative state loses it
    v = flat["voltage"]
    ca = flat["truth_domain"] == 0
    # + state on the way down: +16 V (step 0) sits above +2.7 V (step 20)
    assert np.median(res[ca, 0] - res[ca, 20]) > 0.4  # kHz; butterfly of 0.05 kHz/V
    q = flat["truth_quality_factor"]
    assert q.min() >= 175 and q.max() <= 310
    assert v[0] == 16


def test_artifacts_present_but_no_dead_pixel(flat):
    n_points = flat["piezoresponse"].size
    for name in CHANNEL_UNITS:
        bad = ~np.isfinite(flat[name])
        assert 0 < bad.sum() < 0.03 * n_points
        assert bad.sum(axis=1).max() <= 0.1 * 96  # every pixel keeps 90 % of its steps
    assert np.isnan(flat["piezoresponse"]).any() and np.isinf(flat["piezoresponse"]).any()
    assert np.isinf(flat["resonance"]).any()
    res = flat["resonance"]
    out = np.isfinite(res) & ((res < 1300) | (res > 1340))
    assert 0 < out.mean() < 0.02
    # noise and spikes: the measurement differs from the truth, a few points by far
    diff = flat["piezoresponse"] - flat["truth_piezoresponse"]
    ok = np.isfinite(diff)
    sigma = np.median(np.abs(diff[ok])) / 0.6745
    assert sigma > 0
    assert np.any(np.abs(diff[ok]) > 10 * sigma)
    assert np.mean(np.abs(diff[ok]) > 10 * sigma) < 0.01


def test_without_artifacts_channels_equal_truth():
    clean = make_dataset(rows=10, cols=10, seed=5, artifacts=False)
    for name in CHANNEL_UNITS:
        np.testing.assert_array_equal(clean[name].values, clean[f"truth_{name}"].values)
        assert np.all(np.isfinite(clean[name].values))


def test_kmeans_two_clusters_separate_domains(flat):
    # the paper's first divisive split: k-means (k=2) on standardized piezoresponse
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    x = _interp_nonfinite(flat["piezoresponse"])
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    labels = KMeans(2, n_init=4, random_state=0).fit_predict(z)
    assert adjusted_rand_score(flat["truth_domain"], labels) >= 0.9


def _loop13(p: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The paper's 13-parameter loop, written out from DESIGN section 2."""
    a1, a2, a3, b1, b2, b3, b4, b5, b6, b7, b8, au, al = p
    s1 = (b1 + b2) / 2 + (b2 - b1) / 2 * erf((v - b7) / b5)
    s2 = (b4 + b3) / 2 + (b3 - b4) / 2 * erf((v - b8) / b6)
    upper = (a1 + a2) / 2 + (a2 - a1) / 2 * erf((v - au) / s1) + a3 * v
    lower = (a1 + a2) / 2 + (a2 - a1) / 2 * erf((v - al) / s2) + a3 * v
    return upper, lower


@pytest.mark.slow
def test_13_parameter_fit_recovers_coercive_voltages(flat):
    v = flat["voltage"]
    meas = _interp_nonfinite(flat["piezoresponse"]) / 1e-4
    rng = np.random.default_rng(1)
    idx = rng.choice(meas.shape[0], 24, replace=False)
    lb = [-5, -5, -1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, -16, -16, -16, -16]
    ub = [5, 5, 1, 10, 10, 10, 10, 20, 20, 16, 16, 16, 16]
    p0 = [-1, 1, 0.01, 1, 1.5, 1, 1.5, 3, 3, 0, 0, -5, 7]
    err = []
    for i in idx:
        y = meas[i]

        def resid(p):
            up, lo = _loop13(p, v)
            return np.r_[up[:49] - y[:49], lo[49:] - y[49:]]

        fit = least_squares(resid, p0, bounds=(lb, ub))
        err += [abs(fit.x[11] - flat["truth_coercive_neg"][i]), abs(fit.x[12] - flat["truth_coercive_pos"][i])]
    assert np.median(err) < 0.5


# -- spectra -------------------------------------------------------------------------------------
def test_sho_response_closed_form():
    f0, a, q, phi = 1325.0, 2e-4, 250.0, 30.0
    at_res = sho_response(np.array([f0]), np.array(a), np.array(phi), np.array(f0), np.array(q))
    np.testing.assert_allclose(at_res[0], 1j * a * q * np.exp(1j * np.deg2rad(phi)), rtol=1e-12)
    f = np.linspace(1300, 1350, 11)
    mag = np.abs(sho_response(f, np.array(a), np.array(phi), np.array(f0), np.array(q)))
    ref = a * f0**2 / np.sqrt((f**2 - f0**2) ** 2 + (f * f0 / q) ** 2)
    np.testing.assert_allclose(mag, ref, rtol=1e-12)


def test_spectra_option_peaks_at_truth_resonance():
    s = make_dataset(rows=3, cols=4, seed=2, spectra=True, artifacts=False, n_freq=81)
    assert s["spectrum_real"].dims == ("row", "col", "step", "freq")
    assert s["spectrum_real"].dtype == np.float32 and s["freq"].attrs["units"] == "kHz"
    mag = np.hypot(s["spectrum_real"].values, s["spectrum_imag"].values)
    peak = s["freq"].values[mag.argmax(axis=-1)]
    df = s["freq"].values[1] - s["freq"].values[0]
    assert np.all(np.abs(peak - s["truth_resonance"].values) <= df)
    # magnitude at the peak ~ A * Q
    np.testing.assert_allclose(mag.max(axis=-1), s["truth_amplitude"] * s["truth_quality_factor"], rtol=0.02)
    assert "spectrum_real" not in make_dataset(rows=3, cols=4)


# -- config and pipeline surfaces ----------------------------------------------------------------
def test_config_registered_and_keywords_match():
    assert STAGE_CONFIGS["synthetic"] is SyntheticConfig
    cfg = SyntheticConfig.from_dict({"rows": 5, "cols": 4, "seed": 7, "noise": 0.0})
    made = make_dataset(**cfg.to_dict())
    assert made["piezoresponse"].shape == (5, 4, 96)
    assert SyntheticConfig.preset("paper").n_steps == 96


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"rows": 0}, r"\[synthetic\] rows must be an integer >= 1"),
    ({"cols": 2.5}, r"\[synthetic\] cols must be an integer"),
    ({"n_steps": 95}, r"\[synthetic\] n_steps must be an even integer"),
    ({"noise": -0.1}, r"\[synthetic\] noise must be a number >= 0"),
    ({"failed_fraction": 0.5}, r"\[synthetic\] failed_fraction must be a number >= 0.0 and <= 0.05"),
    ({"artifacts": "yes"}, r"\[synthetic\] artifacts must be one of True, False"),
])
def test_bad_options_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        make_dataset(**kwargs)


def test_netcdf_roundtrip(tmp_path):
    small = make_dataset(rows=4, cols=5, seed=1, spectra=True, n_freq=8)
    path = tmp_path / "s.nc"
    small.to_netcdf(path, engine="h5netcdf")
    with xr.open_dataset(path, engine="h5netcdf") as back:
        back = back.load()
    np.testing.assert_array_equal(back["piezoresponse"].values, small["piezoresponse"].values)
    assert back.attrs["seed"] == 1 and back["truth_domain"].dtype.kind == "i"


def test_truth_scores_and_stage(tmp_path):
    small = make_dataset(rows=20, cols=20, seed=0)
    dom = small["truth_domain"]
    small["cluster_perfect"] = dom
    small["cluster_split"] = dom * 2 + (small["truth_band_position"] > 0.5)  # sub-clusters
    small["loop_coercive_pos"] = small["truth_coercive_pos"] + 0.2
    emb = np.stack([small["truth_three_state"].values, np.zeros((20, 20))], axis=-1)
    small["embedding_piezoresponse"] = (("row", "col", "neuron"), emb)
    s = truth_scores(small)
    assert s["ari_cluster_perfect"] == 1.0
    assert s["homogeneity_cluster_split"] == 1.0 and s["ari_cluster_split"] < 1.0
    assert s["median_abs_error_coercive_pos_v"] == pytest.approx(0.2, abs=1e-6)
    assert s["best_neuron_corr_piezoresponse"]["three_state"] == pytest.approx(1.0)
    ctx = RunContext(workdir=tmp_path)
    out = score_stage(small, SyntheticConfig(), ctx)
    assert out is not small and set(out.data_vars) == set(small.data_vars)
    assert ctx.summary["synthetic"]["scores"] == s
    with pytest.raises(DataError, match="truth_domain"):
        truth_scores(small.drop_vars("truth_domain"))
