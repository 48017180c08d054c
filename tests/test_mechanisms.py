"""Mechanism detectors and neuron naming (switchscope.mechanisms)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import xarray as xr
from scipy.special import erf, erfinv
from scipy.stats import spearmanr

from switchscope.mechanisms import MechanismsConfig, c_like, detect, hardening, name_neurons, three_state
from switchscope.synthetic import make_dataset
from switchscope.waveform import triangle_waveform

V = triangle_waveform(800, 16.0)  # fine steps: the piecewise-linear measures are then near exact


def _state(v, c, w, d):
    return 0.5 * (erf((v - c - d / 2) / w) + erf((v - c + d / 2) / w))


def _loops(w, d, height=2.0, c_neg=-5.0, c_pos=6.0):
    """Closed-form loops (n, n_steps): two erf sub-steps a plateau of width d apart on each branch."""
    from switchscope.waveform import descending_steps

    desc = descending_steps(V)
    w, d = np.atleast_1d(w)[:, None], np.atleast_1d(d)[:, None]
    c = np.where(desc, c_neg, c_pos)[None, :]
    return height * _state(V[None, :], c, w, d)


def _tilted(w, d, height=2.0, tilt=0.012, c_neg=-5.0, c_pos=6.0):
    """Closed-form loops with the field-induced tilt ``tilt * height * V * p^2`` on the 800-step waveform."""
    from switchscope.waveform import descending_steps

    w, d = np.atleast_1d(w)[:, None], np.atleast_1d(d)[:, None]
    p = _state(V[None, :], np.where(descending_steps(V), c_neg, c_pos)[None, :], w, d)
    return height * p + tilt * height * V[None, :] * p**2


@pytest.mark.parametrize("w,d", [(1.0, 2.0), (1.0, 4.0), (0.8, 6.0), (2.0, 3.0), (1.5, 8.0), (2.5, 1.0)])
def test_two_step_fit_recovers_plateau_and_width_of_a_closed_form_loop(w, d):
    from switchscope.mechanisms import two_step_fit

    for loops in (_loops(w, d), _tilted(w, d)):
        f = two_step_fit(V, loops)
        assert np.sqrt(max(f["d2"][0], 0.0)) == pytest.approx(d, abs=0.03)  # volts
        assert f["w"][0] == pytest.approx(w, rel=0.01)
        assert f["c_falling"][0] == pytest.approx(-5.0, abs=0.02)
        assert f["c_rising"][0] == pytest.approx(6.0, abs=0.02)


def test_two_step_fit_leaves_pixels_without_data_out_and_stays_in_its_bounds():
    import sys

    from switchscope.mechanisms import two_step_fit

    loops = np.concatenate([_tilted(np.array([1.0, 0.3, 6.0]), np.array([3.0, 0.0, 0.0])),
                            np.full((1, V.size), np.nan), np.ones((1, V.size))])
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    f = two_step_fit(V, loops)
    assert np.isnan([f[k][3] for k in f]).all()  # no finite point: NaN, the others unaffected
    assert np.sqrt(f["d2"][0]) == pytest.approx(3.0, abs=0.03) and f["w"][0] == pytest.approx(1.0, rel=0.01)
    assert f["w"][1] == pytest.approx(0.3, rel=0.02)
    ok = np.isfinite(f["w"])
    assert np.all((f["w"][ok] >= 0.2) & (f["w"][ok] <= 15.0))
    assert np.all((f["d2"][ok] >= -0.16) & (f["d2"][ok] <= 400.0))
    if threads is not None:  # the fit's single intra-op thread is the caller's setting again
        assert sys.modules["torch"].get_num_threads() == threads


def test_three_state_is_the_plateau_beyond_one_step_width():
    w = np.array([1.0, 1.0, 1.0, 1.0, 2.0, 0.8])
    d = np.array([0.0, 0.8, 2.0, 4.0, 3.0, 6.0])
    got = three_state(V, _tilted(w, d))
    # noise-free: SE(d^2) ~ 0, so the value is sqrt(d^2 - w^2) where d > w and 0 below
    assert got == pytest.approx(np.sqrt(np.maximum(d**2 - w**2, 0.0)), abs=0.05)


def test_three_state_is_zero_for_one_step_and_rises_with_the_plateau():
    got = three_state(V, _loops(np.full(6, 1.0), np.array([0.0, 0.5, 1.0, 2.0, 4.0, 6.0])))
    assert got[:3] == pytest.approx(0.0, abs=0.05)  # one step, and plateaus within a step width
    assert np.all(np.diff(got[2:]) > 0)


def test_three_state_with_noise_keeps_unresolved_plateaus_at_zero():
    from switchscope.synthetic import paper_waveform
    from switchscope.waveform import descending_steps

    v = paper_waveform()  # 96 steps of 2/3 V, as on the film
    rng = np.random.default_rng(0)
    c = np.where(descending_steps(v), -6.0, 7.0)
    noise = 0.015 * 2.0  # the calibrated film's noise relative to the saturation response

    def noisy(w, d, n=100):
        p = _state(v[None, :], c[None, :], w, d)
        return 2.0 * p + 0.024 * v * p**2 + noise * rng.standard_normal((n, v.size))

    single, short, resolved = (three_state(v, noisy(w, d)) for w, d in ((2.0, 0.0), (2.0, 1.5), (2.0, 5.0)))
    assert np.median(single) == 0.0 and np.median(short) == 0.0
    assert np.median(resolved) == pytest.approx(np.sqrt(25.0 - 4.0), abs=0.5)
    assert np.mean(resolved > 0) > 0.95


def test_c_like_height_and_width_of_a_known_step():
    c, H, W = c_like(V, np.concatenate([_loops(1.2, 0.0, height=2.0), _loops(2.4, 0.0, height=1.0)]))
    assert H == pytest.approx([4.0, 2.0], rel=0.01)  # saturation to saturation: twice the amplitude
    assert W == pytest.approx([1.2, 2.4], rel=0.02)
    assert c[0] > c[1]


def test_c_like_width_is_widened_less_than_the_switching_span_by_a_plateau():
    _, _, W = c_like(V, _loops(np.array([1.0, 1.0]), np.array([0.0, 4.0])))
    assert W[0] == pytest.approx(1.0, rel=0.02)
    assert W[1] == pytest.approx(1.6, rel=0.05)  # the 10-90 % span grows from 1.8 V to about 5.6 V


def _resonance(bump, *, centre=3.5, dip_width=1.5, w=1.2, v=V):
    """A resonance branch pair in kHz: line, butterfly s V, softening dip at switching and a rise
    of height ``bump`` ``centre`` volts before the coercive voltage (loops of ``_loops(w, 0)``)."""
    from switchscope.waveform import descending_steps

    desc = descending_steps(v)
    c = np.where(desc, -5.0, 6.0)
    before = np.where(desc, 1.0, -1.0)
    half = w * erfinv(0.8)  # coercive voltage to the start of switching
    return (1320.0 + 0.02 * v + 0.05 * erf((v - c) / w) * v - 1.4 * np.exp(-(((v - c) / (dip_width * half)) ** 2))
            + bump * np.exp(-(((v - c - before * centre) / 1.3) ** 2)))


@pytest.mark.parametrize("bump", [0.0, 0.8, 2.0])
def test_hardening_recovers_a_resonance_bump_of_known_height(bump):
    got = hardening(V, _loops(1.2, 0.0), _resonance(bump)[None, :])[0]
    assert got == pytest.approx(bump, abs=0.01)


def test_hardening_off_the_models_grid_of_positions_and_dip_widths():
    got = hardening(V, _loops(1.2, 0.0), _resonance(1.0, centre=3.7, dip_width=1.3)[None, :])[0]
    assert got == pytest.approx(1.0, abs=0.05)


def test_hardening_with_noise_on_the_papers_waveform():
    from switchscope.synthetic import paper_waveform
    from switchscope.waveform import descending_steps

    v = paper_waveform()  # 96 steps of 2/3 V
    rng = np.random.default_rng(0)
    loops = 2.0 * _state(v, np.where(descending_steps(v), -5.0, 6.0), 1.2, 0.0)[None, :]
    clean_res = _resonance(1.0, v=v)
    noisy = clean_res[None, :] + 0.15 * rng.standard_normal((200, v.size))  # the synthetic film's noise
    got = hardening(v, np.repeat(loops, 200, axis=0), noisy)
    assert np.mean(got) == pytest.approx(1.0, abs=0.1)
    assert np.std(got) < 0.2


def _film(seed=3, rows=12, cols=12):
    rng = np.random.default_rng(seed)
    return {"a": rng.standard_normal((rows, cols)), "b": rng.standard_normal((rows, cols))}


def test_naming_rule_names_a_tracking_neuron_and_not_a_random_one():
    rng = np.random.default_rng(0)
    m = _film()
    emb = np.stack([np.maximum(m["a"] + 0.2 * rng.standard_normal(m["a"].shape) + 3, 0),
                    rng.random(m["a"].shape), np.zeros_like(m["a"])], axis=-1)
    res = name_neurons({"piezoresponse": emb}, m)
    assert res["measures"] == ["a", "b"]
    assert res["named"][0].tolist() == [0, -1, -1]
    assert abs(res["rho"][0, 0, 0]) > 0.9
    assert np.isnan(res["rho"][0, 2]).all()  # inactive


def test_naming_rule_refuses_a_tie_between_unrelated_measures():
    m = _film(rows=60, cols=60)
    emb = (m["a"] + m["b"] + 10)[..., None]  # rho about 0.7 with each
    res = name_neurons({"resonance": emb}, m, min_rho=0.5)
    assert res["named"][0, 0] == -1


def test_detectors_against_truth_on_an_unseen_film():
    """Validation on a film no other test uses (40 x 40, seed 11): docs/mechanisms.md."""
    from switchscope.preprocess import clean

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = clean(make_dataset(40, 40, 11))
    maps = detect(ds)
    rho = {k: spearmanr(maps[k].values.ravel(), ds[t].values.ravel()).statistic for k, t in
           (("mechanism_three_state", "truth_three_state"), ("mechanism_c_like", "truth_c_fraction"),
            ("mechanism_hardening", "truth_hardening"))}
    # measured on the calibrated film (seeds 11, 12, 13, docs/mechanisms.md); three-state is the
    # weakest: plateaus shorter than the step width are not resolved (a wider step, to the curve)
    assert rho["mechanism_three_state"] >= 0.7
    assert rho["mechanism_c_like"] >= 0.8
    assert rho["mechanism_hardening"] >= 0.8
    assert maps["mechanism_hardening"].attrs["units"] == "kHz"
    assert maps["mechanism_three_state"].attrs["units"] == "V"


def test_config_is_validated():
    from switchscope import ConfigError

    with pytest.raises(ConfigError, match="plateau_level"):
        MechanismsConfig(plateau_level=0.9)
    with pytest.raises(ConfigError, match="rise_from"):
        MechanismsConfig(rise_from=9.0, hardening_window=8.0)


def test_stage_in_a_pipeline_run(tmp_path):
    from switchscope.pipeline import run

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = make_dataset(12, 12, 5)
        rng = np.random.default_rng(1)
        emb = np.stack([ds["truth_three_state"].values * 4 + 0.05 * rng.random((12, 12)),
                        rng.random((12, 12))], axis=-1)
        ds["embedding_piezoresponse"] = xr.DataArray(emb, dims=("row", "col", "neuron"))
        out = run(ds, tmp_path / "o", stages=["clean", "loops", "mechanisms", "report"], progress=False)
    for v in ("mechanism_three_state", "mechanism_hardening", "mechanism_c_like", "mechanism_rho",
              "mechanism_named"):
        assert v in out
    assert out["mechanism_rho"].dims == ("mechanism_channel", "neuron", "measure")
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    sec = summary["mechanisms"]
    assert set(sec["truth_rho"]) == {"mechanism_three_state", "mechanism_hardening", "mechanism_c_like"}
    assert isinstance(sec["sentences"], list)
    page = (tmp_path / "o" / "report" / "index.html").read_text()
    assert "Switching mechanisms, measured" in page and "mechanism_maps.png" in page
