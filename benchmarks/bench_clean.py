"""Benchmark: the paper's cleaning of the 3600 real loops, vectorized vs one pixel at a time.

Both run in this process on the same data: ``switchscope.preprocess.clean`` (all pixels at once)
and a per-pixel reference written here (``np.interp`` and ``scipy.signal.savgol_filter`` on each
1-D curve, the way the paper's code loops). Times are the best and median of ``--repeats`` runs.

    python benchmarks/bench_clean.py [--repeats 7] [--threads 1] [--out benchmarks/results/clean.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAT = ROOT / ".." / "shared" / "data" / "mixed_pzt_piezoresponse_loops.mat"


def reference_clean(X, window=7, order=3, n_points=3):
    """Per-pixel cleaning: a Python loop over curves (the baseline)."""
    import numpy as np
    from scipy.signal import savgol_filter

    def fill(y):
        bad = np.isnan(y)
        if bad.any():
            x = np.arange(y.size)
            y[bad] = np.interp(x[bad], x[~bad], y[~bad])
        return y

    out = np.array(X, dtype=float)
    for i in range(out.shape[0]):
        y = out[i]
        y[~np.isfinite(y)] = np.nan
        fill(y)
        dist = np.abs(y - savgol_filter(y, window, order))
        y[np.argsort(dist, kind="stable")[-n_points:]] = np.nan
        fill(y)
    return out


def timed(fn, repeats):
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return result, {"best_s": min(times), "median_s": statistics.median(times), "runs_s": times}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7, help="timed runs of each method (default 7)")
    p.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads (default 1)")
    p.add_argument("--data", type=Path, default=MAT, help="the paper's .mat file")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "clean.json")
    args = p.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    import numpy as np
    import scipy
    import scipy.io
    from scipy.signal import savgol_filter

    from switchscope.preprocess import clean, interpolate_nans

    if not args.data.exists():
        print(f"data not found: {args.data}", file=sys.stderr)
        return 2
    loops = scipy.io.loadmat(args.data)["Loopdata_mixed"].astype(float)
    X = loops.reshape(-1, loops.shape[-1])

    clean(X), reference_clean(X[:10])  # warm-up (imports, caches)
    ours, t_ours = timed(lambda: clean(X), args.repeats)
    ref, t_ref = timed(lambda: reference_clean(X), args.repeats)
    # the same recipe with scipy's 2-D savgol_filter instead of the cached filter matrix
    I = interpolate_nans(X)
    _, t_sg2d = timed(lambda: savgol_filter(I, 7, 3, axis=-1), args.repeats)
    M = savgol_filter(np.eye(X.shape[1]), 7, 3, axis=-1)
    _, t_mm = timed(lambda: I @ M, args.repeats)

    scale = float(np.abs(ref).max())
    result = {
        "benchmark": "clean",
        "data": "mixed_pzt_piezoresponse_loops.mat, Loopdata_mixed",
        "n_pixels": int(X.shape[0]),
        "n_steps": int(X.shape[1]),
        "recipe": {"savgol_window": 7, "savgol_order": 3, "n_outliers": 3},
        "repeats": args.repeats,
        "threads": args.threads,
        "vectorized": t_ours,
        "per_pixel_reference": t_ref,
        "speedup_best": t_ref["best_s"] / t_ours["best_s"],
        "speedup_median": t_ref["median_s"] / t_ours["median_s"],
        "max_abs_diff_relative_to_max": float(np.abs(ours - ref).max()) / scale,
        "savgol_only": {"scipy_2d_axis_-1": t_sg2d, "filter_matrix_matmul": t_mm,
                        "speedup_best": t_sg2d["best_s"] / t_mm["best_s"]},
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "scipy": scipy.__version__},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "when_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"clean, {X.shape[0]} real loops x {X.shape[1]} steps, {args.repeats} repeats, "
          f"{args.threads} thread(s)")
    print(f"  vectorized          best {t_ours['best_s'] * 1e3:8.2f} ms   median "
          f"{t_ours['median_s'] * 1e3:8.2f} ms")
    print(f"  per-pixel reference best {t_ref['best_s'] * 1e3:8.2f} ms   median "
          f"{t_ref['median_s'] * 1e3:8.2f} ms")
    print(f"  speedup             best {result['speedup_best']:.1f}x   median "
          f"{result['speedup_median']:.1f}x (target >= 20x)")
    print(f"  max |ours - ref| / max|ref| = {result['max_abs_diff_relative_to_max']:.2e}")
    print(f"  savgol only: scipy 2-D {t_sg2d['best_s'] * 1e3:.2f} ms, filter matrix "
          f"{t_mm['best_s'] * 1e3:.2f} ms ({result['savgol_only']['speedup_best']:.1f}x)")
    print(f"  -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
