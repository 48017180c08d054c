"""Any bipolar triangle waveform: what switchscope.waveform says about a voltage array, what it
refuses (with the one line that names what it found), and that every stage reads the branches from
the data's own voltage (loop fits of rotated and reflected real loops agree; a 64-step waveform
that starts at 0 V runs end to end)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from switchscope import DataError
from switchscope.loops import fit_loops, sweep_masks
from switchscope.paper import paper_voltage
from switchscope.waveform import (Waveform, check_bipolar, cycle_slices, descending_steps, describe_waveform,
                                  split_cycles, triangle_waveform)

V = paper_voltage()  # +16 -> -16 (step 48) -> +15.33, the paper's 96 steps


def _falling_by_diff(v):
    """Independent reference of the branch masks, step by step: a point is on the falling sweep
    when the voltage falls to the next point; a repeated voltage keeps the label before it (the
    first ones the first real direction); the last point is left by the step back to the first
    when the waveform closes within a step and a half, else keeps the label before it."""
    n = v.size
    real = [i for i in range(n - 1) if v[i + 1] != v[i]]
    out = np.zeros(n, bool)
    for i in range(n - 1):
        if v[i + 1] != v[i]:
            out[i] = v[i + 1] < v[i]
        else:
            out[i] = out[i - 1] if i > 0 else v[real[0] + 1] < v[real[0]]
    out[-1] = out[-2]
    steps = sorted(abs(v[i + 1] - v[i]) for i in real)
    back = v[0] - v[-1]
    if back != 0 and abs(back) <= 1.5 * np.median(steps):
        out[-1] = back < 0
    return out


# ---------------------------------------------------------------------------------------------
# Accepted waveforms
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("voltage, start, first, n_cycles, per_cycle, vmax", [
    (V, "+Vmax", "falling", 1, 96, 16.0),
    (np.roll(V, -24), "0 V", "falling", 1, 96, 16.0),      # 0 -> -16 -> 16 -> 0
    (np.roll(V, 24), "0 V", "rising", 1, 96, 16.0),        # 0 -> 16 -> -16 -> 0
    (np.roll(V, 48), "-Vmax", "rising", 1, 96, 16.0),
    (np.roll(V, 7), "11.3 V", "rising", 1, 96, 16.0),
    (-V, "-Vmax", "rising", 1, 96, 16.0),                  # reflection v -> -v
    (-np.roll(V, 24), "0 V", "falling", 1, 96, 16.0),
    (V[::-1], "15.3 V", "falling", 1, 96, 16.0),           # time-reversed: one step below +Vmax
    (triangle_waveform(64, 16.0, start="0"), "0 V", "rising", 1, 64, 16.0),
    (triangle_waveform(200, 3.0, start="-max"), "-Vmax", "rising", 1, 200, 3.0),
    (triangle_waveform(64, 10.0, start="0", rising_first=False), "0 V", "falling", 1, 64, 10.0),
    (np.tile(V, 2), "+Vmax", "falling", 2, 96, 16.0),
    (np.tile(np.roll(V, 24), 3), "0 V", "rising", 3, 96, 16.0),
    (triangle_waveform(64, 5.0, start="-max", n_cycles=3), "-Vmax", "rising", 3, 64, 5.0),
    (np.repeat(V, 2), "+Vmax", "falling", 1, 192, 16.0),   # each DC value read twice (in/out of field)
    (np.r_[np.full(3, 16.0), V[1:48], np.full(4, -16.0), V[49:]], "+Vmax", "falling", 1, 101, 16.0),  # dwells
    (np.r_[np.linspace(0, 16, 25)[:-1], np.linspace(16, -16, 49)[:-1], np.linspace(-16, 0, 25)], "0 V",
     "rising", 1, 97, 16.0),                              # closed: ends where it starts
])
def test_bipolar_triangles_are_described(voltage, start, first, n_cycles, per_cycle, vmax):
    w = check_bipolar(voltage)
    assert isinstance(w, Waveform) and w.is_bipolar and w.kind == "bipolar triangle"
    assert (w.start, w.first_direction, w.n_cycles, w.steps_per_cycle) == (start, first, n_cycles, per_cycle)
    assert w.n_steps == voltage.size
    assert (w.v_min, w.v_max, w.amplitude) == pytest.approx((-vmax, vmax, vmax))
    assert str(w).startswith(f"bipolar triangle: {n_cycles} cycle")
    # the branches: the step that leaves each point decides, flat steps keep their sweep
    np.testing.assert_array_equal(descending_steps(voltage), _falling_by_diff(np.asarray(voltage, float)))
    if n_cycles == 1:
        np.testing.assert_array_equal(sweep_masks(voltage), descending_steps(voltage))


def test_jitter_of_repeated_dc_values_does_not_turn_the_sweep():
    """Each DC value read twice (in field, then out of field), measured with 20 mV of jitter
    (3 % of a step): the same waveform, branches and cycles as without it."""
    clean = np.repeat(V, 2)
    noisy = clean + np.random.default_rng(1).normal(0, 2e-2, clean.size)
    assert str(check_bipolar(noisy)) == str(check_bipolar(clean))
    np.testing.assert_array_equal(descending_steps(noisy), descending_steps(clean))
    three = np.tile(clean, 3) + np.random.default_rng(2).normal(0, 2e-2, 3 * clean.size)
    np.testing.assert_array_equal(split_cycles(three), np.arange(576).reshape(3, 192))


def test_triangle_waveform_default_is_the_papers_bit_for_bit():
    np.testing.assert_array_equal(triangle_waveform(), V)
    np.testing.assert_array_equal(triangle_waveform(64, 16.0, start="0"), np.roll(paper_voltage(64), -48))
    v = triangle_waveform(64, 16.0, start="0")
    assert v[0] == 0 and v[16] == 16 and v[48] == -16 and v[1] > 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(start="+max", rising_first=True), "can only fall first"),
    (dict(start="-max", rising_first=False), "can only rise first"),
    (dict(n_steps=66, start="0"), "multiple of 4"),
    (dict(n_steps=7), "even integer"),
    (dict(start="zero"), r"one of '\+max', '0', '-max'"),
])
def test_triangle_waveform_refuses_impossible_options(kwargs, match):
    with pytest.raises(DataError, match=match):
        triangle_waveform(**kwargs)


def test_sweep_masks_keep_their_behaviour_on_the_papers_waveform():
    d = sweep_masks(V)
    assert d[:48].all() and not d[48:].any()  # the bottom turning point starts the ascending sweep
    assert not sweep_masks(-V)[:48].any() and sweep_masks(-V)[48:].all()


# ---------------------------------------------------------------------------------------------
# Refused waveforms: one line that names what was found
# ---------------------------------------------------------------------------------------------
FORC = np.concatenate([np.r_[np.linspace(0, a, 2 * a + 1)[:-1], np.linspace(a, -a, 4 * a + 1)[:-1],
                             np.linspace(-a, 0, 2 * a + 1)[:-1]] for a in (6, 8, 10)])


@pytest.mark.parametrize("voltage, kind, match", [
    (np.linspace(-10, 10, 96), "ramp", "a ramp from -10 V to 10 V"),
    (np.linspace(16, -16, 96), "ramp", "a ramp from 16 V to -16 V (it changes direction 0 times)"),
    (FORC, "FORC", "the amplitude changes from cycle to cycle (6, 8, 10 V): a FORC waveform"),
    (np.zeros(96), "constant", "constant 0 V"),
    (np.full(50, 2.5), "constant", "constant 2.5 V"),
    (np.abs(V), "unipolar triangle", "a unipolar triangle from 0 V to 16 V, never below 0 V"),
    (np.r_[np.linspace(16, 1, 48), np.linspace(1, 16, 48)], "unipolar triangle", "must cross 0 V"),
    (np.random.default_rng(0).normal(size=96), "irregular", "irregular: it changes direction"),
    (np.r_[np.linspace(16, -16, 49), np.linspace(-16, 0, 25)[1:]], "partial cycles", "0.75 cycles"),
    (np.ravel(np.c_[V, np.zeros(96)]), "interleaved", "every other step is 0 V"),
    (np.r_[np.linspace(16, -16, 93), np.linspace(-16, 16, 3)], "too few steps", "each sweep needs at least 4"),
])
def test_other_waveforms_are_refused_naming_what_they_are(voltage, kind, match):
    w = describe_waveform(voltage)
    assert w.kind == kind and not w.is_bipolar and match in w.problem
    with pytest.raises(DataError, match="not a bipolar triangle") as err:
        check_bipolar(voltage)
    msg = str(err.value)
    assert match in msg and "\n" not in msg
    with pytest.raises(DataError, match="not a bipolar triangle"):
        sweep_masks(voltage)


def test_forc_with_fixed_top_names_its_moving_turning_points():
    v = np.concatenate([np.r_[np.linspace(10, b, 21)[:-1], np.linspace(b, 10, 21)[:-1]] for b in (-2, -4, -6)])
    w = describe_waveform(v)
    assert w.kind == "FORC" and "negative turning points change from cycle to cycle (-2, -4, -6 V)" in w.problem


def test_several_cycles_are_refused_where_one_loop_is_fitted():
    v = np.tile(np.r_[np.linspace(16, -16, 12), np.linspace(-16, 16, 12)], 4)
    assert check_bipolar(v).n_cycles == 4
    with pytest.raises(DataError, match="not one bipolar triangle: it holds 4 cycles of 24 steps"):
        sweep_masks(v)
    with pytest.raises(DataError, match="split_cycles"):
        check_bipolar(v, max_cycles=1)


def test_non_finite_voltage_is_refused():
    with pytest.raises(DataError, match="NaN or Inf"):
        describe_waveform(np.r_[V[:10], np.nan, V[11:]])


# ---------------------------------------------------------------------------------------------
# Cycles
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("one", [V, np.roll(V, 24), -np.roll(V, 24), triangle_waveform(64, 4.0, start="-max"),
                                 np.repeat(V, 2)])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_split_cycles_gives_each_cycles_steps(one, n):
    v = np.tile(one, n)
    index = split_cycles(v)
    assert index.shape == (n, one.size)
    np.testing.assert_array_equal(index.ravel(), np.arange(v.size))
    for row in index:
        np.testing.assert_array_equal(v[row], one)
    assert [s.stop - s.start for s in cycle_slices(v)] == [one.size] * n


def test_split_cycles_of_a_closed_waveform_says_to_drop_the_closing_step():
    v = np.r_[np.tile(np.roll(V, 24), 2), 0.0]
    assert [s.stop - s.start for s in cycle_slices(v)] == [96, 97]
    with pytest.raises(DataError, match=r"unequal length \(96, 97 steps\); drop the last step"):
        split_cycles(v)


# ---------------------------------------------------------------------------------------------
# Rotated and reflected real loops fit alike
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_200(mat_path):
    from switchscope.io import load

    ds = load(mat_path)
    X = ds["piezoresponse"].transpose("row", "col", "step").values.reshape(-1, ds.sizes["step"])
    v = np.asarray(ds["voltage"].values, float)
    X = X[np.isfinite(X).all(axis=1)][::18][:200]  # 200 pixels spread over the scan
    base = fit_loops(X, v, seed=0)
    return X, v, base


def _fit(X, v):
    return fit_loops(X, v, seed=0)


SWAP = {"coercive_pos": "coercive_neg", "coercive_neg": "coercive_pos"}
SAME = {"coercive_pos": "coercive_pos", "coercive_neg": "coercive_neg"}
# Tolerances from measurements on these 200 loops (float64, default options), with headroom:
#   rotations (roll by 1, 24, 47, 72 steps): the same steps, voltages and branches in another
#     order (a rotation keeps every step's branch, see descending_steps), so the fits agree to
#     rounding: median |dV| ~7e-8 V, 95th percentile <= 6e-5 V, |dR2| <= 1e-4 (one pixel of 200
#     in one rotation moved 0.21 V to a neighbouring optimum, R2 lower by 9.5e-5).
#   reflection v -> -v with the loop negated (also rotated by 24): the mirror problem with the
#     same branches; the model is mirror-symmetric, but its starting guesses are not, so poorly
#     constrained pixels land in other optima: median |dV| ~1e-4 V, 90th percentile 0.15 V,
#     |dR2| <= 1.1e-3, either way round.
#   time reversal: the loop is run the other way round, so each turning point (the sweep that
#     leaves it) joins the other branch, and the unclosed real loops differ there: median |dV|
#     <= 0.04 V, 90th percentile 0.51 V, |dR2| <= 4e-3.
CASES = {  # name: (transform of (X, v), metric pairs, voltage sign, median V, p90 V, max |dR2|, median dh)
    **{f"roll{k}": (lambda X, v, k=k: (np.roll(X, k, axis=1), np.roll(v, k)), SAME, 1.0,
                    1e-5, 1e-3, 1e-4, 1e-5) for k in (1, 24, 47, 72)},
    "reflect": (lambda X, v: (-X, -v), SWAP, -1.0, 1e-3, 0.25, 2e-3, 1e-3),
    "reflect_roll24": (lambda X, v: (-np.roll(X, 24, axis=1), -np.roll(v, 24)), SWAP, -1.0, 1e-3, 0.25, 2e-3, 1e-3),
    "reverse": (lambda X, v: (X[:, ::-1], v[::-1]), SWAP, 1.0, 0.1, 0.8, 6e-3, 1e-2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rotated_and_reflected_waveforms_give_the_same_fits(real_200, case):
    """Same loops, same fits: the fitter reads the branches from the voltage, so where the
    waveform starts, and which way it runs, must not matter (tolerances: see CASES)."""
    X, v, base = real_200
    transform, pairs, sign, tol_med, tol_p90, tol_r2, tol_h = CASES[case]
    res = _fit(*transform(X, v))
    ok = np.isfinite(base.r2) & np.isfinite(res.r2)
    assert ok.mean() > 0.97
    for new, old in pairs.items():
        d = np.abs(res.metrics[new] - sign * base.metrics[old])[ok]
        d = d[np.isfinite(d)]
        assert np.median(d) <= tol_med and np.percentile(d, 90) <= tol_p90, (
            case, new, np.median(d), np.percentile(d, 90))
    assert np.abs(res.r2 - base.r2)[ok].max() <= tol_r2, (case, np.abs(res.r2 - base.r2)[ok].max())
    dh = np.abs(res.metrics["height"] - base.metrics["height"])[ok] / base.metrics["height"][ok]
    assert np.median(dh) <= tol_h, (case, np.median(dh))
    if case.startswith("roll"):  # the fitted curves are the same curves, step for step
        k = int(case[4:])
        close = np.isclose(res.fit, np.roll(base.fit, k, axis=1), atol=1e-3 * np.nanmax(np.abs(X))).all(axis=1)
        assert close[ok].mean() >= 0.99


# ---------------------------------------------------------------------------------------------
# A 64-step waveform from 0 V, end to end
# ---------------------------------------------------------------------------------------------
def test_synthetic_waveform_options_keep_the_truth():
    from switchscope.synthetic import SyntheticConfig, make_dataset

    ds = make_dataset(10, 10, 0, n_steps=64, waveform_start="0", artifacts=False)
    v = ds["voltage"].values
    w = check_bipolar(v)
    assert (w.n_steps, w.start, w.first_direction, w.v_max) == (64, "0 V", "rising", 16.0)
    res = fit_loops(ds, channel="piezoresponse", n_clusters=0)
    ref = fit_loops(make_dataset(10, 10, 0, artifacts=False), channel="piezoresponse", n_clusters=0)
    for key in ("coercive_pos", "coercive_neg"):
        err = np.abs(res.metrics[key] - ds[f"truth_{key}"].values.ravel())
        err_ref = np.abs(ref.metrics[key] - ds[f"truth_{key}"].values.ravel())
        # as close to the truth as on the paper's waveform (the maps are the same film)
        assert np.median(err) <= np.median(err_ref) + 0.05 and np.median(err) < 0.4, (key, np.median(err))
    three = make_dataset(4, 4, 0, n_steps=32, v_max=8.0, waveform_start="-max", n_cycles=3, artifacts=False)
    assert split_cycles(three["voltage"].values).shape == (3, 32)
    curves = three["truth_piezoresponse"].values
    np.testing.assert_array_equal(curves[..., :32], curves[..., 32:64])  # the same loop each cycle
    with pytest.raises(Exception, match="rising_first"):
        SyntheticConfig(waveform_start="+max", rising_first=True)
    with pytest.raises(Exception, match="multiple of 4"):
        SyntheticConfig(waveform_start="0", n_steps=66)


@pytest.mark.filterwarnings("ignore::UserWarning")  # a 2-epoch network and NMF on 36 pixels warn, rightly
def test_64_steps_from_0_v_run_end_to_end(tmp_path):
    from switchscope.autoencoder import AutoencoderConfig
    from switchscope.interpret import InterpretConfig
    from switchscope.pipeline import run
    from switchscope.report.explorer import explorer_payload
    from switchscope.synthetic import make_dataset

    ds = make_dataset(6, 6, 0, n_steps=64, waveform_start="0", v_max=10.0)
    v = ds["voltage"].values
    configs = {"autoencoder": AutoencoderConfig(epochs=2, refine_epochs=1, hidden=8, batch_size=16),
               "interpret": InterpretConfig(n_levels=3)}
    out = run(ds, tmp_path / "o", configs=configs, seed=0, progress=False, log=lambda m: None)
    for name in ("piezoresponse_clean", "loop_coercive_pos", "pca_scores", "embedding_piezoresponse",
                 "reconstruction_piezoresponse", "generated_piezoresponse"):
        assert name in out, name
    np.testing.assert_array_equal(out["voltage"].values, v)
    # coercive voltages inside the data's own range, and near the truth
    cp = out["loop_coercive_pos"].values
    assert np.nanmax(np.abs(cp)) <= 10.0
    assert np.nanmedian(np.abs(cp - ds["truth_coercive_pos"].values)) < 1.0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["dataset"]["n_steps"] == 64
    # the explorer: the data's voltage, its own branches (0 -> +10 and -10 -> 0 rising, dashed)
    page = (tmp_path / "o" / "report" / "index.html").read_text(encoding="utf-8")
    data = page[page.index('id="ss-data">') + len('id="ss-data">'):]
    payload = json.loads(data[:data.index("</script>")])
    assert payload["voltage"] == pytest.approx(v.tolist())
    assert (min(payload["voltage"]), max(payload["voltage"])) == (-10.0, 10.0)
    desc = np.array(payload["descending"])
    assert not desc[:16].any() and desc[16:48].all() and not desc[48:].any()
    np.testing.assert_array_equal(desc, explorer_payload(out)["descending"])
    # the loop figures' branches come from the same voltage
    from switchscope.report.figures.loops import result_from_dataset

    res = result_from_dataset(out)
    np.testing.assert_array_equal(res.descending, desc)
    np.testing.assert_array_equal(res.voltage, v)


def test_pretrained_paper_needs_the_papers_step_order(tmp_path):
    from switchscope._errors import ConfigError
    from switchscope.waveform import check_paper_order

    check_paper_order(V)
    check_paper_order(V * 0.5)  # the amplitude does not matter (normalized loops)
    with pytest.raises(ConfigError, match="paper's waveform .* the data's is bipolar triangle: 1 cycle of 96 "
                                          "steps, -16 to 16 V, starting at 0 V"):
        check_paper_order(np.roll(V, 24))


def test_preflight_refuses_a_ramp_before_any_stage(tmp_path):
    from switchscope.pipeline import run
    from switchscope.synthetic import make_dataset

    ds = make_dataset(3, 3, 0).assign_coords(voltage=("step", np.linspace(-10, 10, 96)))
    logs = []
    with pytest.raises(DataError, match="not a bipolar triangle: a ramp from -10 V to 10 V"):
        run(ds, tmp_path / "o", stages=["loops"], progress=False, log=logs.append)
    assert not any("[1/" in m for m in logs)
    # two cycles back to back on the step axis become a cycle dim, and loops see their mean
    two = make_dataset(3, 3, 0, n_cycles=2)
    out = run(two, tmp_path / "o2", stages=["clean", "loops"], progress=False, log=logs.append)
    assert out.sizes["step"] == 96 and out.attrs["selection"] == "cycle=mean (default) of 2"
    # without the selection (a Dataset handed to preflight as is) loops refuse several cycles
    from switchscope.pipeline import preflight

    with pytest.raises(DataError, match="holds 2 cycles of 96 steps"):
        preflight(two, ["clean", "loops"], {}, explicit=True)
