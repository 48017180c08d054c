"""Interpretation: the generator rule against a loop-based reference, cross-channel generation,
mechanism statistics against closed forms, and the interpret stage."""

from __future__ import annotations

import math
import warnings
from unittest import mock

import numpy as np
import pytest
import xarray as xr

from switchscope import ConfigError, DataError, DataWarning
from switchscope.stages import RunContext
from switchscope.interpret import (
    InterpretConfig,
    active_neurons,
    cluster_separation,
    cross_generate,
    generate,
    interpret_stage,
    truth_correlations,
)


def _relu_embedding(n=80, k=5, seed=0):
    rng = np.random.default_rng(seed)
    Z = np.maximum(0.0, rng.normal(size=(n, k)))  # many exact zeros: ties at level 0
    Z[:, -1] = 0.0  # a silenced neuron
    return Z


class CountingDecoder:
    """A nonlinear known decoder that records how it was called."""

    def __init__(self, k, n_steps=12, seed=1):
        self.W = np.random.default_rng(seed).normal(size=(k, n_steps))
        self.calls = 0

    def __call__(self, Z):
        self.calls += 1
        return np.tanh(np.asarray(Z) @ self.W) + 0.1 * np.asarray(Z).sum(axis=1, keepdims=True)


def _reference(decode, Z, j, n_pixels, levels):
    """The paper's rule, written as plain loops: nearest pixels by (distance, index)."""
    curves, pixels, codes = [], [], []
    for v in levels:
        candidates = [i for i in range(Z.shape[0]) if np.isfinite(Z[i]).all()]
        chosen = sorted(candidates, key=lambda i: (abs(Z[i, j] - v), i))[:n_pixels]
        code = [sum(Z[i, m] for i in chosen) / len(chosen) for m in range(Z.shape[1])]
        code[j] = v
        pixels.append(chosen)
        codes.append(code)
        curves.append(decode(np.array([code]))[0])
    return np.array(curves), np.array(pixels), np.array(codes)


