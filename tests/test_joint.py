"""Tests of the joint multichannel autoencoder: one network on (n_pixels, n_steps, n_channels)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from switchscope import ConfigError, DataError
from switchscope.autoencoder import Autoencoder, AutoencoderConfig, SparseLSTMAutoencoder

torch.set_num_threads(1)


def tiny(**kw) -> AutoencoderConfig:
    base = dict(hidden=8, depth=1, n_neurons=16, dropout=0.0, epochs=2, batch_size=32, lr=1e-2,
                refine_epochs=1, seed=0, threads=1)
    base.update(kw)
    return AutoencoderConfig(**base)


def toy2(n: int = 120, steps: int = 24, seed: int = 0) -> np.ndarray:
    """Two normalized channels per step sharing one latent factor: (n, steps, 2)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi, steps)
    a = rng.uniform(0.5, 1.5, (n, 1))
    X = np.stack([a * np.sin(t), a**2 * np.cos(t)], axis=2) + 0.01 * rng.normal(size=(n, steps, 2))
    return ((X - X.mean(axis=(0, 1))) / X.std(axis=(0, 1))).astype(np.float32)


# -- model ---------------------------------------------------------------------------------------

def test_joint_network_shapes():
    net = SparseLSTMAutoencoder(hidden=8, depth=2, n_neurons=16, dropout=0.0, n_phase=2, n_channels=3).eval()
    x = torch.randn(5, 30, 3)
    rec, z = net(x)
    assert rec.shape == (5, 30, 3) and z.shape == (5, 16) and bool((z >= 0).all())
    assert net.decode(z, 12).shape == (5, 12, 3)
    net.set_offset(x.mean(0))  # a mean loop per channel
    assert net(x)[0].shape == (5, 30, 3)
    with pytest.raises(DataError, match="mean loop of 30 steps"):
        net.decode(z, 12)


def test_single_channel_network_is_unchanged():
    """n_channels=1 keeps the single-channel layers, shapes and weight names (the published twin's)."""
    a, b = SparseLSTMAutoencoder(8, 1, 16, 0.0), SparseLSTMAutoencoder(8, 1, 16, 0.0, n_channels=1)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    assert a(torch.randn(4, 10))[0].shape == (4, 10)


# -- estimator -----------------------------------------------------------------------------------

def test_joint_estimator_shapes_save_load_round_trip(tmp_path):
    X = toy2()
    ae = Autoencoder(tiny(), channel="piezoresponse+resonance").fit(X)
    Z = ae.transform(X)
    assert Z.shape == (120, 16) and Z.dtype == np.float32
    assert ae.reconstruct(X).shape == (120, 24, 2) and ae.decode(Z).shape == (120, 24, 2)
    assert ae.n_channels_ == 2
    # the joint penalty is the strongest of its channels' (the paper's resonance value)
    assert ae.l1_ == tiny().l1_for("resonance") > tiny().l1_for("piezoresponse")
    ae.save(tmp_path / "m")
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert files == {"config.json", "model.safetensors", "metrics.csv"}  # no pickle
    assert json.loads((tmp_path / "m" / "config.json").read_text())["n_channels"] == 2
    back = Autoencoder.load(tmp_path / "m")
    assert back.n_channels_ == 2 and back.channel == "piezoresponse+resonance"
    np.testing.assert_array_equal(back.transform(X), Z)
    np.testing.assert_array_equal(back.reconstruct(X), ae.reconstruct(X))
    with pytest.raises(DataError, match=r"1 channel\(s\) per step, this autoencoder was fitted on 2"):
        back.transform(X[..., 0])
    single = Autoencoder(tiny(epochs=1, refine_epochs=0)).fit(X[..., 0])
    with pytest.raises(DataError, match=r"2 channel\(s\) per step, this autoencoder was fitted on 1"):
        single.transform(X)


def test_joint_checkpoint_refuses_single_channel_resume(tmp_path):
    X = toy2(n=40)
    Autoencoder(tiny(epochs=1, refine_epochs=0)).fit(X, checkpoint_dir=tmp_path / "ck")
    with pytest.raises(DataError, match="was trained on data of shape"):
        Autoencoder(tiny(epochs=2, refine_epochs=0)).fit(X[..., 0], checkpoint_dir=tmp_path / "ck", resume=True)


