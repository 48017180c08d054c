"""Tests of the sparse LSTM autoencoder: model, training, checkpoints, refinement, pipeline stage."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from switchscope import ConfigError, DataError, NotFittedError, OutputError
from switchscope.autoencoder import (
    Autoencoder,
    AutoencoderConfig,
    SparseLSTMAutoencoder,
    active_neurons,
    l1_penalty,
    lr_at,
    n_parameters,
)
from switchscope.autoencoder.model import phase_features
from switchscope.autoencoder.train import PAPER_BATCH, PAPER_L1

torch.set_num_threads(1)


def tiny(**kw) -> AutoencoderConfig:
    base = dict(hidden=8, depth=1, n_neurons=16, dropout=0.1, epochs=3, batch_size=32, lr=1e-2,
                max_seconds=None, refine_epochs=0, seed=0, threads=1)
    base.update(kw)
    return AutoencoderConfig(**base)


def toy(n: int = 200, steps: int = 24, seed: int = 0) -> np.ndarray:
    """Loops with two latent factors (amplitude, phase shift), normalized."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi, steps)
    amp = rng.uniform(0.5, 1.5, n)[:, None]
    shift = rng.uniform(-0.5, 0.5, n)[:, None]
    X = amp * np.sin(t[None] + shift)
    return (X - X.mean()) / X.std()


@pytest.fixture(scope="module")
def fitted() -> tuple[Autoencoder, np.ndarray]:
    X = toy()
    return Autoencoder(tiny(epochs=4)).fit(X), X


# -- model -------------------------------------------------------------------------------------

def test_paper_architecture_has_the_published_parameter_count():
    # Keras counts 670,929 (with the batch norms' moving statistics, one LSTM bias per gate);
    # torch keeps two LSTM biases (b_ih, b_hh) and the moving statistics as buffers.
    H, L, K = 64, 4, 16
    lstm = lambda i: 2 * (4 * H * (i + H) + 4 * H)  # noqa: E731  Keras: kernel, recurrent, bias
    keras = (lstm(1) + 3 * lstm(2 * H)) + 4 * 2 * H + (2 * H * K + K) + 4 * K \
        + (lstm(K) + 3 * lstm(2 * H)) + (2 * H + 1)
    assert keras == 670_929
    net = SparseLSTMAutoencoder(hidden=H, depth=L, n_neurons=K, dropout=0.2)
    extra_bias = 2 * L * 2 * 4 * H  # b_hh of every direction of every layer
    moving = 2 * 2 * H + 2 * K  # moving mean/var of the two batch norms
    assert n_parameters(net) == keras + extra_bias - moving


@pytest.mark.parametrize("steps", [7, 24, 37])
def test_any_sequence_length(steps):
    X = toy(n=40, steps=steps)
    ae = Autoencoder(tiny(epochs=1, val_fraction=0.2, center=False)).fit(X)
    assert ae.transform(X).shape == (40, 16)
    assert ae.reconstruct(X).shape == (40, steps)
    assert ae.decode(ae.transform(X)).shape == (40, steps)
    assert ae.decode(ae.transform(X), n_steps=11).shape == (40, 11)
    # The paper's network (no mean loop) takes a length it was not trained on.
    assert ae.transform(toy(n=5, steps=steps + 5)).shape == (5, 16)


def test_phase_features_closed_form():
    n, k = 37, 3
    F = phase_features(n, k, dtype=torch.float64).numpy()
    t = np.arange(n) / n
    for j in range(k):
        np.testing.assert_allclose(F[:, 2 * j], np.sin(2 * np.pi * (j + 1) * t), atol=1e-12)
        np.testing.assert_allclose(F[:, 2 * j + 1], np.cos(2 * np.pi * (j + 1) * t), atol=1e-12)


