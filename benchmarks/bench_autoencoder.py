"""Benchmark: training the sparse LSTM autoencoder from scratch on a CPU, against the published nets.

For each channel (real data, the paper's 90/10 pixel split: the last 10 % of
``numpy.random.default_rng(0).permutation(3600)`` held out), in one process:

* ``ours``: :class:`switchscope.autoencoder.Autoencoder` with the ``fast`` preset (a fixed
  number of epochs; ``--minutes`` bounds it by the wall clock instead, training plus decoder
  refinement);
* ``paper_training`` (baseline): the paper's architecture and training values (Adam lr 3e-5,
  batch 1800, batch-summed L1) trained for ``--baseline-minutes`` on the same machine;
* ``published``: the paper's published network (:func:`switchscope.autoencoder.keras.load_pretrained`),
  its own reconstruction and the one through its refined decoder, on the same held-out pixels
  (marked missing when the Keras twin is not available).

Recorded for each: held-out reconstruction MSE (normalized units) and its curve against wall and
CPU time (``time.process_time``: all threads of the process, which a busy shared machine inflates
less than the wall clock), the first epoch whose held-out MSE is at or below the published
network's (``to_published``: epoch, wall and CPU seconds), how far the curve climbs back above its
best so far after the first quarter of the epochs (``max_rebound``), where early stopping with a
patience of 10 epochs would have stopped (``early_stop``: counting every epoch;
``early_stop_after_ramp``: as the trainer counts, only epochs after the L1 ramp), the number of
active embedding neurons (> 1e-6 on at least 0.1 % of the pixels), epochs, seconds. The
machine's load average is recorded before and after.
Results go to ``benchmarks/results/autoencoder.json`` (one entry per channel, merged with what is
there); a summary is printed.

Usage::

    python benchmarks/bench_autoencoder.py --channel both --baseline-minutes 0 --no-published
    python benchmarks/bench_autoencoder.py --channel resonance --minutes 10 --baseline-minutes 10
    python benchmarks/bench_autoencoder.py --epoch-cost --out benchmarks/results/autoencoder_bf16.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
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
#: Held-out MSE of the published networks' own decoders on the paper split (measured by this script
#: through the Keras twin; used when ``--no-published`` finds no earlier figures).
PUBLISHED_VAL_MSE = {"resonance": 0.010925551087517424, "piezoresponse": 0.0025252684256982724}
PATIENCE = 10


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


def curve_figures(curve: list[dict[str, Any]], target: float | None, ramp_epochs: float = 0.0) -> dict[str, Any]:
    """Time to ``target``, the largest rebound above the best so far, and where early stopping
    (patience :data:`PATIENCE`) would stop, from a curve of ``val_mse`` per epoch: counting every
    epoch (``early_stop``), and as the trainer counts, only the epochs that end after the L1
    ramp, the first ``ramp_epochs`` (``early_stop_after_ramp``)."""
    vals = [c["val_mse"] for c in curve if c["val_mse"] != ""]
    if not vals:
        return {}
    hit = next((c for c in curve if target is not None and c["val_mse"] != "" and c["val_mse"] <= target), None)
    best, rebound, skip = math.inf, 0.0, len(vals) // 4  # the first quarter (warm-up) is not judged
    stop, bad, stop_r, bad_r = None, 0, None, 0
    for i, v in enumerate(vals):
        if i >= skip and best < math.inf:
            rebound = max(rebound, v / best - 1)
        if v < best:
            best, bad, bad_r = v, 0, 0
        else:
            bad += 1
            if stop is None and bad >= PATIENCE:
                stop = i
            if i + 1 >= ramp_epochs:
                bad_r += 1
                if stop_r is None and bad_r >= PATIENCE:
                    stop_r = i
    at = stop if stop is not None else len(vals) - 1
    at_r = stop_r if stop_r is not None else len(vals) - 1
    return {"target_val_mse": target,
            "to_published": None if hit is None else {k: hit[k] for k in ("epoch", "seconds", "cpu_seconds")},
            "max_rebound": rebound,
            "early_stop": {"patience": PATIENCE, "stopped": stop is not None, "epoch": at,
                           "best_val_mse_then": min(vals[:at + 1]), "best_val_mse_full_run": min(vals)},
            "early_stop_after_ramp": {"patience": PATIENCE, "ramp_epochs": ramp_epochs, "stopped": stop_r is not None,
                                      "epoch": at_r, "best_val_mse_then": min(vals[:at_r + 1]),
                                      "best_val_mse_full_run": min(vals)}}


def train_one(name: str, X: np.ndarray, channel: str, cfg: Any, val: np.ndarray,
              target: float | None = None) -> dict[str, Any]:
    from switchscope.autoencoder import Autoencoder, active_neurons, n_parameters

    load = os.getloadavg()
    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ae = Autoencoder(cfg, channel=channel).fit(X, progress=sys.stderr.isatty())
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    if not np.array_equal(ae.val_index_, val):
        raise SystemExit("internal error: the estimator's validation pixels differ from the paper split")
    R = ae.reconstruct(X)
    Z = ae.transform(X)
    curve = [{"seconds": round(h["seconds"], 2), "cpu_seconds": round(float(h.get("cpu_seconds") or 0.0), 2),
              "epoch": h["epoch"], "val_mse": h["val_mse"], "mse": h["mse"]} for h in ae.history_]
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
        "cpu_seconds": cpu_seconds,
        "seconds_per_epoch": ae.history_[-1]["seconds"] / max(ae.n_epochs_, 1),
        "cpu_seconds_per_epoch": curve[-1]["cpu_seconds"] / max(ae.n_epochs_, 1),
        "load_average": {"before": load, "after": os.getloadavg()},
        **curve_figures(curve, target, cfg.l1_warmup * cfg.epochs if cfg.l1_warmup else 0.0),
        "curve": curve,
    }


def epoch_cost(batches: list[int], hiddens: list[int], steps: int = 20) -> list[dict[str, Any]]:
    """CPU seconds per epoch of 3240 resonance loops (one thread): forward, backward and Adam steps of
    the ``fast`` network (one bidirectional layer, 4 phase harmonics, centered), float32 and under
    bfloat16 autocast (the trainer's ``precision``), for each batch size and width; ``steps`` timed
    batches after 3 warm-up ones, scaled to an epoch."""
    from switchscope.autoencoder.model import SparseLSTMAutoencoder

    torch.set_num_threads(1)
    X = torch.as_tensor(load_loops("resonance")[:3240], dtype=torch.float32)
    rows = []
    for hidden in hiddens:
        for bs in batches:
            for precision in ("float32", "bfloat16"):
                torch.manual_seed(0)
                m = SparseLSTMAutoencoder(hidden, 1, 16, 0.0, 0.1, 4)
                m.set_offset(X.mean(0))
                opt = torch.optim.Adam(m.parameters(), lr=1e-3)

                def run(n: int) -> None:
                    for b in range(n):
                        lo = (b * bs) % (len(X) - bs + 1)
                        xb = X[lo:lo + bs]
                        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
                            rec, z = m(xb)
                        loss = torch.mean((rec.float() - xb) ** 2) + 0.1 * z.float().abs().sum() / len(xb)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
                        opt.step()

                run(3)
                c = time.process_time()
                run(steps)
                per_epoch = (time.process_time() - c) / steps * math.ceil(len(X) / bs)
                rows.append({"hidden": hidden, "batch_size": bs, "precision": precision,
                             "cpu_seconds_per_epoch": per_epoch, "load_average": os.getloadavg()[0]})
                print(f"hidden {hidden:3d}, batch {bs:4d}, {precision:8s}: {per_epoch:.2f} CPU s per epoch", flush=True)
    return rows


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
    ap.add_argument("--minutes", type=float, default=None,
                    help="wall-clock budget of our training (default: none, the preset's fixed epoch count)")
    ap.add_argument("--preset", default="fast", help="preset of our config (default: fast)")
    ap.add_argument("--baseline-minutes", type=float, default=None,
                    help="budget of the paper-training baseline (default: --minutes, else 3; 0 skips it)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads for both runs (default: ours 1, as its config; the paper baseline 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a field of our config (JSON value), e.g. --set hidden=48")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--no-published", action="store_true",
                    help="keep the published networks' figures already in --out instead of recomputing them "
                         "(their inference takes minutes on a busy CPU)")
    ap.add_argument("--epoch-cost", action="store_true",
                    help="only measure CPU seconds per training epoch against batch size, width and precision "
                         "(written to the --out file's 'epoch_cost' key) and exit")
    args = ap.parse_args(argv)
    if args.epoch_cost:
        rows = epoch_cost([32, 64, 128, 256, 512], [32]) + epoch_cost([64], [16, 48, 64])
        results = json.loads(args.out.read_text()) if args.out.exists() else {}
        results["epoch_cost"] = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                             "torch": torch.__version__},
                                 "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
        return 0

    from switchscope.autoencoder import AutoencoderConfig

    ours_threads = args.threads or 1
    base_threads = args.threads or 2
    torch.set_num_threads(base_threads)
    overrides = {}
    for item in args.set:
        k, _, v = item.partition("=")
        overrides[k] = json.loads(v)
    base_minutes = args.baseline_minutes if args.baseline_minutes is not None else (args.minutes or 3.0)
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
        if args.minutes is not None:
            overrides.setdefault("max_seconds", 60 * args.minutes)
        ours = AutoencoderConfig.preset(args.preset, seed=args.seed, threads=ours_threads, **overrides)
        target = entry["published"].get("val_mse_autoencoder", PUBLISHED_VAL_MSE.get(channel))
        entry["ours"] = train_one("ours", X, channel, ours, val, target)
        if base_minutes > 0:
            paper = AutoencoderConfig.preset("paper", seed=args.seed, max_seconds=60 * base_minutes,
                                             threads=base_threads, refine_epochs=0)
            entry["paper_training"] = train_one("paper_training", X, channel, paper, val, target)
        entry["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        # earlier records (sweeps, first versions) are kept; this run replaces only what it measured
        results[channel] = {**results.get(channel, {}), **entry}
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
                      f"{r['epochs']} epochs in {r['seconds']:.0f} s wall, {r['cpu_seconds']:.0f} s CPU "
                      f"({r['cpu_seconds_per_epoch']:.2f} CPU s/epoch), {r['n_parameters']} parameters")
                hit, target = r.get("to_published"), r.get("target_val_mse")
                print("    published MSE reached by the training curve: "
                      + (f"epoch {hit['epoch']}, {hit['cpu_seconds']:.0f} CPU s, {hit['seconds']:.0f} s wall" if hit else "no")
                      + f"; largest rebound above the best so far {100 * r.get('max_rebound', 0):.0f} %")
                if target:
                    print(f"    the returned network (after refinement): {r['val_mse']:.5f} = {r['val_mse'] / target:.2f}x "
                          f"the published {target:.5f}: " + ("reached" if r["val_mse"] <= target else "missed")
                          + f" in {r['cpu_seconds']:.0f} CPU s")
                for key_es, label in (("early_stop", "every epoch"), ("early_stop_after_ramp", "after the L1 ramp")):
                    es = r.get(key_es)
                    if es:
                        print(f"    early stop (patience {es['patience']}, counting {label}): "
                              + (f"epoch {es['epoch']}, best val MSE then {es['best_val_mse_then']:.5f}"
                                 if es["stopped"] else "never")
                              + f" (full run {es['best_val_mse_full_run']:.5f})")
                marks = [c for c in r["curve"] if c["val_mse"] != ""]
                shown = sorted({max(0, min(len(marks) - 1, round(f * len(marks)) - 1)) for f in (0.1, 0.25, 0.5, 1.0)})
                for i in shown if marks else []:
                    c = marks[i]
                    print(f"    after {c['cpu_seconds']:7.1f} CPU s (epoch {c['epoch']}): val MSE {c['val_mse']:.5f}")
    print(f"\nresults written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