@pytest.mark.parametrize("n_pixels,n_levels", [(1, 2), (7, 5), (50, 4)])
def test_generate_matches_loop_reference(n_pixels, n_levels):
    Z = _relu_embedding()
    dec = CountingDecoder(Z.shape[1])
    gen = generate(dec, Z, n_pixels=n_pixels, n_levels=n_levels)
    assert dec.calls == 1  # one batched decoder call for every neuron and level
    np.testing.assert_array_equal(gen.swept, [True, True, True, True, False])
    ref_dec = CountingDecoder(Z.shape[1])
    for j in range(4):
        levels = [Z[:, j].max() * i / (n_levels - 1) for i in range(n_levels)]
        curves, pixels, codes = _reference(ref_dec, Z, j, n_pixels, levels)
        np.testing.assert_allclose(gen.levels[j], levels, rtol=1e-12)
        np.testing.assert_array_equal(gen.pixels[j], pixels)
        np.testing.assert_allclose(gen.codes[j], codes, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(gen.curves[j], curves, rtol=1e-10, atol=1e-12)
    assert np.isnan(gen.curves[4]).all() and (gen.pixels[4] == -1).all()


def test_generate_value_range_number_sequence_and_grid_input():
    Z = _relu_embedding(n=48)
    dec = CountingDecoder(Z.shape[1])
    g1 = generate(dec, Z.reshape(6, 8, -1), n_pixels=3, n_levels=3, value_range=2.5, neurons=[1])
    np.testing.assert_allclose(g1.levels[1], [0, 1.25, 2.5])
    assert g1.swept.tolist() == [False, True, False, False, False]
    curves, pixels, _ = _reference(dec, Z, 1, 3, [0, 1.25, 2.5])
    np.testing.assert_array_equal(g1.pixels[1], pixels)  # grid input flattens row-major
    np.testing.assert_allclose(g1.curves[1], curves, rtol=1e-10)
    g2 = generate(dec, Z, n_pixels=2, n_levels=2, value_range=[1, 2, 3, 4, 5], neurons=[0, 4])
    np.testing.assert_allclose(g2.levels[[0, 4], -1], [1, 5])


def test_generate_skips_nonfinite_pixels_and_accepts_torch_decoder():
    torch = pytest.importorskip("torch")
    Z = _relu_embedding(n=40)
    Z[[3, 9], 0] = np.nan
    W = torch.tensor(np.random.default_rng(2).normal(size=(Z.shape[1], 6)))

    def decode(z):
        return torch.as_tensor(z) @ W

    with pytest.warns(DataWarning, match="2 pixels have a non-finite embedding"):
        gen = generate(decode, Z, n_pixels=10, n_levels=3)
    assert not np.isin(gen.pixels, [3, 9]).any()
    _, pixels, codes = _reference(lambda c: c @ W.numpy(), Z, 0, 10, gen.levels[0])
    np.testing.assert_array_equal(gen.pixels[0], pixels)
    np.testing.assert_allclose(gen.curves[0], codes @ W.numpy(), rtol=1e-10)


def test_generate_bad_input():
    Z = _relu_embedding(n=20)
    dec = CountingDecoder(Z.shape[1])
    with pytest.raises(DataError, match="n_pixels=50 exceeds the 20 pixels"):
        generate(dec, Z, n_pixels=50)
    with pytest.raises(ConfigError, match="value_range must be 'max'"):
        generate(dec, Z, n_pixels=2, value_range="min")
    with pytest.raises(ConfigError, match=r"neurons holds \[7\]"):
        generate(dec, Z, n_pixels=2, neurons=[7])
    with pytest.raises(ConfigError, match="n_levels must be an integer >= 2"):
        generate(dec, Z, n_pixels=2, n_levels=1)
    with pytest.raises(DataError, match="decoder returned shape"):
        generate(lambda z: np.zeros(5), Z, n_pixels=2)


def test_active_neurons():
    Z = np.zeros((10, 3))
    Z[:, 1] = np.linspace(0, 1, 10)
    Z[0, 2] = 1e-12  # numerically silent
    assert active_neurons(Z).tolist() == [False, True, False]
    assert active_neurons(np.full((4, 2), np.nan)).tolist() == [False, False]


def test_cross_generate_decodes_mean_target_embedding_of_same_pixels():
    rng = np.random.default_rng(3)
    Zs = np.maximum(0, rng.normal(size=(30, 4)))
    Zt = rng.normal(size=(30, 3))
    gen = generate(CountingDecoder(4), Zs, n_pixels=5, n_levels=3, neurons=[0, 2])
    dec_t = CountingDecoder(3, seed=5)
    cross = cross_generate(dec_t, Zt, gen.pixels)
    assert dec_t.calls == 1
    for j in (0, 2):
        for li in range(3):
            mean = np.array([[sum(Zt[i, m] for i in gen.pixels[j, li]) / 5 for m in range(3)]])
            np.testing.assert_allclose(cross[j, li], dec_t(mean)[0], rtol=1e-10)
    assert np.isnan(cross[[1, 3]]).all()
    with pytest.raises(DataError, match="both channels must share one grid"):
        cross_generate(dec_t, Zt[:10], gen.pixels)


def _spearman_reference(x, y):
    """Pearson correlation of average ranks (ties share their mean rank)."""
    def ranks(a):
        r = np.empty(len(a))
        order = sorted(range(len(a)), key=lambda i: a[i])
        i = 0
        while i < len(a):
            k = i
            while k + 1 < len(a) and a[order[k + 1]] == a[order[i]]:
                k += 1
            for m in range(i, k + 1):
                r[order[m]] = (i + k) / 2 + 1
            i = k + 1
        return r

    rx, ry = ranks(list(x)), ranks(list(y))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / math.sqrt((rx**2).sum() * (ry**2).sum()))