def test_phase_input_reaches_the_decoder_and_survives_save_load(tmp_path):
    # the decoder's first layer reads the embedding and 2 * n_phase phase features; their
    # weights act on the output (zeroing them changes it); the option is saved with the weights
    net = SparseLSTMAutoencoder(hidden=6, depth=1, n_neurons=4, dropout=0.0, n_phase=2).eval()
    first = net.decoder.rnn.layers[0]
    assert first.input_size == 4 + 4
    z = torch.rand(3, 4)
    with torch.no_grad():
        out = net.decode(z, 20)
        for w in (first.weight_ih_l0, first.weight_ih_l0_reverse):
            w[:, 4:] = 0.0
        assert not torch.allclose(net.decode(z, 20), out)
    X = toy(n=60, steps=24)
    ae = Autoencoder(tiny(epochs=2, n_phase=2)).fit(X)
    back = Autoencoder.load(ae.save(tmp_path / "m"))
    assert back.config.n_phase == 2
    np.testing.assert_array_equal(back.reconstruct(X), ae.reconstruct(X))
    with pytest.raises(ConfigError, match="n_phase"):
        AutoencoderConfig(n_phase=-1)


def test_centered_network_works_around_the_training_mean_loop():
    X = toy(n=50, steps=24) + np.linspace(-1, 1, 24)
    ae = Autoencoder(tiny(epochs=1, center=True)).fit(X)
    off = ae.model_.offset.numpy()
    np.testing.assert_allclose(off, X[ae.train_index_].mean(0), atol=1e-6)
    # reconstruct = decoder output + mean loop; the embedding sees the loop minus the mean loop
    x = torch.as_tensor(X[:4], dtype=torch.float32)
    with torch.no_grad():
        z = ae.model_.encoder(x - ae.model_.offset)
        rec = ae.model_.decoder(z, 24) + ae.model_.offset
    np.testing.assert_allclose(ae.transform(X[:4]), z.numpy(), atol=1e-6)
    np.testing.assert_allclose(ae.reconstruct(X[:4]), rec.numpy(), atol=1e-6)
    with pytest.raises(DataError, match="mean loop of 24 steps and cannot take 30"):
        ae.transform(toy(n=3, steps=30))
    with pytest.raises(DataError, match="center=True on 24 steps"):
        ae.decode(np.zeros((2, 16)), n_steps=30)


def test_embedding_is_relu_and_encoder_uses_both_directions():
    torch.manual_seed(0)
    net = SparseLSTMAutoencoder(hidden=6, depth=2, n_neurons=5, dropout=0.0).eval()
    x = torch.randn(4, 13)
    z = net.encoder(x)
    assert (z >= 0).all()
    # Keras Bidirectional(return_sequences=False): forward state after the last step joined with
    # the backward state after reading the whole sequence. Recompute it by hand from the layers.
    h = x.unsqueeze(-1)
    for layer in net.encoder.rnn.layers:
        h, _ = layer(h)
    ref = torch.cat([h[:, -1, :6], h[:, 0, 6:]], 1)
    # Changing the first step must move the backward half's final state: the backward LSTM reads it last.
    manual = torch.relu(net.encoder.dense(net.encoder.norm(ref)))
    torch.testing.assert_close(z, manual)


# -- training ----------------------------------------------------------------------------------

def test_not_fitted_error():
    ae = Autoencoder(tiny())
    with pytest.raises(NotFittedError, match="fit"):
        ae.transform(toy(n=4))
    with pytest.raises(NotFittedError):
        ae.decode(np.zeros((2, 16)))


def test_nan_input_says_where():
    X = toy(n=20)
    X[3, 5] = np.nan
    X[7, 1] = np.inf
    with pytest.raises(DataError, match=r"2 NaN/Inf value\(s\) in 2 pixel\(s\) \(first at pixel 3, step 5\)"):
        Autoencoder(tiny()).fit(X)


def test_bad_shape_and_config():
    with pytest.raises(DataError, match="shape"):
        Autoencoder(tiny()).fit(np.zeros(10))
    with pytest.raises(ConfigError, match=r"\[autoencoder\] lr must be a number > 0"):
        AutoencoderConfig(lr=0)
    with pytest.raises(ConfigError, match="schedule"):
        AutoencoderConfig(schedule="linear")
    with pytest.raises(ConfigError, match="channels"):
        AutoencoderConfig(channels=("piezo",))
    assert AutoencoderConfig.from_dict({"channels": ["resonance"]}).channels == ("resonance",)