def test_joint_option_is_validated():
    assert AutoencoderConfig().joint is False
    with pytest.raises(ConfigError, match="joint"):
        AutoencoderConfig(joint="yes")


# -- stage, generator, report --------------------------------------------------------------------

def test_joint_through_pipeline_run_interpret_and_report(tmp_path):
    from switchscope import pipeline
    from switchscope.interpret import InterpretConfig, load_joint_decoder
    from switchscope.stages import RunContext
    from switchscope.synthetic import SyntheticConfig

    configs = {"synthetic": SyntheticConfig(rows=8, cols=8),
               "autoencoder": tiny(joint=True, batch_size=16),
               "interpret": InterpretConfig(n_levels=3, movies=False)}
    with pytest.warns(Warning):  # tiny networks: not better than the mean loop
        ds = pipeline.run(None, tmp_path / "o", configs=configs,
                          stages=["clean", "autoencoder", "interpret", "score", "report"],
                          progress=False, log=lambda m: None)
    n_steps = ds.sizes["step"]
    emb = ds["embedding_joint"]
    assert emb.dims == ("row", "col", "neuron") and emb.shape == (8, 8, 16)
    assert emb.attrs["channels"] == "piezoresponse resonance"
    for ch in ("piezoresponse", "resonance"):
        # the per-channel networks are still there, under their own names
        assert ds[f"embedding_{ch}"].shape == (8, 8, 16)
        rec = ds[f"reconstruction_joint_{ch}"]
        assert rec.dims == ("row", "col", "step") and rec.shape == (8, 8, n_steps)
        gen = ds[f"generated_joint_{ch}"]
        assert gen.dims == ("neuron", "level", "step") and gen.shape == (16, 3, n_steps)
        swept = np.isfinite(gen.values).all(axis=(1, 2))
        assert swept.any() and np.array_equal(swept, (ds["generated_joint_pixels"].values >= 0).all(axis=(1, 2)))
    # resonance generated in kHz, like the data
    assert abs(float(np.nanmean(ds["generated_joint_resonance"].values))
               - float(ds["resonance_clean"].mean())) < 20
    assert "mechanism_truth_joint" in ds
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    joint = summary["autoencoder"]["joint"]
    assert joint["channels"] == ["piezoresponse", "resonance"]
    assert set(joint["mse_per_channel"]) == {"piezoresponse", "resonance"}
    assert joint["mse_all"] == pytest.approx(np.mean(list(joint["mse_per_channel"].values())))
    assert 0 <= joint["active_neurons"] <= 16
    assert "best_neuron_corr_joint" in summary["synthetic"]["scores"]
    assert (tmp_path / "o" / "models" / "joint" / "model.safetensors").is_file()
    # the saved decoder gives back the stored reconstruction, in units
    ctx = RunContext(workdir=tmp_path / "o", progress=False)
    channels, decode = load_joint_decoder(ds, ctx)
    R = decode(emb.values.reshape(64, 16))
    assert channels == ["piezoresponse", "resonance"] and R.shape == (64, n_steps, 2)
    np.testing.assert_allclose(R[..., 1], ds["reconstruction_joint_resonance"].values.reshape(64, -1),
                               rtol=1e-5)
    figs = {p.name for p in (tmp_path / "o" / "report").rglob("*.png")}
    assert {"embedding_joint.png", "generated_joint_piezoresponse.png", "generated_joint_resonance.png"} <= figs


def test_joint_needs_two_channels(tmp_path):
    from switchscope import make_dataset
    from switchscope.autoencoder.stage import stage
    from switchscope.stages import RunContext

    rng = np.random.default_rng(0)
    ds = make_dataset({"piezoresponse": rng.normal(size=(5, 5, 12))}, 16 * np.cos(np.linspace(0, 6.28, 12)))
    with pytest.warns(Warning, match="joint = true needs at least two channels"):
        out = stage(ds, tiny(joint=True, refine_epochs=0), RunContext(workdir=tmp_path, progress=False))
    assert "embedding_joint" not in out and "embedding_piezoresponse" in out