def test_truth_correlations_against_rank_reference():
    rng = np.random.default_rng(4)
    n = 64
    truth_a = rng.normal(size=n)
    truth_b = np.round(rng.normal(size=n), 1)  # ties
    truth_b[5] = np.nan  # ignored for that pair only
    Z = np.zeros((n, 3))
    Z[:, 0] = np.exp(truth_a)  # monotone in truth_a: rho exactly 1
    Z[:, 1] = rng.normal(size=n) - truth_b * 0.5
    rho, p = truth_correlations(Z, {"a": truth_a, "b": truth_b.reshape(8, 8)})
    assert rho.shape == (3, 2)
    assert rho[0, 0] == pytest.approx(1.0)
    ok = np.isfinite(truth_b)
    assert rho[1, 1] == pytest.approx(_spearman_reference(Z[ok, 1], truth_b[ok]), abs=1e-12)
    # Z[5, 1] is NaN too (it was built from truth_b), so pixel 5 drops out of that pair as well
    assert rho[1, 0] == pytest.approx(_spearman_reference(Z[ok, 1], truth_a[ok]), abs=1e-12)
    assert np.isnan(rho[2]).all()  # the silent neuron
    assert p[0, 0] < 1e-10
    with pytest.raises(DataError, match="truth map 'c' has 3 pixels"):
        truth_correlations(Z, {"c": np.zeros(3)})


def test_cluster_separation_closed_form():
    z = np.array([1.0, 2, 3, 7, 8, 9, 5])
    labels = np.array([0, 0, 0, 1, 1, 1, -1])  # -1: unlabelled, ignored
    Z = np.stack([z, np.zeros_like(z), z[::-1]], axis=1)
    sep = cluster_separation(Z, labels)
    # grand mean 5; SS_between = 3*9 + 3*9 = 54; SS_total = 58; SS_within = 4
    assert sep["eta2"][0] == pytest.approx(54 / 58)
    assert sep["f"][0] == pytest.approx((54 / 1) / (4 / 4))
    assert np.isnan(sep["eta2"][1]) and np.isnan(sep["f"][1])
    # z[::-1] puts the unlabelled 5 first and shifts the others: recompute by hand
    zr, lr = z[::-1][labels >= 0], labels[labels >= 0]
    g0, g1 = zr[lr == 0], zr[lr == 1]
    ssb = 3 * (g0.mean() - zr.mean()) ** 2 + 3 * (g1.mean() - zr.mean()) ** 2
    assert sep["eta2"][2] == pytest.approx(ssb / ((zr - zr.mean()) ** 2).sum())
    with pytest.raises(DataError, match="labels have 3 pixels"):
        cluster_separation(Z, labels[:3])


def test_config_validation_and_toml_shapes():
    cfg = InterpretConfig.from_dict({"channels": ["resonance"], "n_levels": 5})
    assert cfg.channels == ("resonance",)
    assert InterpretConfig.preset("paper").n_pixels == 50
    with pytest.raises(ConfigError, match=r"\[interpret\] n_pixels must be an integer >= 1 and <= 1000000, got 0"):
        InterpretConfig(n_pixels=0)
    with pytest.raises(ConfigError, match=r"\[interpret\] range must be one of 'max', got 'min'"):
        InterpretConfig(range="min")
    with pytest.raises(ConfigError, match=r"\[interpret\] range must be a number > 0"):
        InterpretConfig(range=-1.0)
    with pytest.raises(ConfigError, match=r"\[interpret\] channels must be a list of channel names"):
        InterpretConfig(channels=("piezo",))
    with pytest.raises(ConfigError, match=r"\[interpret\] movies must be true or false"):
        InterpretConfig(movies="yes")


