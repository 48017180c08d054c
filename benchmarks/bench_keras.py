"""Benchmark: the published Keras networks through the batched PyTorch twin vs a per-pixel loop.

For each published network (resonance on ``mixed_pzt_resonance_normalized.npy``, piezoresponse on
the real loops cleaned with ``switchscope.preprocess.clean`` and normalized globally), in this
process:

* ours: :func:`switchscope.autoencoder.keras.load_pretrained`, all 3600 pixels batched;
* baseline: a per-pixel numpy forward pass with Keras 2.1.5 semantics (the way one would run the
  network without a batched hard_sigmoid LSTM), timed on ``--baseline-pixels`` pixels and
  extrapolated to 3600; its outputs also give the twin's maximum deviation.

Recorded: wall times, reconstruction MSE of the autoencoder's own decoder and of the refined
decoder on all pixels and on the held-out 10% (``numpy.random.default_rng(0).permutation(3600)``,
last 360), active embedding neurons, the log's val_loss at the checkpoint's epoch.

    python benchmarks/bench_keras.py [--threads 2] [--batch-size 256] [--baseline-pixels 40]
                                     [--out benchmarks/results/keras.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
KERAS = DATA / "pretrained_keras"
RESULTS = ROOT / "benchmarks" / "results" / "keras.json"


def _hs(x: np.ndarray) -> np.ndarray:
    return np.clip(0.2 * x + 0.5, 0.0, 1.0)


def _lstm(seq: np.ndarray, W: np.ndarray, U: np.ndarray, b: np.ndarray) -> np.ndarray:
    u = U.shape[0]
    h = np.zeros(u)
    c = np.zeros(u)
    out = np.empty((len(seq), u))
    for t, x in enumerate(seq):
        z = x @ W + h @ U + b
        c = _hs(z[u:2 * u]) * c + _hs(z[:u]) * np.tanh(z[2 * u:3 * u])
        h = _hs(z[3 * u:]) * np.tanh(c)
        out[t] = h
    return out


def reference_forward(weights: dict[str, np.ndarray], loop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel Keras forward pass of the paper's autoencoder: (embedding (16,), loop (96,))."""

    def w(name: str) -> np.ndarray:
        return weights[f"{name.split('/')[0]}/{name}:0"]

    def bilstm(seq: np.ndarray, k: int, seqs: bool) -> np.ndarray:
        roles = ("kernel", "recurrent_kernel", "bias")
        f = _lstm(seq, *(w(f"bidirectional_{k}/forward_lstm_{k}/{p}") for p in roles))
        b = _lstm(seq[::-1], *(w(f"bidirectional_{k}/backward_lstm_{k}/{p}") for p in roles))
        return np.concatenate([f, b[::-1]], 1) if seqs else np.concatenate([f[-1], b[-1]])

    def bn(x: np.ndarray, name: str) -> np.ndarray:
        return ((x - w(f"{name}/moving_mean")) / np.sqrt(w(f"{name}/moving_variance") + 1e-3)
                * w(f"{name}/gamma") + w(f"{name}/beta"))

    y = loop[:, None]
    for k in (1, 2, 3):
        y = bilstm(y, k, True)
    y = bn(bilstm(y, 4, False), "batch_normalization_1")
    z = np.maximum(y @ w("encoding/kernel") + w("encoding/bias"), 0.0)
    y = np.repeat(bn(z, "batch_normalization_2")[None], loop.size, 0)
    for k in (5, 6, 7, 8):
        y = bilstm(y, k, True)
    return z, (y @ w("time_distributed_1/kernel") + w("time_distributed_1/bias"))[:, 0]


# ---------------------------------------------------------------------------------------------
# "Before": the twin's LSTM as it was up to commit 030db9d (pixels in the middle, per-step
# allocations), kept here only so that before/after run in the same process.
# ---------------------------------------------------------------------------------------------

