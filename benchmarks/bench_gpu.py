"""GPU figures: the torch paths of the SHO fit, the loop fit and the networks on a CUDA device.

Run on a machine with a CUDA GPU (CI never has one; every path here also runs on the CPU):

    python benchmarks/bench_gpu.py                       # data from ../shared/data
    python benchmarks/bench_gpu.py --data DIR --train-seconds 60

Records, each on the GPU and with its agreement against the CPU path run in the same process:

* SHO: spectra/s of ``fit_sho(..., device=DEVICE, backend="torch")`` on the synthetic spectra of
  ``bench_sho.py`` (float32 and float64), R² against the CPU numba kernel on a subset;
* loops: warm seconds for the 3600 real loops (paper13, bglib9), R² against the CPU fit of the
  same loops, and loops/s on 262,144 synthetic paper13 loops for several ``chunk_size`` values;
* networks: the published twin's inference on 3600 loops (and its embedding against the CPU's),
  and training from scratch (preset ``fast``) for ``--train-seconds`` per channel: seconds per
  epoch and the first time the held-out MSE reaches the published network's.

Results go to ``benchmarks/results/gpu.json`` (or ``--out``). Each section is timed after a warm-up
and synchronised (``torch.cuda.synchronize``); a section that fails is recorded with its error.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "cuda"
sys.path.insert(0, str(ROOT / "benchmarks"))


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def gpu_peak_gb() -> float:
    return round(torch.cuda.max_memory_allocated() / 1e9, 2) if DEVICE != "cpu" else 0.0


def timed(fn, repeats: int = 3) -> tuple[float, Any]:
    fn()
    sync()
    best, out = np.inf, None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best, out


def sho_section(sizes: list[int]) -> dict[str, Any]:
    import bench_sho as bs

    from switchscope.sho import fit_sho

    out: dict[str, Any] = {}
    y, _ = bs.spectra(max(sizes))
    ref = fit_sho(y[:20000], bs.FREQ, backend="numba", threads=os.cpu_count())
    for dtype in (torch.float32, torch.float64):
        key = str(dtype).split(".")[-1]
        for n in sizes:
            t, res = timed(lambda: fit_sho(y[:n], bs.FREQ, device=DEVICE, backend="torch", dtype=dtype),
                           repeats=2)
            out[f"{key}_{n}"] = {"seconds": round(t, 4), "spectra_per_s": round(n / t)}
        dr2 = np.abs(np.asarray(res.r2)[:20000] - np.asarray(ref.r2))
        out[f"{key}_r2_vs_cpu_numba"] = {"max_abs_diff": float(np.nanmax(dr2)),
                                         "fraction_within_1e-3": float(np.mean(dr2 <= 1e-3))}
    out["gpu_peak_memory_gb"] = gpu_peak_gb()
    return out


def loops_section(data: Path, n_synthetic: int, chunks: list[int]) -> dict[str, Any]:
    import bench_loops as bl

    from switchscope.loops import fit_loops

    bl.MAT = data / "mixed_pzt_piezoresponse_loops.mat"
    X, v = bl.load_real()
    out: dict[str, Any] = {}
    for model in ("paper13", "bglib9"):
        t_cpu, r_cpu = timed(lambda: fit_loops(X, v, model=model, device="cpu"), repeats=1)
        t_gpu, r_gpu = timed(lambda: fit_loops(X, v, model=model, device=DEVICE), repeats=3)
        d = np.asarray(r_gpu.r2) - np.asarray(r_cpu.r2)
        out[model] = {"gpu_seconds_3600": round(t_gpu, 4), "cpu_seconds_3600_same_machine": round(t_cpu, 4),
                      "cpu_threads": torch.get_num_threads(),
                      "median_r2_gpu": float(np.median(r_gpu.r2)), "median_r2_cpu": float(np.median(r_cpu.r2)),
                      "worst_r2_deficit_gpu_vs_cpu": float(-d.min()),
                      "fraction_within_1e-6": float(np.mean(np.abs(d) <= 1e-6))}
    Y = bl.synthetic_loops("paper13", n_synthetic, v)
    for chunk in chunks:
        if DEVICE != "cpu":
            torch.cuda.reset_peak_memory_stats()
        t, res = timed(lambda: fit_loops(Y, v, model="paper13", device=DEVICE, chunk_size=chunk), repeats=1)
        out[f"paper13_synthetic_{n_synthetic}_chunk_{chunk}"] = {
            "gpu_seconds": round(t, 3), "loops_per_s": round(n_synthetic / t), "median_r2": float(np.median(res.r2)),
            "gpu_peak_memory_gb": gpu_peak_gb()}
    return out


def networks_section(data: Path, train_seconds: float) -> dict[str, Any]:
    import bench_autoencoder as ba

    from switchscope.autoencoder import AutoencoderConfig
    from switchscope.autoencoder.keras import load_pretrained

    ba.DATA = data
    out: dict[str, Any] = {}
    for channel in ("resonance", "piezoresponse"):
        X = ba.load_loops(channel)
        _, val = ba.split(len(X))
        entry: dict[str, Any] = {}
        folder = data / "pretrained_keras"
        cpu = load_pretrained(channel, folder, device="cpu")
        gpu = load_pretrained(channel, folder, device=DEVICE)
        t, Zg = timed(lambda: gpu.transform(X), repeats=2)
        t_cpu = time.perf_counter()
        Zc = cpu.transform(X)
        t_cpu = time.perf_counter() - t_cpu
        R = gpu.reconstruct(X, decoder="autoencoder")
        published_mse = float(np.mean((R[val] - X[val]) ** 2))
        entry["published_twin"] = {"gpu_seconds_transform_3600": round(t, 3),
                                   "cpu_seconds_transform_3600_same_machine": round(t_cpu, 3),
                                   "max_abs_embedding_diff_gpu_vs_cpu": float(np.max(np.abs(Zg - Zc))),
                                   "held_out_mse": published_mse}
        if train_seconds > 0:
            cfg = AutoencoderConfig.preset("fast", seed=0, max_seconds=train_seconds, device=DEVICE)
            r = ba.train_one("ours_gpu", X, channel, cfg, val)
            reach = next((c for c in r["curve"] if c["val_mse"] != "" and c["val_mse"] <= published_mse), None)
            entry["training_fast_preset"] = {
                "seconds": round(r["seconds"], 1), "epochs": r["epochs"],
                "seconds_per_epoch": round(r["seconds_per_epoch"], 4), "val_mse": r["val_mse"],
                "active_neurons": r["active_neurons"],
                "first_reached_published_mse": reach and {"seconds": reach["seconds"], "epoch": reach["epoch"]}}
        out[channel] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=(ROOT / ".." / "shared" / "data").resolve())
    ap.add_argument("--sho-sizes", type=int, nargs="+", default=[262144, 3145728])
    ap.add_argument("--synthetic-loops", type=int, default=262144)
    ap.add_argument("--loop-chunks", type=int, nargs="+", default=[4096, 65536, 262144],
                    help="chunk_size values of the synthetic loop fit")
    ap.add_argument("--train-seconds", type=float, default=60.0)
    ap.add_argument("--sections", default="sho,loops,networks")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu.json")
    ap.add_argument("--device", default="cuda", help="cpu only to try the script where there is no GPU")
    args = ap.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    if DEVICE != "cpu" and not torch.cuda.is_available():
        print("no CUDA GPU here: nothing to measure", file=sys.stderr)
        return 2
    warnings.simplefilter("ignore")
    res: dict[str, Any] = {
        "machine": {"gpu": torch.cuda.get_device_name(0) if DEVICE != "cpu" else "none (cpu)", "torch": torch.__version__,
                    "platform": platform.platform(), "cpus": os.cpu_count(),
                    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
    jobs = {"sho": lambda: sho_section(args.sho_sizes),
            "loops": lambda: loops_section(args.data, args.synthetic_loops, args.loop_chunks),
            "networks": lambda: networks_section(args.data, args.train_seconds)}
    for name in args.sections.split(","):
        t = time.perf_counter()
        try:
            res[name] = jobs[name]()
        except Exception as exc:  # a failed section is recorded; the others still run
            res[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
        print(f"== {name} ({time.perf_counter() - t:.0f} s)\n{json.dumps(res[name], indent=1)}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
