"""Channel semantics of the loop fit, the resonance range from the data, and the normalization
choices of the clean stage (global, pixel, robust, auto) carried through every later stage."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli_helpers import SMALL, one_line_error, run_cli
from switchscope import pipeline
from switchscope._dataset import make_dataset
from switchscope._errors import ConfigError, DataError
from switchscope.autoencoder import AutoencoderConfig
from switchscope.interpret import InterpretConfig
from switchscope.loops import LoopsConfig
from switchscope.loops._stage import fit_loops_dataset
from switchscope.preprocess import (
    CleanConfig,
    choose_normalization,
    clean,
    denormalize,
    normalize,
    robust_range,
    stored_stats,
)
from switchscope.synthetic import SyntheticConfig, make_dataset as make_synthetic

pytestmark = pytest.mark.filterwarnings("ignore::switchscope.DataWarning")


# ------------------------------------------------------------------------------------------------
# channel semantics of the loop fit
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("channel", ["resonance", "quality_factor", "amplitude", "phase", "resonance_clean"])
def test_loops_refuse_channels_that_are_not_hysteresis_loops(channel):
    with pytest.raises(ConfigError) as exc:
        LoopsConfig(channel=channel)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"[loops] channel = {channel!r}: ")
    assert "loop fitting applies to piezoresponse" in msg
    if channel.startswith("resonance"):
        assert "resonance is a butterfly-shaped channel" in msg


def test_fit_loops_of_a_resonance_only_dataset_says_why():
    ds = make_dataset({"resonance": 1320 + np.random.default_rng(0).normal(size=(3, 3, 40))},
                      np.linspace(-1, 1, 40))
    with pytest.raises(DataError, match="resonance is a butterfly-shaped channel"):
        fit_loops_dataset(ds)


def test_config_with_resonance_loops_is_refused_before_any_stage(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text('[loops]\nchannel = "resonance"\n')
    code, out, err = run_cli(capsys, "run", "--config", cfg, "--stages", "clean,loops", "--out", tmp_path / "o", *SMALL)
    one_line_error(code, err, "resonance is a butterfly-shaped channel")
    assert "[1/" not in out


def test_default_run_without_piezoresponse_skips_loops_with_a_log_line():
    ds = make_synthetic(rows=3, cols=3)[["resonance"]]
    logged: list[str] = []
    names = pipeline.preflight(ds, ["clean", "loops"], {}, explicit=False, log=logged.append)
    assert names == ["clean"] and any("stage loops skipped" in m for m in logged)
    with pytest.raises(ConfigError, match="loop fitting applies to piezoresponse"):
        pipeline.preflight(ds, ["clean", "loops"], {}, explicit=True)


# ------------------------------------------------------------------------------------------------
# resonance range from the data
# ------------------------------------------------------------------------------------------------
def test_robust_range_is_median_plus_minus_8_scaled_mads():
    x = np.array([1.0, 2.0, 3.0, 4.0, 100.0, np.nan])
    # median 3, |x - 3| = 2, 1, 0, 1, 97 -> MAD 1
    assert robust_range(x) == pytest.approx((3 - 8 * 1.4826, 3 + 8 * 1.4826))
    assert robust_range(np.array([5.0, 5.0, 5.0, 9.0]), 1) == pytest.approx((4.0, 6.0))  # MAD 0: mean deviation


def test_auto_range_catches_wild_values_and_keeps_the_resonance():
    ds = make_synthetic(rows=12, cols=12)
    res = ds["resonance"].values.copy()
    res[0, 0, 5], res[1, 1, 7] = 0.0, 1e6
    ds["resonance"].values = res
    a = clean(ds, channel="resonance")["resonance_clean"].attrs
    finite = res[np.isfinite(res) & (res > 1) & (res < 1e5)]
    med = np.median(finite)
    lo, hi = a["resonance_range_khz"]
    assert (lo + hi) / 2 == pytest.approx(np.median(res[np.isfinite(res)]), abs=1e-9)
    assert lo > 1285 and hi < 1355 and lo < med < hi  # the film's f0 spreads over ~1312-1336 kHz
    truth = ds["truth_resonance"].values
    assert truth.min() > lo and truth.max() < hi    # every noise-free value is in range
    assert a["resonance_range_source"].startswith("auto")
    clean_res = clean(ds, channel="resonance")["resonance_clean"].values
    assert clean_res.min() >= lo - 1e-9 and clean_res.max() <= hi + 1e-9


def test_auto_range_leaves_the_papers_resonance_untouched(real_resonance):
    lo, hi = robust_range(real_resonance)
    assert int(((real_resonance < lo) | (real_resonance > hi)).sum()) == 0


# ------------------------------------------------------------------------------------------------
# normalization
# ------------------------------------------------------------------------------------------------
def test_pixel_and_robust_normalization_match_numpy():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(30, 16)) * rng.uniform(1e-3, 10, (30, 1)) + rng.normal(size=(30, 1))
    Xn, st = normalize(X, method="pixel")
    np.testing.assert_allclose(st.mean[:, 0], X.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(st.std[:, 0], X.std(axis=1), rtol=1e-12)
    np.testing.assert_allclose(Xn.mean(axis=1), 0, atol=1e-12)
    np.testing.assert_allclose(Xn.std(axis=1), 1, rtol=1e-12)
    np.testing.assert_allclose(denormalize(Xn, st), X, rtol=1e-12)
    np.testing.assert_allclose(denormalize(Xn, st.to_dict()), X, rtol=1e-12)
    Xr, sr = normalize(X, method="robust")
    q25, q50, q75 = np.percentile(X, [25, 50, 75])
    assert (sr.mean, sr.std) == pytest.approx((q50, (q75 - q25) / 1.349), rel=1e-12)
    np.testing.assert_allclose(Xr, (X - q50) / ((q75 - q25) / 1.349), rtol=1e-12)
    # a flat curve takes the global std (zeros, not noise over nothing)
    X[4] = 2.5
    Xn, st = normalize(X, method="pixel")
    assert st.std[4, 0] == pytest.approx(X.std()) and np.all(Xn[4] == 0)
    with pytest.raises(ConfigError, match="normalize method must be one of"):
        normalize(X, method="minmax")


def test_auto_choice_on_the_synthetic_film_the_papers_loops_and_a_spread_film(real_raw_loops):
    syn = make_synthetic()
    Xs = clean(syn, channel="piezoresponse")["piezoresponse_clean"].values.reshape(3600, -1)
    method, reason = choose_normalization(Xs)
    h = np.percentile(Xs, 95, axis=1) - np.percentile(Xs, 5, axis=1)
    ratio = np.percentile(h, 90) / np.percentile(h, 10)
    assert method == "global" and ratio < 3 and f"{ratio:.3g}" in reason
    loops, _ = real_raw_loops
    Xr = clean(loops.reshape(3600, 96))
    assert choose_normalization(Xr)[0] == "global"
    # heights over four decades: each curve by its own statistics
    spread = Xs[:400] * np.logspace(-2, 2, 400)[:, None]
    method, reason = choose_normalization(spread)
    assert method == "pixel" and "> 10" in reason


def test_clean_stores_per_pixel_statistics_that_every_stage_reads():
    ds = make_synthetic(rows=6, cols=5)
    out = clean(ds, CleanConfig(normalization="pixel", channels=("piezoresponse",)))
    a = out["piezoresponse_clean"].attrs
    assert a["normalization"] == "pixel" and "norm_mean" not in a and "[clean] normalization" in a["normalization_reason"]
    X = out["piezoresponse_clean"].values.reshape(30, -1)
    np.testing.assert_allclose(out["piezoresponse_norm_mean"].values.ravel(), X.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(out["piezoresponse_norm_std"].values.ravel(), X.std(axis=1), rtol=1e-12)
    st = stored_stats(out, "piezoresponse_clean")
    assert st.per_pixel and st.mean.shape == (30, 1)
    g = clean(ds, CleanConfig.preset("paper"), channel="piezoresponse")["piezoresponse_clean"]
    assert g.attrs["normalization"] == "global" and g.attrs["norm_std"] == pytest.approx(g.values.std())
    r = clean(ds, CleanConfig(normalization="robust"), channel="piezoresponse")
    sr = stored_stats(r, "piezoresponse_clean")
    assert sr.mean == pytest.approx(np.median(r["piezoresponse_clean"].values))


@pytest.mark.parametrize("toml, match", [
    ('[clean]\nnormalization = "minmax"\n', "[clean] normalization must be one of 'auto', 'global'"),
    ('[clean]\nresonance_range_khz = [1340, 1300]\n', "[clean] resonance_range_khz must be"),
])
def test_bad_clean_options_through_the_cli(tmp_path, capsys, toml, match):
    cfg = tmp_path / "run.toml"
    cfg.write_text(toml)
    code, out, err = run_cli(capsys, "run", "--config", cfg, "--stages", "clean", "--out", tmp_path / "o", *SMALL)
    one_line_error(code, err, match)


def test_pixel_normalization_through_autoencoder_interpret_and_report(tmp_path):
    configs = {"synthetic": SyntheticConfig(rows=6, cols=6),
               "clean": CleanConfig(normalization="pixel"),
               "autoencoder": AutoencoderConfig(channels=("piezoresponse",), hidden=8, depth=1, epochs=2,
                                                refine_epochs=0, batch_size=16, threads=1),
               "interpret": InterpretConfig(channels=("piezoresponse",), n_levels=3, movies=False)}
    ds = pipeline.run(None, tmp_path / "o", configs=configs, stages=["clean", "autoencoder", "interpret", "report"],
                      progress=False, log=lambda m: None)
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["clean"]["piezoresponse"]["normalization"] == "pixel"
    assert summary["autoencoder"]["piezoresponse"]["normalization"] == "pixel"
    emb = ds["embedding_piezoresponse"]
    assert emb.attrs["normalization"] == "pixel" and "norm_mean" not in emb.attrs
    # the reconstruction is in units: normalized the way the network saw it, it is the same curve
    X = ds["piezoresponse_clean"].values.reshape(36, -1)
    mean = ds["piezoresponse_norm_mean"].values.reshape(36, 1)
    std = ds["piezoresponse_norm_std"].values.reshape(36, 1)
    Rn = (ds["reconstruction_piezoresponse"].values.reshape(36, -1) - mean) / std
    assert np.mean((Rn - (X - mean) / std) ** 2) == pytest.approx(summary["autoencoder"]["piezoresponse"]["mse_all"],
                                                                    rel=1e-6)
    # generated loops carry the typical size of the pixels they stand for
    gen = ds["generated_piezoresponse"].values
    pix = ds["generated_piezoresponse_pixels"].values
    j = int(np.flatnonzero((pix >= 0).all(axis=(1, 2)))[0])
    lo, hi = (X.min(), X.max())
    assert np.all(np.isfinite(gen[j])) and gen[j].max() > lo and gen[j].min() < hi
    page = (tmp_path / "o" / "report" / "index.html").read_text()
    assert "per pixel (piezoresponse_norm_mean)" in page and "set by [clean] normalization = &#x27;pixel&#x27;" in page