def test_presets_carry_the_paper_values():
    p = AutoencoderConfig.preset("paper")
    assert (p.hidden, p.depth, p.n_neurons, p.dropout) == (64, 4, 16, 0.2)
    assert (p.lr, p.batch_size, p.l1_reduction) == (3e-5, 1800, "sum")
    assert p.n_phase == 0 and not p.center   # the published decoder reads the embedding alone
    assert p.l1_for("piezoresponse") == 1e-5 and p.l1_for("resonance") == 1e-4
    # Batch-agnostic reduction: the same per-loop strength as the paper's batch sum.
    f = AutoencoderConfig(l1_scale=1.0)
    assert f.l1_for("resonance") == pytest.approx(1e-4 * PAPER_BATCH)
    # l1_scale scales the paper's per-channel value, keeping the 10:1 ratio between channels.
    w = AutoencoderConfig(l1_scale=0.1)
    assert w.l1_for("resonance") == pytest.approx(1e-5 * PAPER_BATCH)
    assert w.l1_for("piezoresponse") == pytest.approx(1e-6 * PAPER_BATCH)
    assert AutoencoderConfig(l1=0.5, l1_scale=0.1).l1_for("resonance") == 0.5
    with pytest.raises(ConfigError):
        AutoencoderConfig(l1_scale=-1.0)
    # per-channel scales; channels not named keep the paper's strength; JSON round trip
    m = AutoencoderConfig(l1_scale={"resonance": 0.5})
    assert m.l1_for("resonance") == pytest.approx(0.5e-4 * PAPER_BATCH)
    assert m.l1_for("piezoresponse") == pytest.approx(1e-5 * PAPER_BATCH)
    back = AutoencoderConfig.from_dict(json.loads(json.dumps(m.to_dict())))
    assert back == m and hash(back) == hash(m)
    fast = AutoencoderConfig.preset("fast")
    assert fast.l1_scale_for("resonance") < 1 < fast.l1_scale_for("piezoresponse")
    # a fixed epoch count, never the clock, ends the preset's training; the average is kept
    assert fast.max_seconds is None and fast.epochs > 0 and 0 < fast.ema < 1
    for bad in ({"piezo": 1.0}, {"resonance": -1.0}, {"resonance": float("nan")}, "strong"):
        with pytest.raises(ConfigError, match="l1_scale"):
            AutoencoderConfig(l1_scale=bad)


def test_l1_penalty_closed_form():
    z = torch.tensor([[0.0, 1.5, 0.0], [2.0, 0.0, 0.25]])
    # sum |z| = 3.75 over 2 loops
    assert float(l1_penalty(z, 1e-4, "sum")) == pytest.approx(3.75e-4)
    assert float(l1_penalty(z, 1e-4, "mean")) == pytest.approx(3.75e-4 / 2)
    # Keras 2.1.5 semantics: a batch of 1800 identical loops sums 1800 times.
    zz = z[:1].expand(1800, 3)
    assert float(l1_penalty(zz, PAPER_L1["resonance"], "sum")) == pytest.approx(1e-4 * 1.5 * 1800, rel=1e-6)


def test_lr_schedule_values():
    assert lr_at(0.0, 1.0, "onecycle") == pytest.approx(0.1)
    assert lr_at(0.1, 1.0, "onecycle") == pytest.approx(1.0)
    assert lr_at(1.0, 1.0, "onecycle") == pytest.approx(0.01)
    assert lr_at(0.5, 1.0, "cosine") == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_at(0.7, 2e-3, "constant") == 2e-3


def test_active_neurons_matches_a_per_neuron_loop():
    rng = np.random.default_rng(1)
    Z = np.maximum(rng.normal(size=(3000, 6)), 0)
    Z[:, 1] = 0
    Z[:, 2] = 0
    Z[:2, 2] = 1.0  # fires on 2 of 3000 pixels: below 0.1 %
    Z[:, 3] = 1e-7  # below the threshold
    Z[:3, 4], Z[3:, 4] = 0.5, 0  # 3 pixels = 0.1 %: active
    ref = [sum(1 for v in Z[:, j] if v > 1e-6) >= math.ceil(0.001 * 3000) for j in range(6)]
    assert active_neurons(Z).tolist() == ref == [True, False, False, False, True, True]


def test_loss_decreases_on_a_toy_problem():
    X = toy(n=160)
    ae = Autoencoder(tiny(epochs=12, l1=0.0, dropout=0.0, schedule="constant", hidden=12)).fit(X)
    mse = [h["mse"] for h in ae.history_]
    assert mse[-1] < 0.5 * mse[0]
    assert ae.history_[-1]["val_mse"] < ae.history_[0]["val_mse"]


