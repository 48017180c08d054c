"""Benchmark: training the sparse LSTM autoencoder from scratch on a CPU, against the published nets.

For each channel (real data, the paper's 90/10 pixel split: the last 10 % of
``numpy.random.default_rng(0).permutation(3600)`` held out), in one process:

* ``ours``: :class:`switchscope.autoencoder.Autoencoder` with the ``fast`` preset,
  trained for ``--minutes`` of wall-clock time (training plus decoder refinement);
* ``paper_training`` (baseline): the paper's architecture and training values (Adam lr 3e-5,
  batch 1800, batch-summed L1) trained for ``--baseline-minutes`` on the same machine;
* ``published``: the paper's published network (:func:`switchscope.autoencoder.keras.load_pretrained`),
  its own reconstruction and the one through its refined decoder, on the same held-out pixels
  (marked missing when the Keras twin is not available).

Recorded for each: held-out reconstruction MSE (normalized units) and its curve against wall time,
the number of active embedding neurons (> 1e-6 on at least 0.1 % of the pixels), epochs, seconds.
Results go to ``benchmarks/results/autoencoder.json`` (one entry per channel, merged with what is
there); a summary is printed.

Usage::

    python benchmarks/bench_autoencoder.py --channel resonance --minutes 10
    python benchmarks/bench_autoencoder.py --channel piezoresponse --minutes 10 --baseline-minutes 10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / ".." / "shared" / "data").resolve()
RESULTS = ROOT / "benchmarks" / "results" / "autoencoder.json"


def load_loops(channel: str) -> np.ndarray:
    """Normalized real loops (3600, 96) of a channel, as the paper trained on them."""
    if channel == "resonance":
        return np.load(DATA / "mixed_pzt_resonance_normalized.npy", allow_pickle=False).astype(np.float64)
    import scipy.io

    from switchscope.preprocess import clean, normalize

    raw = scipy.io.loadmat(DATA / "mixed_pzt_piezoresponse_loops.mat")["Loopdata_mixed"].astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        X = clean(raw.reshape(-1, raw.shape[-1]), channel="piezoresponse")
    return normalize(X)[0]


def split(n: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(0).permutation(n)
    n_val = int(round(0.1 * n))
    return np.sort(perm[: n - n_val]), np.sort(perm[n - n_val:])


def train_one(name: str, X: np.ndarray, channel: str, cfg: Any, val: np.ndarray) -> dict[str, Any]:
    from switchscope.autoencoder import Autoencoder, active_neurons, n_parameters

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ae = Autoencoder(cfg, channel=channel).fit(X, progress=sys.stderr.isatty())
    seconds = time.perf_counter() - t0
    if not np.array_equal(ae.val_index_, val):
        raise SystemExit("internal error: the estimator's validation pixels differ from the paper split")
    R = ae.reconstruct(X)
    Z = ae.transform(X)
    curve = [{"seconds": round(h["seconds"], 2), "epoch": h["epoch"], "val_mse": h["val_mse"], "mse": h["mse"]}
             for h in ae.history_]
    refine = ae.refine_history_
    return {
        "name": name,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()},
        "n_parameters": n_parameters(ae.model_),
        "l1_used": ae.l1_,
        "val_mse": float(np.mean((R[val] - X[val]) ** 2)),
        "train_mse": float(np.mean((np.delete(R, val, 0) - np.delete(X, val, 0)) ** 2)),
        "val_mse_before_refinement": refine[0]["val_mse"] if refine else None,
        "active_neurons": int(active_neurons(Z).sum()),
        "epochs": ae.n_epochs_,
        "best_epoch": ae.best_epoch_,
        "stop_reason": ae.stop_reason_,
        "seconds": seconds,
        "seconds_per_epoch": ae.history_[-1]["seconds"] / max(ae.n_epochs_, 1),
        "curve": curve,
    }


def published(X: np.ndarray, channel: str, val: np.ndarray) -> dict[str, Any]:
    from switchscope.autoencoder import active_neurons

    try:
        from switchscope.autoencoder.keras import load_pretrained
    except ImportError as exc:
        return {"missing": f"switchscope.autoencoder.keras not available ({exc})"}
    t0 = time.perf_counter()
    net = load_pretrained(channel)
    Z = net.transform(X)
    out: dict[str, Any] = {"active_neurons": int(active_neurons(Z).sum())}
    for dec in ("autoencoder", "refined"):
        R = net.reconstruct(X, decoder=dec)
        out[f"val_mse_{dec}"] = float(np.mean((R[val] - X[val]) ** 2))
        out[f"all_mse_{dec}"] = float(np.mean((R - X) ** 2))
    out["epoch"] = getattr(net.autoencoder, "epoch", None)
    out["seconds_inference"] = time.perf_counter() - t0
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--channel", choices=("resonance", "piezoresponse", "both"), default="resonance")
    ap.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget of our training")
    ap.add_argument("--baseline-minutes", type=float, default=None,
                    help="budget of the paper-training baseline (default: --minutes; 0 skips it)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads for both runs (default: ours 1, as its config; the paper baseline 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a field of our config (JSON value), e.g. --set hidden=48")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--no-published", action="store_true",
                    help="keep the published networks' figures already in --out instead of recomputing them "
                         "(their inference takes minutes on a busy CPU)")
    args = ap.parse_args(argv)

    from switchscope.autoencoder import AutoencoderConfig

    ours_threads = args.threads or 1
    base_threads = args.threads or 2
    torch.set_num_threads(base_threads)
    overrides = {}
    for item in args.set:
        k, _, v = item.partition("=")
        overrides[k] = json.loads(v)
    base_minutes = args.minutes if args.baseline_minutes is None else args.baseline_minutes
    channels = ["resonance", "piezoresponse"] if args.channel == "both" else [args.channel]
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for channel in channels:
        X = load_loops(channel)
        _, val = split(len(X))
        entry: dict[str, Any] = {
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "threads": {"ours": ours_threads, "paper_training": base_threads},
                        "torch": torch.__version__, "load_average": os.getloadavg()},
            "data": {"n_pixels": int(X.shape[0]), "n_steps": int(X.shape[1]), "n_val": int(len(val)),
                     "split": "last 10% of numpy.random.default_rng(0).permutation(n)"},
        }
        previous = results.get(channel, {}).get("published")
        if args.no_published:
            entry["published"] = previous or {"missing": "skipped (--no-published) and no earlier figures"}
        else:
            entry["published"] = published(X, channel, val)
        ours = AutoencoderConfig.preset("fast", seed=args.seed, max_seconds=60 * args.minutes,
                                        threads=ours_threads, **overrides)
        entry["ours"] = train_one("ours", X, channel, ours, val)
        if base_minutes > 0:
            paper = AutoencoderConfig.preset("paper", seed=args.seed, max_seconds=60 * base_minutes,
                                             threads=base_threads, refine_epochs=0)
            entry["paper_training"] = train_one("paper_training", X, channel, paper, val)
        entry["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        results[channel] = entry
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))

        pub = entry["published"]
        print(f"\n== {channel}: {X.shape[0]} loops x {X.shape[1]} steps, {len(val)} held out, "
              f"threads ours {ours_threads} / baseline {base_threads}, load {os.getloadavg()[0]:.1f}")
        if "missing" in pub:
            print(f"published network: missing ({pub['missing']})")
        else:
            print(f"published network (epoch {pub['epoch']}): held-out MSE {pub['val_mse_autoencoder']:.5f} "
                  f"(refined decoder {pub['val_mse_refined']:.5f}), active neurons {pub['active_neurons']}/16")
        for key in ("ours", "paper_training"):
            if key in entry:
                r = entry[key]
                print(f"{key:15s}: held-out MSE {r['val_mse']:.5f}, active neurons {r['active_neurons']}/16, "
                      f"{r['epochs']} epochs in {r['seconds']:.0f} s ({r['seconds_per_epoch']:.1f} s/epoch), "
                      f"{r['n_parameters']} parameters")
                marks = [c for c in r["curve"] if c["val_mse"] != ""]
                shown = sorted({max(0, min(len(marks) - 1, round(f * len(marks)) - 1)) for f in (0.1, 0.25, 0.5, 1.0)})
                for i in shown if marks else []:
                    c = marks[i]
                    print(f"    after {c['seconds']:7.1f} s (epoch {c['epoch']}): val MSE {c['val_mse']:.5f}")
    print(f"\nresults written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