def _old_prepare_weights(
    kernel: torch.Tensor, recurrent_kernel: torch.Tensor, bias: torch.Tensor, recurrent_activation: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The library's rearranged weights, untransposed (the old layout: pixels in the middle)."""
    from switchscope.autoencoder._hardlstm import prepare_weights

    Wt, Ut, bt = prepare_weights(kernel, recurrent_kernel, bias, recurrent_activation)
    return Wt.transpose(1, 2).contiguous(), Ut.transpose(1, 2).contiguous(), bt.squeeze(-1).contiguous()


def _old_lstm_stack(
    x: torch.Tensor,
    kernel: torch.Tensor,
    recurrent_kernel: torch.Tensor,
    bias: torch.Tensor,
    *,
    act: Callable[[torch.Tensor], torch.Tensor] = torch.tanh,
    recurrent_act: Callable[[torch.Tensor], torch.Tensor] | None = None,
    return_sequences: bool = True,
) -> torch.Tensor:
    d, n, steps, _ = x.shape
    units = recurrent_kernel.shape[1]
    # The input projection has no recurrence: one large product (bias fused) for all steps.
    xw = torch.baddbmm(bias.unsqueeze(1), x.reshape(d, n * steps, -1), kernel).view(d, n, steps, -1)
    h = x.new_zeros(d, n, units)
    c = x.new_zeros(d, n, units)
    outputs = [] if return_sequences else None
    for t in range(steps):
        z = torch.baddbmm(xw[:, :, t], h, recurrent_kernel)
        if recurrent_act is None:
            gates = z[..., : 3 * units].clamp_(0.0, 1.0)
        else:
            gates = recurrent_act(z[..., : 3 * units])
        i, f, o = gates.split(units, dim=-1)
        c = torch.addcmul(f * c, i, act(z[..., 3 * units:]))
        h = o * act(c)
        if outputs is not None:
            outputs.append(h)
    if outputs is None:
        return h
    return torch.stack(outputs, dim=2)


def _old_layer_forward(self, x):
    import torch

    if not hasattr(self, "_old_weights"):
        self._old_weights = _old_prepare_weights(self.kernel.detach(), self.recurrent_kernel.detach(),
                                                 self.bias.detach(), self.spec["recurrent_activation"])
    seq = self.spec["return_sequences"]
    xs = torch.stack([x, torch.flip(x, dims=[1])]) if self.spec["bidirectional"] else x.unsqueeze(0)
    out = _old_lstm_stack(xs, *self._old_weights, act=self._act, recurrent_act=self._rec_act, return_sequences=seq)
    if not self.spec["bidirectional"]:
        return out[0]
    fwd, bwd = out[0], out[1]
    if seq:
        bwd = torch.flip(bwd, dims=[1])
    return torch.cat([fwd, bwd], dim=-1)  # the published networks merge by concat


def time_twin(net, X: np.ndarray, batch_size: int, implementation: str) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Embeddings, reconstructions, wall and CPU seconds of transform + decode with one implementation."""
    from switchscope.autoencoder.keras._layers import _LSTMLayer

    new_forward = _LSTMLayer.forward
    if implementation == "before":
        _LSTMLayer.forward = _old_layer_forward
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        Z = net.transform(X, batch_size=batch_size)
        R = net.autoencoder.decode(Z, batch_size=batch_size)
        return Z, R, time.perf_counter() - t0, time.process_time() - c0
    finally:
        _LSTMLayer.forward = new_forward


def _weights(path: Path) -> dict[str, np.ndarray]:
    import h5py

    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, np.asarray(o[()], np.float64))
                     if isinstance(o, h5py.Dataset) else None)
    return out


def _data(channel: str) -> np.ndarray:
    if channel == "resonance":
        return np.load(DATA / "mixed_pzt_resonance_normalized.npy", allow_pickle=False)
    import scipy.io

    from switchscope.preprocess import clean, normalize

    raw = scipy.io.loadmat(DATA / "mixed_pzt_piezoresponse_loops.mat")["Loopdata_mixed"].reshape(3600, -1)
    return normalize(clean(raw.astype(float), channel="piezoresponse"))[0]


def _log(channel: str, epoch: int) -> dict[str, float]:
    with open(KERAS / f"{channel}_autoencoder_log.csv") as fh:
        for row in csv.DictReader(fh):
            if int(row["epoch"]) == epoch - 1:  # checkpoint names count epochs from 1
                return {"loss": float(row["loss"]), "val_loss": float(row["val_loss"])}
    return {}


def run(channel: str, batch_size: int, n_base: int) -> dict:
    from switchscope.autoencoder.keras import load_pretrained

    X = _data(channel)
    val = np.random.default_rng(0).permutation(len(X))[-len(X) // 10:]
    t0 = time.perf_counter()
    net = load_pretrained(channel, KERAS)
    t_load = time.perf_counter() - t0
    Zb, Rb, t_before, cpu_before = time_twin(net, X, batch_size, "before")
    Z, R, t_ours, cpu_ours = time_twin(net, X, batch_size, "after")
    t0 = time.perf_counter()
    Rr = net.decode(Z, batch_size=batch_size)
    t_refined = time.perf_counter() - t0

    weights = _weights(net.autoencoder.weights_path)
    pixels = np.random.default_rng(1).choice(len(X), n_base, replace=False)
    t0, c0 = time.perf_counter(), time.process_time()
    ref = [reference_forward(weights, X[p]) for p in pixels]
    t_base = (time.perf_counter() - t0) / n_base * len(X)
    cpu_base = (time.process_time() - c0) / n_base * len(X)
    dev = max(float(np.abs(Z[pixels] - np.array([r[0] for r in ref])).max()),
              float(np.abs(R[pixels] - np.array([r[1] for r in ref])).max()))

    def mse(A: np.ndarray, idx=slice(None)) -> float:
        return float(np.mean((A[idx] - X[idx]) ** 2))

    S = np.abs(Z).sum(1)
    return {
        "n_pixels": int(len(X)),
        "epoch": net.autoencoder.epoch,
        "refined_decoder_epoch": net.decoder.epoch,
        "seconds_load": t_load,
        "seconds_ours_autoencoder_all_pixels": t_ours,
        "seconds_ours_refined_decoder_all_pixels": t_refined,
        "seconds_baseline_per_pixel_numpy_extrapolated": t_base,
        # CPU seconds are less sensitive than wall time to other processes on a shared machine.
        "cpu_seconds_ours_autoencoder_all_pixels": cpu_ours,
        "cpu_seconds_baseline_extrapolated": cpu_base,
        "speedup": t_base / t_ours,
        # The same twin before the feature-major rewrite, timed in this process just before.
        "seconds_before_autoencoder_all_pixels": t_before,
        "cpu_seconds_before_autoencoder_all_pixels": cpu_before,
        "speedup_vs_before": t_before / t_ours,
        "cpu_speedup_vs_before": cpu_before / cpu_ours,
        "max_abs_difference_before_after": max(float(np.abs(Z - Zb).max()), float(np.abs(R - Rb).max())),
        "max_abs_deviation_float32_twin_vs_float64_reference": dev,
        "mse_all_autoencoder": mse(R),
        "mse_val_autoencoder": mse(R, val),
        "mse_all_refined": mse(Rr),
        "mse_val_refined": mse(Rr, val),
        "active_neurons": int((Z.max(0) > 0).sum()),
        "l1_penalty": net.l1_penalty,
        "l1_term_per_pixel": float(net.l1_penalty * S.mean()),
        "l1_term_keras_batch_of_360": float(net.l1_penalty * 360 * S.mean()),
        "log_at_epoch": _log(channel, net.autoencoder.epoch),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--channel", choices=("resonance", "piezoresponse", "both"), default="both")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch CPU threads (the twin runs one part of each batch per thread)")
    ap.add_argument("--batch-size", type=int, default=256, help="pixels per forward pass of the twin")
    ap.add_argument("--baseline-pixels", type=int, default=40, help="pixels the per-pixel baseline runs")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    channels = ("resonance", "piezoresponse") if args.channel == "both" else (args.channel,)
    load_before = os.getloadavg()
    results = {"threads": args.threads, "batch_size": args.batch_size, "python": sys.version.split()[0],
               "torch": torch.__version__, "machine": platform.machine(),
               "networks": {ch: run(ch, args.batch_size, args.baseline_pixels) for ch in channels}}
    # The machine is shared: the load average (1, 5, 15 min) says how much of it the run had.
    results["load_average_before"], results["load_average_after"] = list(load_before), list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    for ch, r in results["networks"].items():
        print(f"{ch:14s} before {r['seconds_before_autoencoder_all_pixels']:.1f} s "
              f"({r['cpu_seconds_before_autoencoder_all_pixels']:.1f} CPU s); max |after - before| "
              f"{r['max_abs_difference_before_after']:.1e}")
        print(f"{ch:14s} twin {r['seconds_ours_autoencoder_all_pixels']:.1f} s "
              f"({r['cpu_seconds_ours_autoencoder_all_pixels']:.1f} CPU s) vs per-pixel numpy "
              f"{r['seconds_baseline_per_pixel_numpy_extrapolated']:.0f} s "
              f"({r['cpu_seconds_baseline_extrapolated']:.0f} CPU s) (x{r['speedup']:.0f}); max dev "
              f"{r['max_abs_deviation_float32_twin_vs_float64_reference']:.1e}; MSE all/val autoencoder "
              f"{r['mse_all_autoencoder']:.5f}/{r['mse_val_autoencoder']:.5f}, refined "
              f"{r['mse_all_refined']:.5f}/{r['mse_val_refined']:.5f}; active {r['active_neurons']}; "
              f"log val_loss {r['log_at_epoch'].get('val_loss', float('nan')):.5f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