def _stage_dataset(rows=6, cols=5, n_steps=10, k=4, seed=0):
    rng = np.random.default_rng(seed)
    v = np.concatenate([np.linspace(16, -16, n_steps // 2), np.linspace(-16, 16, n_steps - n_steps // 2)])
    Zp = np.maximum(0, rng.normal(size=(rows, cols, k)))
    Zp[..., -1] = 0
    Zr = np.maximum(0, rng.normal(size=(rows, cols, k)))
    truth = Zp[..., 0] * 2 + 1  # neuron 0 tracks it exactly
    clusters = (Zp[..., 1] > np.median(Zp[..., 1])).astype(int)
    ds = xr.Dataset(
        {
            "embedding_piezoresponse": (("row", "col", "neuron"), Zp),
            "embedding_resonance": (("row", "col", "neuron"), Zr),
            "embedding_history_piezoresponse": (("checkpoint", "row", "col", "neuron"),
                                                np.stack([Zp * 0.5, Zp])),
            "truth_coercive_pos": (("row", "col"), truth),
            "cluster_divisive": (("row", "col"), clusters),
        },
        coords={"voltage": ("step", v), "checkpoint_epoch": ("checkpoint", [3, 9])},
    )
    return ds


def test_interpret_stage_adds_contract_variables(tmp_path):
    ds = _stage_dataset()
    Wp = np.random.default_rng(1).normal(size=(4, 10))
    Wr = np.random.default_rng(2).normal(size=(4, 10))
    ctx = RunContext(workdir=tmp_path)
    decoders = {"piezoresponse": lambda z: z @ Wp, "resonance": lambda z: 1300 + z @ Wr}
    cfg = InterpretConfig(n_pixels=4, n_levels=3)
    with mock.patch("switchscope.interpret.load_decoder", lambda ch, ds, ctx: decoders.get(ch)):
        out = interpret_stage(ds, cfg, ctx)
    assert set(ds.data_vars) < set(out.data_vars) and "generated_piezoresponse" not in ds

    g = out["generated_piezoresponse"]
    assert g.dims == ("neuron", "level", "step") and g.shape == (4, 3, 10)
    assert out["generated_piezoresponse_level"].dims == ("neuron", "level")
    ref = generate(decoders["piezoresponse"], ds["embedding_piezoresponse"].values,
                   n_pixels=4, n_levels=3)
    np.testing.assert_allclose(g.values, ref.curves)
    np.testing.assert_array_equal(out["generated_piezoresponse_pixels"].values, ref.pixels)
    cross = out["generated_piezoresponse_from_resonance"].values
    pix = out["generated_resonance_pixels"].values
    Zp = ds["embedding_piezoresponse"].values.reshape(-1, 4)
    np.testing.assert_allclose(cross[0, 2], Zp[pix[0, 2]].mean(axis=0) @ Wp, rtol=1e-10)

    assert out["mechanism_truth_piezoresponse"].sel(truth="coercive_pos")[0] == pytest.approx(1.0)
    assert out["mechanism_cluster_eta2_piezoresponse"].dims == ("neuron",)
    s = ctx.summary["interpret"]
    assert s["channels"]["piezoresponse"]["active_neurons"] == [0, 1, 2]
    assert s["channels"]["piezoresponse"]["best_truth"]["0"] == {"truth": "coercive_pos", "rho": 1.0}
    assert s["channels"]["piezoresponse"]["most_separating_neuron"] == 1

    # the stage computes only; the report draws figures and movies from its results
    assert not (tmp_path / "report").exists()
    from switchscope.report.figures import draw_figures

    drawn = draw_figures(out, tmp_path / "report", run_dir=tmp_path, fps=2.0)
    figs = {p.name for pairs in drawn.values() for _, p in pairs}
    assert {"embedding_piezoresponse.png", "generated_piezoresponse.png",
            "generated_piezoresponse_from_resonance.png"} <= figs
    import imageio.v2 as iio2
    import imageio.v3 as iio

    gif = iio.imread(ctx.movies / "generator_piezoresponse.gif", index=None)
    assert gif.shape[0] == 3 and gif.std() > 5  # one frame per level, not blank
    assert not np.array_equal(gif[0], gif[-1])
    training = iio.imread(ctx.movies / "training_piezoresponse.gif", index=None)
    assert training.shape[0] == 2
    mp4 = ctx.movies / "generator_piezoresponse.mp4"
    with iio2.get_reader(mp4) as reader:
        assert sum(1 for _ in reader) == 3
    assert sorted(p.name for p in ctx.movies.iterdir()) == sorted(f for f in figs if f.endswith((".gif", ".mp4")))


def test_interpret_stage_without_decoder_warns_and_still_labels(tmp_path):
    ds = _stage_dataset()
    ctx = RunContext(workdir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        with pytest.raises(DataWarning, match="no saved network for 'piezoresponse'"):
            interpret_stage(ds, InterpretConfig(), ctx)
    with pytest.warns(DataWarning):
        out = interpret_stage(ds, InterpretConfig(channels=("piezoresponse",)), ctx)
    assert "generated_piezoresponse" not in out
    assert "mechanism_truth_piezoresponse" in out
