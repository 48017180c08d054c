"""Benchmark of the batched SHO fit (:func:`switchscope.sho.fit_sho`).

1. Against one ``scipy.optimize.least_squares`` call per spectrum (trf, analytic Jacobian, same
   model, same guess, same bounds) in one process: spectra/s of both and agreement of R², for the
   numba CPU kernel (the default on CPU) and the batched torch path (``backend="torch"``).
   Throughput is steady state, after a warm-up call; the numba kernel's first-call compile (empty
   cache) and its load from the on-disk cache are timed separately, each in a fresh process.
2. Throughput and peak memory on synthetic BEPS spectra of growing size, up to the
   128 x 128 pixels x 96 steps x 2 fields = 3,145,728 spectra x 64 bins of a full scan; each
   size runs in a fresh process so that its peak RSS (``ru_maxrss``) is its own. The spectra are
   held as complex64 (1.6 GB for the full scan), as a reader of float32 raw data gives them.

    python benchmarks/bench_sho.py                    # everything (~5 min on 2 cores)
    python benchmarks/bench_sho.py --sizes 100000     # quick
    python benchmarks/bench_sho.py --dtype float64

Spectra: bands of 64 bins across ``fc +- 3 fc / (2 Qc)``, ``Qc = 200``, ``fc = 1.32 MHz``;
per spectrum ``w0 = fc (1 + U(-1, 1) / (2 Qc))``, ``Q ~ U(50, 300)``, ``A ~ U(0.5, 2) 1e-3``,
``phi ~ U(-pi, pi)``, complex Gaussian noise of 5 % of the peak ``A Q`` per bin. Results go to
``benchmarks/results/sho.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from switchscope.sho import fit_sho, sho_guess, sho_jacobian, sho_response

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "sho.json"
FULL = 128 * 128 * 96 * 2
M, FC, QC = 64, 1.32e6, 200.0
FREQ = np.linspace(FC - 3 * FC / (2 * QC), FC + 3 * FC / (2 * QC), M)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def spectra(n: int, seed: int = 0, block: int = 262144) -> tuple[np.ndarray, np.ndarray]:
    """``n`` synthetic spectra (complex64) and their truth (float64, (n, 4)), made in blocks."""
    rng = np.random.default_rng(seed)
    y = np.empty((n, M), np.complex64)
    truth = np.empty((n, 4))
    for a in range(0, n, block):
        k = min(block, n - a)
        p = np.stack((rng.uniform(0.5, 2.0, k) * 1e-3, FC * (1 + rng.uniform(-1, 1, k) / (2 * QC)),
                      rng.uniform(50, 300, k), rng.uniform(-np.pi, np.pi, k)), axis=1)
        h = sho_response(FREQ, *p.T)
        sig = 0.05 * (p[:, 0] * p[:, 2])[:, None] / np.sqrt(2)
        h += sig * (rng.standard_normal(h.shape) + 1j * rng.standard_normal(h.shape))
        y[a:a + k], truth[a:a + k] = h, p
    return y, truth


def r2_of(y, p):
    h = sho_response(FREQ, *p.T)
    return 1 - (np.abs(h - y) ** 2).sum(1) / (np.abs(y - y.mean(1, keepdims=True)) ** 2).sum(1)


def scipy_fit(y: np.ndarray, p0: np.ndarray) -> np.ndarray:
    """One least_squares per spectrum (trf, analytic Jacobian, the same guess and bounds)."""
    from scipy.optimize import least_squares

    lo, hi = [0.0, FREQ[0], 1.0, -np.inf], [np.inf, FREQ[-1], 1e4, np.inf]
    out = np.empty_like(p0)
    for i in range(y.shape[0]):
        s = np.abs(y[i]).max()
        yi = y[i] / s

        def fun(p):
            h = sho_response(FREQ, *p) - yi
            return np.concatenate((h.real, h.imag))

        x0 = p0[i].copy()
        x0[0] /= s
        r = least_squares(fun, x0, jac=lambda p: sho_jacobian(FREQ, *p), bounds=(lo, hi),
                          method="trf", x_scale="jac")
        out[i] = r.x
        out[i, 0] *= s
    return out


def compile_time() -> dict:
    """Seconds of the first ``fit_sho`` call (2 spectra) in a fresh process: with an empty numba
    cache (compile), then again with the cache it left (load)."""
    import tempfile

    code = ("import time, numpy as np; t = time.perf_counter(); "
            "from switchscope.sho import fit_sho, sho_response; "
            "f = np.linspace(1.3e6, 1.34e6, 64); y = sho_response(f, [1e-3] * 2, 1.32e6, 200., 0.); "
            "t1 = time.perf_counter(); fit_sho(y, f); print(time.perf_counter() - t1)")
    out = {}
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, NUMBA_CACHE_DIR=d)
        for key in ("first_call_compile_s", "first_call_cached_s"):
            p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                               text=True, check=True)
            out[key] = round(float(p.stdout.strip().splitlines()[-1]), 2)
    return out


def run_size(n: int, dtype: str) -> dict:
    """One size in this process: generation, then the timed fit (after a small warm-up)."""
    dt = getattr(torch, dtype)
    y, truth = spectra(n, seed=1)
    rss_data = peak_rss_mb()
    fit_sho(y[:2048], FREQ, dtype=dt)
    t, c = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fit_sho(y, FREQ, dtype=dt)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    p = res.params.reshape(-1, 4)
    rel = np.abs(p / truth - 1)
    return {"n_spectra": n, "backend": "numba", "dtype": dtype, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "spectra_per_s": round(n / wall), "spectra_per_cpu_s": round(n / cpu),
            "peak_rss_mb": round(peak_rss_mb()), "rss_after_data_mb": round(rss_data),
            "input_mb": round(y.nbytes / 2**20), "mean_iterations": round(float(res.n_iter.mean()), 2),
            "converged": float(res.converged.mean()),
            "status_counts": {int(k): int(v) for k, v in zip(*np.unique(res.status, return_counts=True))},
            "median_r2": float(np.nanmedian(res.r2)),
            "median_rel_err": {"A": float(np.nanmedian(rel[:, 0])), "w0": float(np.nanmedian(rel[:, 1])),
                               "Q": float(np.nanmedian(rel[:, 2]))},
            "median_phase_err_deg": float(np.degrees(np.nanmedian(np.abs(np.angle(np.exp(1j * (p[:, 3] - truth[:, 3])))))))}


def compare_scipy(n_scipy: int, n_batched: int, dtype: str, backend: str) -> dict:
    """``n_batched`` spectra batched against scipy on the first ``n_scipy`` of them: three runs
    of each, interleaved so that both see the same machine load, best of three of each (wall
    clock), and the CPU seconds of those runs (steadier on a loaded machine)."""
    dt = getattr(torch, dtype)
    y, _ = spectra(n_batched, seed=2)
    y64 = y.astype(np.complex128)
    fit_sho(y[:2048], FREQ, dtype=dt, backend=backend)
    ys = y64[:n_scipy]
    best_b = best_s = (np.inf, np.inf)
    for _ in range(3):
        t, c = time.perf_counter(), time.process_time()
        res = fit_sho(y, FREQ, dtype=dt, backend=backend)
        best_b = min(best_b, (time.perf_counter() - t, time.process_time() - c))
        t, c = time.perf_counter(), time.process_time()
        ref = scipy_fit(ys, sho_guess(ys, FREQ))
        best_s = min(best_s, (time.perf_counter() - t, time.process_time() - c))
    d = res.r2[:n_scipy] - r2_of(ys, ref)
    rate_b, rate_s = n_batched / best_b[0], n_scipy / best_s[0]
    cpu_b, cpu_s = n_batched / best_b[1], n_scipy / best_s[1]
    return {"backend": backend, "dtype": dtype, "n_batched": n_batched, "n_scipy": n_scipy,
            "batched_spectra_per_s": round(rate_b), "scipy_spectra_per_s": round(rate_s, 1),
            "speedup": round(rate_b / rate_s, 1),
            "batched_spectra_per_cpu_s": round(cpu_b), "scipy_spectra_per_cpu_s": round(cpu_s, 1),
            "speedup_per_cpu_s": round(cpu_b / cpu_s, 1),
            "r2_within_1e-3_fraction": float(np.mean(np.abs(d) <= 1e-3)),
            "r2_diff_median": float(np.median(d)), "r2_diff_min": float(d.min()),
            "r2_diff_max": float(d.max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[196608, 786432, FULL])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--scipy", type=int, default=1000, help="spectra fitted with scipy")
    ap.add_argument("--one-size", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one_size:
        print(json.dumps(run_size(args.one_size, args.dtype)))
        return
    import numba

    out = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                       "numba_threads": numba.get_num_threads(),
                       "platform": platform.platform(), "torch": torch.__version__,
                       "numba": numba.__version__, "load_avg_start": os.getloadavg()},
           "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
           "spectra": {"n_freq": M, "band_hz": [FREQ[0], FREQ[-1]], "noise": "5 % of A*Q per bin"}}
    out["numba_compile"] = compile_time()
    print("numba compile", out["numba_compile"], flush=True)
    res = {}
    for backend in ("numba", "torch"):
        for dtype in ("float64", "float32"):
            key = dtype if backend == "numba" else f"torch_{dtype}"
            res[key] = compare_scipy(args.scipy, 65536, dtype, backend)
            print("scipy comparison", res[key], flush=True)
    out["vs_scipy"] = res
    sizes = []
    for n in args.sizes:
        p = subprocess.run([sys.executable, __file__, "--one-size", str(n), "--dtype", args.dtype],
                           capture_output=True, text=True, check=True)
        sizes.append(json.loads(p.stdout.strip().splitlines()[-1]))
        print("size", sizes[-1], flush=True)
    out["sizes"] = sizes
    if len(sizes) > 1:
        ns = np.array([s["n_spectra"] for s in sizes], float)
        ts = np.array([s["wall_s"] for s in sizes])
        out["time_per_spectrum_us"] = [round(1e6 * t / n, 2) for t, n in zip(ts, ns)]
    out["machine"]["load_avg_end"] = os.getloadavg()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