def test_seed_gives_identical_weights_and_other_seed_differs():
    X = toy(n=80)
    a = Autoencoder(tiny(epochs=2)).fit(X).model_.state_dict()
    b = Autoencoder(tiny(epochs=2)).fit(X).model_.state_dict()
    c = Autoencoder(tiny(epochs=2, seed=1)).fit(X).model_.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_inference_is_deterministic_without_dropout(fitted):
    ae, X = fitted
    assert ae.config.dropout > 0
    np.testing.assert_array_equal(ae.transform(X), ae.transform(X))
    np.testing.assert_array_equal(ae.reconstruct(X), ae.reconstruct(X))
    # Batch statistics must not leak into inference: one loop alone embeds as inside the batch.
    np.testing.assert_allclose(ae.transform(X[:1]), ae.transform(X)[:1], atol=1e-6)


def test_output_follows_input_type_and_dtype(fitted):
    ae, X = fitted
    Z64 = ae.transform(X)
    assert isinstance(Z64, np.ndarray) and Z64.dtype == np.float64
    assert ae.transform(X.astype(np.float32)).dtype == np.float32
    Zt = ae.transform(torch.as_tensor(X))
    assert isinstance(Zt, torch.Tensor) and Zt.dtype == torch.float64
    np.testing.assert_allclose(Zt.numpy(), Z64)
    # (n, steps, 1) as Keras takes it
    np.testing.assert_allclose(ae.reconstruct(X[:, :, None]), ae.reconstruct(X))
    with pytest.raises(DataError, match=r"Z must have shape \(n, 16\)"):
        ae.decode(np.zeros((3, 4)))


def test_save_load_round_trip(fitted, tmp_path):
    ae, X = fitted
    ae.save(tmp_path / "m")
    back = Autoencoder.load(tmp_path / "m")
    np.testing.assert_array_equal(back.transform(X), ae.transform(X))
    np.testing.assert_array_equal(back.reconstruct(X), ae.reconstruct(X))
    assert back.n_steps_ == X.shape[1] and back.config == ae.config
    assert [h["epoch"] for h in back.history_] == [h["epoch"] for h in ae.history_]
    assert {p.name for p in (tmp_path / "m").iterdir()} >= {"config.json", "model.safetensors", "metrics.csv"}


def test_folder_saved_before_the_phase_input_loads_as_the_paper_decoder(tmp_path):
    # a folder written before n_phase existed has no such key: its decoder has no phase input
    X = toy(n=60, steps=24)
    ae = Autoencoder(tiny(epochs=1, n_phase=0)).fit(X)
    d = ae.save(tmp_path / "old")
    meta = json.loads((d / "config.json").read_text())
    del meta["config"]["n_phase"]
    (d / "config.json").write_text(json.dumps(meta))
    back = Autoencoder.load(d)
    assert back.config.n_phase == 0
    np.testing.assert_array_equal(back.reconstruct(X), ae.reconstruct(X))


def test_corrupt_checkpoint_gives_a_clear_error(fitted, tmp_path):
    ae, _ = fitted
    d = ae.save(tmp_path / "m")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match="model.safetensors.*corrupt"):
        Autoencoder.load(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(DataError, match="config.json.*corrupt JSON"):
        Autoencoder.load(d)


def test_weights_of_another_architecture_are_refused(fitted, tmp_path):
    ae, _ = fitted
    d = ae.save(tmp_path / "m")
    other = Autoencoder(tiny(hidden=5, epochs=1)).fit(toy(n=20))
    other.save(tmp_path / "o")
    (d / "model.safetensors").write_bytes((tmp_path / "o" / "model.safetensors").read_bytes())
    with pytest.raises(DataError, match="has shape .* needs"):
        Autoencoder.load(d)


class Stop(Exception):
    pass


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resume_continues_exactly_where_it_stopped(tmp_path, ema):
    X = toy(n=90)
    cfg = tiny(epochs=5, ema=ema)
    full = Autoencoder(cfg).fit(X, checkpoint_dir=tmp_path / "full")

    def interrupt(row):
        if row["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        Autoencoder(cfg).fit(X, checkpoint_dir=tmp_path / "cut", callbacks=[interrupt])
    metrics = (tmp_path / "cut" / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 1 + 3  # header + epochs 0, 1, 2 on disk when it stopped
    with pytest.raises(OutputError, match="resume=True"):
        Autoencoder(cfg).fit(X, checkpoint_dir=tmp_path / "cut")
    resumed = Autoencoder(cfg).fit(X, checkpoint_dir=tmp_path / "cut", resume=True)
    assert [h["epoch"] for h in resumed.history_] == [0, 1, 2, 3, 4]
    for a, b in zip(resumed.history_, full.history_):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)
    sa, sb = resumed.model_.state_dict(), full.model_.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(DataError, match="hidden=8 .* config has 9"):
        Autoencoder(tiny(epochs=6, hidden=9)).fit(X, checkpoint_dir=tmp_path / "cut", resume=True)
    (tmp_path / "cut" / "last.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(DataError, match="last.safetensors.*corrupt"):
        Autoencoder(cfg.replace(epochs=6)).fit(X, checkpoint_dir=tmp_path / "cut", resume=True)


def test_weight_average_follows_its_formula():
    from switchscope.autoencoder.train import _WeightAverage

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    avg = _WeightAverage(net, 0.9)
    ref = {k: v.detach().clone().double() for k, v in net.state_dict().items()}
    for t in range(30):
        net.train()(torch.randn(8, 3))  # moves the batch-norm statistics and its step counter
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        avg.update(net, t)
        d = min(0.9, (1 + t) / (10 + t))
        for k, v in net.state_dict().items():
            ref[k] = v.double() if not v.is_floating_point() else d * ref[k] + (1 - d) * v.double()
    got = avg.model.state_dict()
    for k, v in ref.items():
        np.testing.assert_allclose(got[k].double().numpy(), v.numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
    assert int(got["1.num_batches_tracked"]) == 30
    assert not any(p.requires_grad for p in avg.model.parameters())


def test_weight_average_is_what_is_validated_and_kept():
    X = toy(n=120)
    plain = Autoencoder(tiny(epochs=4, dropout=0.0)).fit(X)
    ae = Autoencoder(tiny(epochs=4, dropout=0.0, ema=0.9)).fit(X)
    # the kept network is the average at the best epoch, scored as validated
    val = ae.val_index_
    R = ae.reconstruct(X)
    best = ae.history_[ae.best_epoch_]
    assert np.mean((R[val] - X[val]) ** 2) == pytest.approx(best["val_mse"], rel=1e-4)
    # the same steps as without the average (training losses equal), another network kept
    assert [h["loss"] for h in ae.history_] == [h["loss"] for h in plain.history_]
    assert not np.allclose(ae.transform(X), plain.transform(X))
    assert all(h["cpu_seconds"] > 0 for h in ae.history_)
    with pytest.raises(ConfigError, match="ema"):
        AutoencoderConfig(ema=1.0)


def test_bfloat16_training_steps_learn_and_keep_float32_weights(monkeypatch):
    from switchscope.autoencoder import train as tr

    X = toy(n=160)
    cfg = dict(epochs=12, l1=0.0, dropout=0.0, schedule="constant", hidden=12)
    fp32 = Autoencoder(tiny(**cfg)).fit(X)
    bf16 = Autoencoder(tiny(precision="bfloat16", **cfg)).fit(X)
    # other arithmetic, same learning: the losses differ but fall as far
    assert [h["loss"] for h in bf16.history_] != [h["loss"] for h in fp32.history_]
    assert bf16.history_[-1]["mse"] < 0.5 * bf16.history_[0]["mse"]
    assert bf16.history_[-1]["val_mse"] < 1.5 * fp32.history_[-1]["val_mse"]
    assert all(v.dtype == torch.float32 for v in bf16.model_.state_dict().values() if v.is_floating_point())
    assert bf16.reconstruct(X).dtype == X.dtype
    # the decoder refinement's steps run in bfloat16 too; it still never makes the decoder worse
    bf16.refine(X, 2)
    h = bf16.refine_history_
    val = bf16.val_index_
    got = np.mean((bf16.reconstruct(X)[val] - X[val]) ** 2)
    assert len(h) == 3 and got == pytest.approx(min(r["val_mse"] for r in h), rel=1e-4)
    # reproducible, and "auto" follows what oneDNN reports about the CPU (never a GPU)
    again = Autoencoder(tiny(precision="bfloat16", **cfg)).fit(X)
    assert [h["loss"] for h in again.history_] == [h["loss"] for h in bf16.history_]
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert tr._autocast_dtype("auto", cpu) is None
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert tr._autocast_dtype("auto", cpu) is torch.bfloat16
    assert tr._autocast_dtype("auto", torch.device("cuda")) is None
    assert tr._autocast_dtype("float32", cpu) is None
    with pytest.raises(ConfigError, match="precision"):
        AutoencoderConfig(precision="float16")


def test_wall_clock_budget_stops_training():
    X = toy(n=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ae = Autoencoder(tiny(epochs=100000, max_seconds=1.5)).fit(X)
    assert ae.stop_reason_ == "max_seconds"
    assert 1 <= ae.n_epochs_ < 100000
    assert ae.history_[-1]["seconds"] < 1.5 * 1.5 + 1.0


def test_early_stopping_by_patience(monkeypatch):
    X = toy(n=60)
    ae = Autoencoder(tiny(epochs=200, lr=1e-9, patience=2, schedule="constant")).fit(X)
    assert ae.stop_reason_ == "patience" and ae.n_epochs_ < 200
    # epochs inside the L1 ramp do not count: a validation loss that only rises stops a run
    # without a ramp after 1 + patience epochs; with the ramp over the first 10 of 20 epochs the
    # counter starts at epoch 9 (the first to end at 50 % of the run)
    from switchscope.autoencoder import train as tr

    calls = []
    monkeypatch.setattr(tr, "_evaluate", lambda *a, **k: (calls.append(1) or float(len(calls)), 0.0))
    cfg = dict(epochs=20, patience=2, l1=0.1)
    plain = Autoencoder(tiny(l1_warmup=0.0, **cfg)).fit(X)
    assert plain.stop_reason_ == "patience" and plain.n_epochs_ == 3 and plain.best_epoch_ == 0
    calls.clear()
    ramped = Autoencoder(tiny(l1_warmup=0.5, **cfg)).fit(X)
    assert ramped.stop_reason_ == "patience" and ramped.n_epochs_ == 11 and ramped.best_epoch_ == 0
    calls.clear()
    no_l1 = Autoencoder(tiny(l1_warmup=0.5, **{**cfg, "l1": 0.0})).fit(X)  # no penalty, no ramp
    assert no_l1.n_epochs_ == 3


def test_embedding_history_frames_are_the_checkpoint_embeddings(tmp_path):
    X = toy(n=60)
    ae = Autoencoder(tiny(epochs=6)).fit(X, checkpoint_dir=tmp_path / "c")
    epochs = [e for e, _ in ae.embedding_history_]
    assert epochs == sorted(epochs) and epochs[-1] == ae.best_epoch_
    # The last frame is the embedding of the kept (best) weights.
    np.testing.assert_allclose(ae.embedding_history_[-1][1], ae.transform(X.astype(np.float32)), atol=1e-6)
    back = Autoencoder.load(tmp_path / "c")
    assert [e for e, _ in back.embedding_history_] == epochs


def test_refinement_keeps_the_encoder_and_does_not_raise_decoder_loss():
    X = toy(n=120)
    # Without a validation split the kept decoder is scored on the training loops, where Adam
    # must make progress; with one, on the held-out loops, where it may not but never gets worse.
    for val_fraction in (0.0, 0.2):
        ae = Autoencoder(tiny(epochs=2, refine_epochs=0, val_fraction=val_fraction)).fit(X)
        enc = {k: v.clone() for k, v in ae.model_.encoder.state_dict().items()}
        dec = {k: v.clone() for k, v in ae.model_.decoder.state_dict().items()}
        pix = ae.val_index_ if val_fraction else np.arange(len(X))
        before = np.mean((ae.reconstruct(X[pix]) - X[pix]) ** 2)
        ae.refine(X, epochs=4)
        after = np.mean((ae.reconstruct(X[pix]) - X[pix]) ** 2)
        assert all(torch.equal(v, ae.model_.encoder.state_dict()[k]) for k, v in enc.items())
        assert after <= before + 1e-7
        hist = ae.refine_history_
        key = "val_mse" if val_fraction else "mse"
        assert len(hist) == 5 and hist[0][key] == pytest.approx(before, rel=1e-5)
        if not val_fraction:
            assert after < before
            assert any(not torch.equal(v, ae.model_.decoder.state_dict()[k]) for k, v in dec.items())


# -- pipeline stage ----------------------------------------------------------------------------

def _small_dataset(rows=6, cols=7, steps=20):
    from switchscope import make_dataset

    rng = np.random.default_rng(0)
    v = 16 * np.cos(np.linspace(0, 2 * np.pi, steps))
    base = np.tanh(np.linspace(-2, 2, steps))
    piezo = (rng.uniform(0.5, 1.5, (rows, cols, 1)) * base + 0.01 * rng.normal(size=(rows, cols, steps))) * 1e-4
    res = 1320 + 5 * base[None, None] ** 2 + rng.normal(size=(rows, cols, steps))
    return make_dataset({"piezoresponse": piezo, "resonance": res}, v)


def test_stage_adds_variables_models_summary_and_figures(tmp_path):
    from switchscope.stages import RunContext
    from switchscope.autoencoder.stage import stage

    ds = _small_dataset()
    ctx = RunContext(workdir=tmp_path, progress=False, seed=3)
    out = stage(ds, tiny(epochs=2, refine_epochs=1), ctx)
    assert set(ds.data_vars) < set(out.data_vars) and "embedding_resonance" not in ds
    for ch in ("piezoresponse", "resonance"):
        assert out[f"embedding_{ch}"].dims == ("row", "col", "neuron")
        assert out[f"embedding_{ch}"].shape == (6, 7, 16)
        assert out[f"reconstruction_{ch}"].dims == ("row", "col", "step")
        h = out[f"embedding_history_{ch}"]
        assert h.dims == ("checkpoint", "row", "col", "neuron") and "checkpoint_epoch" in h.coords
        s = ctx.summary["autoencoder"][ch]
        assert 0 <= s["active_neurons"] <= 16 and s["source"] == "trained"
        # MSE on normalized loops, recomputed from the stored arrays
        x = ds[ch].values
        std = x.std()
        ref = np.mean(((out[f"reconstruction_{ch}"].values - x) / std) ** 2)
        assert s["mse_all"] == pytest.approx(ref, rel=1e-5)
        assert {"config.json", "metrics.csv", "best.safetensors", "last.safetensors"} <= \
            {p.name for p in (tmp_path / "models" / ch).iterdir()}
        # the decoder the interpretation loads from models/<channel> works in the input's units
        from switchscope.interpret import load_decoder

        dec = load_decoder(ch, out, ctx)
        np.testing.assert_allclose(dec(out[f"embedding_{ch}"].values.reshape(-1, 16)),
                                   out[f"reconstruction_{ch}"].values.reshape(-1, 20), rtol=1e-4,
                                   atol=1e-5 * np.abs(x).max())
    # Both channels share one checkpoint axis; each frame is the channel's last improved
    # checkpoint up to that epoch (checked against the estimator's own history).
    epochs = out["checkpoint_epoch"].values
    for ch in ("piezoresponse", "resonance"):
        frames = out[f"embedding_history_{ch}"].values
        own = list(out[f"embedding_history_{ch}"].attrs["own_checkpoint_epochs"])
        assert set(own) <= set(epochs.tolist())
        for k, e in enumerate(epochs):
            last_own = max([ee for ee in own if ee <= e] or [own[0]])
            np.testing.assert_array_equal(frames[k], frames[list(epochs).index(last_own)])
    # the stage computes only; the report draws its figures from the results and models/
    assert not (tmp_path / "report").exists()
    from switchscope.report.figures import autoencoder as figures

    drawn = {p.name for _, p in figures.draw(out, tmp_path, run_dir=tmp_path)}
    assert {"embedding_piezoresponse.png", "training_resonance.png", "reconstruction_error.png"} <= drawn
    # reconstruction in the units of the input: piezoresponse ~1e-4, resonance ~1320 kHz
    assert abs(float(out["reconstruction_resonance"].mean()) - 1320) < 5
    assert out["reconstruction_resonance"].attrs["units"] == "kHz"


def test_stage_prefers_clean_and_respects_normalized_flag(tmp_path):
    from switchscope.stages import RunContext
    from switchscope.autoencoder.stage import stage

    ds = _small_dataset()
    clean = ds["resonance"].copy()
    clean.attrs = {"units": "1", "normalized": 1}
    ds["resonance_clean"] = (clean - clean.mean()) / clean.std()
    ds["resonance_clean"].attrs.update(normalized=1, units="1")
    ctx = RunContext(workdir=tmp_path, progress=False)
    out = stage(ds, tiny(epochs=1, channels=("resonance",)), ctx)
    s = ctx.summary["autoencoder"]["resonance"]
    assert s["variable"] == "resonance_clean" and (s["norm_mean"], s["norm_std"]) == (0.0, 1.0)
    assert "embedding_piezoresponse" not in out


def test_stage_nan_error_names_the_pixel(tmp_path):
    from switchscope.stages import RunContext
    from switchscope.autoencoder.stage import stage

    ds = _small_dataset()
    ds["resonance"][2, 3, 4] = np.nan
    with pytest.raises(DataError, match=r"resonance holds 1 NaN/Inf value\(s\) \(first at row 2, col 3, step 4\)"):
        stage(ds, tiny(epochs=1, channels=("resonance",)), RunContext(workdir=tmp_path, progress=False))


def test_stage_on_real_resonance_subset(real_resonance, tmp_path):
    """The real normalized resonance loops (a 10 x 10 corner, 96 steps) go through the stage."""
    from switchscope import make_dataset
    from switchscope.stages import RunContext
    from switchscope.autoencoder.stage import stage

    grid = real_resonance.reshape(60, 60, 96)[:10, :10]
    ds = make_dataset({"resonance": grid}, np.linspace(16, -16, 96), channel_attrs={"resonance": {"normalized": 1}})
    ctx = RunContext(workdir=tmp_path, progress=False)
    out = stage(ds, tiny(epochs=2, channels=("resonance",), l1=0.0), ctx)
    s = ctx.summary["autoencoder"]["resonance"]
    rec = out["reconstruction_resonance"].values
    # normalized=1: the loops are used as they are, so the MSE is on the stored values directly
    assert (s["norm_mean"], s["norm_std"]) == (0.0, 1.0)
    assert s["mse_all"] == pytest.approx(np.mean((rec - grid) ** 2), rel=1e-6)
    assert np.isfinite(rec).all() and rec.shape == (10, 10, 96)


def test_stage_pretrained_paper_uses_the_published_network(real_resonance, keras_dir, tmp_path):
    pytest.importorskip("switchscope.autoencoder.keras")
    from switchscope import make_dataset
    from switchscope.stages import RunContext
    from switchscope.autoencoder.keras import load_pretrained
    from switchscope.autoencoder.stage import stage

    grid = real_resonance.reshape(60, 60, 96)[:4, :5]
    ds = make_dataset({"resonance": grid}, np.linspace(16, -16, 96), channel_attrs={"resonance": {"normalized": 1}})
    ctx = RunContext(workdir=tmp_path, progress=False, pretrained="paper")
    out = stage(ds, tiny(channels=("resonance",)), ctx)
    net = load_pretrained("resonance")
    X = grid.reshape(-1, 96)
    np.testing.assert_allclose(out["embedding_resonance"].values.reshape(-1, 16), net.transform(X), atol=1e-6)
    np.testing.assert_allclose(out["reconstruction_resonance"].values.reshape(-1, 96), net.reconstruct(X), atol=1e-6)
    s = ctx.summary["autoencoder"]["resonance"]
    assert s["source"] == "paper" and s["epochs"] == 22570
    assert (tmp_path / "models" / "resonance" / "config.json").exists()
    short = make_dataset({"resonance": grid[:, :, :50]}, np.linspace(16, -16, 50),
                         channel_attrs={"resonance": {"normalized": 1}})
    with pytest.raises(DataError, match="takes 96 steps per loop, the data has 50"):
        stage(short, tiny(channels=("resonance",)), RunContext(workdir=tmp_path / "b", progress=False,
                                                               pretrained="paper"))
