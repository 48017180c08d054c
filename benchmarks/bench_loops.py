"""Benchmark of the batched loop fitter against a per-pixel scipy fit, in one process.

Fits the 3600 real loops (../shared/data/mixed_pzt_piezoresponse_loops.mat, cleaned with
:func:`switchscope.preprocess.clean`) with :func:`switchscope.loops.fit_loops` and with two
per-pixel scipy references (same model, same bounds, response scaled to O(1) as in the batched fit):

- ``scipy_user`` (issue 17's baseline, the per-pixel fit a user would write, as BGlib does): one
  ``least_squares`` call per loop (trf, bounds, 3-point finite-difference Jacobian) from the
  first data-driven start of the batched fit (``res.starts[:, 0]``);
- ``scipy_all_starts`` (the stricter reference of earlier versions): one call per pixel and
  start, from every start of the batched fit, analytic numpy Jacobian, the best kept.

The torch path (``backend="torch"``) is timed in the same process too, then the batched fit on
synthetic loops of growing size. Results go to ``benchmarks/results/loops.json``.

    python benchmarks/bench_loops.py                       # all pixels with scipy (~20 min)
    python benchmarks/bench_loops.py --scipy-pixels 300    # scipy on a subset, extrapolated
    python benchmarks/bench_loops.py --with-250k           # add 262,144 loops (256 x 256 x 4) to the scaling run

Wall times are the best of ``--repeats`` warm runs (``time.perf_counter``); the process CPU time
(``time.process_time``, all threads) of the same run is recorded too, since on a shared machine
the wall time alone mixes in other processes' load. The scipy pixels run in ``--slices`` slices,
each after a timing of the batched fit, and the speed-up is the scipy time over the median of
those timings, so that both sides are measured over the same stretch of time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.io
import torch
from scipy.optimize import least_squares

from switchscope.loops import MODELS, fit_loops, sweep_masks

ROOT = Path(__file__).resolve().parents[1]
MAT = (ROOT / ".." / "shared" / "data" / "mixed_pzt_piezoresponse_loops.mat").resolve()


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if sys.platform != "darwin" else kb / 2**20


def load_real() -> tuple[np.ndarray, np.ndarray]:
    from switchscope.preprocess import clean

    m = scipy.io.loadmat(MAT)
    X = m["Loopdata_mixed"].reshape(-1, m["Loopdata_mixed"].shape[-1]).astype(float)
    v = m["Voltagedata_mixed"].ravel().astype(float)
    return np.asarray(clean(X, channel="piezoresponse"), dtype=float), v


def timed_batched(X, v, model, repeats=3, warm=True, **kw):
    """Best wall time and best process CPU time of ``repeats`` warm runs, and the last result."""
    if warm:
        fit_loops(X[:64], v, model=model, **kw)            # warm-up (imports, torch kernels)
        fit_loops(X, v, model=model, **kw)
    best, best_cpu, res = np.inf, np.inf, None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        res = fit_loops(X, v, model=model, **kw)
        best = min(best, time.perf_counter() - t)
        best_cpu = min(best_cpu, time.process_time() - c)
    return best, best_cpu, res


def np_paper13(q, v, desc, jac=False):
    """The 13-parameter loop (and its Jacobian) in plain numpy, for one 96-step curve."""
    from scipy.special import erf

    a1, a2, a3, b1, b2, b3, b4, b5, b6, b7, b8, au, al = q
    w1, w2 = (v - b7) / b5, (v - b8) / b6
    e1, e2 = erf(w1), erf(w2)
    s1 = (b1 + b2) / 2 + (b2 - b1) / 2 * e1
    s2 = (b4 + b3) / 2 + (b3 - b4) / 2 * e2
    s = np.where(desc, s1, s2)
    z = (v - np.where(desc, au, al)) / s
    ez = erf(z)
    if not jac:
        return (a1 + a2) / 2 + (a2 - a1) / 2 * ez + a3 * v
    c = 2 / np.sqrt(np.pi)
    J = np.zeros((v.size, 13))
    J[:, 0], J[:, 1], J[:, 2] = (1 - ez) / 2, (1 + ez) / 2, v
    dvc = -(a2 - a1) / 2 * c * np.exp(-z * z) / s         # d f / d(switching voltage)
    dfds = dvc * z                                          # d f / d S
    d, a = desc, ~desc
    J[d, 11], J[a, 12] = dvc[d], dvc[a]
    J[d, 3], J[d, 4] = dfds[d] * (1 - e1[d]) / 2, dfds[d] * (1 + e1[d]) / 2
    J[a, 6], J[a, 5] = dfds[a] * (1 - e2[a]) / 2, dfds[a] * (1 + e2[a]) / 2
    g1 = -dfds[d] * (b2 - b1) / 2 * c * np.exp(-w1[d] ** 2) / b5    # d f / d b7
    g2 = -dfds[a] * (b3 - b4) / 2 * c * np.exp(-w2[a] ** 2) / b6    # d f / d b8
    J[d, 9], J[d, 7] = g1, g1 * w1[d]
    J[a, 10], J[a, 8] = g2, g2 * w2[a]
    return J


def np_bglib9(q, v, desc, jac=False):
    """BGlib's 9-parameter loop (and its Jacobian) in plain numpy, for one curve."""
    from scipy.special import erf

    a0, a1, a2, a3, a4, b0, b1, b2, b3 = q
    vc = np.where(desc, a2, a3)
    lo, hi = np.where(desc, b0, b2), np.where(desc, b1, b3)
    x = v - vc
    ed = erf(1000.0 * x)
    g = (hi - lo) / 2 * (ed + 1) + lo
    z = x / g
    ez = erf(z)
    ssum = lo + hi
    y = (g * ez + lo) / ssum
    if not jac:
        return a0 + a1 * y + a4 * v
    c = 2 / np.sqrt(np.pi)
    gz = c * np.exp(-z * z)
    dy_dg = (ez - gz * z) / ssum
    dy_dvc = dy_dg * (-(hi - lo) / 2 * c * np.exp(-(1000.0 * x) ** 2) * 1000.0) - gz / ssum
    dy_dlo = dy_dg * (1 - (ed + 1) / 2) + (1 - y) / ssum
    dy_dhi = dy_dg * (ed + 1) / 2 - y / ssum
    J = np.zeros((v.size, 9))
    J[:, 0], J[:, 1], J[:, 4] = 1.0, y, v
    d, a = desc, ~desc
    J[d, 2], J[a, 3] = a1 * dy_dvc[d], a1 * dy_dvc[a]
    J[d, 5], J[d, 6] = a1 * dy_dlo[d], a1 * dy_dhi[d]
    J[a, 7], J[a, 8] = a1 * dy_dlo[a], a1 * dy_dhi[a]
    return J


NUMPY_MODELS = {"paper13": np_paper13, "bglib9": np_bglib9}


def scipy_per_pixel(X, v, model, starts, pixels):
    """One least_squares (trf, bounds, analytic Jacobian) per pixel and start; the best kept.

    Model and Jacobian are plain numpy (written here, checked against the library's Jacobian
    by ``check_numpy_jacobians``), as a careful per-pixel user would write them.
    """
    mdl = MODELS[model]
    desc = sweep_masks(v)
    lo, hi = mdl.bounds(v)
    kinds = np.array(mdl.param_kinds)
    f = NUMPY_MODELS[model]
    r2 = np.empty(pixels.size)
    t = time.perf_counter()
    for k, i in enumerate(pixels):
        c, s = X[i].mean(), X[i].std()
        y = (X[i] - c) / s
        best = np.inf
        for p0 in starts[i]:
            q0 = p0.copy()
            q0[kinds == "offset"] = (q0[kinds == "offset"] - c) / s
            q0[kinds == "scale"] = q0[kinds == "scale"] / s
            sol = least_squares(lambda q: f(q, v, desc) - y, q0,
                                jac=lambda q: f(q, v, desc, jac=True), bounds=(lo, hi),
                                method="trf")
            best = min(best, 2 * sol.cost)
        r2[k] = 1 - best / np.sum((y - y.mean()) ** 2)
    return time.perf_counter() - t, r2


def scipy_user(X, v, model, starts, pixels):
    """Issue 17's per-pixel baseline: one least_squares (trf, bounds, '3-point' Jacobian) per
    pixel from its first data-driven start (as BGlib fits loops)."""
    mdl = MODELS[model]
    desc = sweep_masks(v)
    lo, hi = mdl.bounds(v)
    kinds = np.array(mdl.param_kinds)
    f = NUMPY_MODELS[model]
    r2 = np.empty(pixels.size)
    t, tc = time.perf_counter(), time.process_time()
    for k, i in enumerate(pixels):
        c, s = X[i].mean(), X[i].std()
        y = (X[i] - c) / s
        q0 = starts[i, 0].copy()
        q0[kinds == "offset"] = (q0[kinds == "offset"] - c) / s
        q0[kinds == "scale"] = q0[kinds == "scale"] / s
        sol = least_squares(lambda q: f(q, v, desc) - y, q0, jac="3-point", bounds=(lo, hi),
                            method="trf")
        r2[k] = 1 - 2 * sol.cost / np.sum((y - y.mean()) ** 2)
    return time.perf_counter() - t, time.process_time() - tc, r2


def check_numpy_jacobians(v, starts_by_model):
    """The benchmark's numpy model and Jacobian equal the library's at the fit's starts."""
    desc = sweep_masks(v)
    for model, starts in starts_by_model.items():
        mdl, f = MODELS[model], NUMPY_MODELS[model]
        for q in starts[:50]:
            np.testing.assert_allclose(f(q, v, desc), mdl(q, v, desc), rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(f(q, v, desc, jac=True), mdl.jacobian(q, v, desc),
                                       rtol=1e-7, atol=1e-9)


def synthetic_loops(model, n, v, seed=0):
    rng = np.random.default_rng(seed)
    mdl = MODELS[model]
    if model == "paper13":
        p = np.column_stack([
            rng.uniform(-1.2, -0.8, n), rng.uniform(0.8, 1.2, n), rng.uniform(-0.01, 0.01, n),
            rng.uniform(1, 2, n), rng.uniform(2, 3, n), rng.uniform(2, 3, n), rng.uniform(1, 2, n),
            rng.uniform(3, 6, n), rng.uniform(3, 6, n), rng.uniform(-2, 2, n),
            rng.uniform(-2, 2, n), rng.uniform(-9, -3, n), rng.uniform(3, 9, n)])
    else:
        p = np.column_stack([
            rng.uniform(-1.2, -0.8, n), rng.uniform(1.6, 2.4, n), rng.uniform(-9, -3, n),
            rng.uniform(3, 9, n), rng.uniform(-0.01, 0.01, n), rng.uniform(1, 3, n, ),
            rng.uniform(1, 3, n), rng.uniform(1, 3, n), rng.uniform(1, 3, n)])
    out = np.empty((n, v.size))
    for a in range(0, n, 50000):
        out[a:a + 50000] = mdl(p[a:a + 50000], v)
    return 1e-4 * (out + 0.02 * rng.normal(size=out.shape))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["paper13", "bglib9"], choices=list(MODELS))
    ap.add_argument("--scipy-pixels", type=int, default=3600,
                    help="pixels fitted per pixel with scipy (a random subset if < 3600)")
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 50_000],
                    help="synthetic loop counts for the scaling run")
    ap.add_argument("--with-250k", action="store_true",
                    help="add 262,144 synthetic loops (256 x 256 x 4 cycles, issue 17) to the scaling run")
    ap.add_argument("--threads", type=int, default=2, help="torch (and numba) threads")
    ap.add_argument("--backend", default="auto", choices=["auto", "numba", "torch"],
                    help="fit_loops backend (auto: numba on the CPU; torch: the batched torch path)")
    ap.add_argument("--no-torch", action="store_true",
                    help="skip the timing of the torch path in the same process")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--slices", type=int, default=5,
                    help="scipy runs in this many slices, each after a timing of the batched fit")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "loops.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    X, v = load_real()
    rng = np.random.default_rng(0)
    n_sp = min(args.scipy_pixels, X.shape[0])
    pixels = np.sort(rng.choice(X.shape[0], n_sp, replace=False)) if n_sp < X.shape[0] \
        else np.arange(X.shape[0])
    results = {"machine": platform.platform(), "torch": torch.__version__,
               "torch_threads": args.threads, "backend": args.backend, "n_loops": int(X.shape[0]), "models": {},
               "notes": ("batched_seconds/batched_cpu_seconds: best of the warm repeats (time.perf_counter / time.process_time, torch and numba threads as given) on a machine shared with other jobs (see load_average_1min); scipy_user (issue 17's baseline, 'speedup'): one least_squares (trf, bounds, 3-point Jacobian) per pixel from the batched fit's first data-driven start; scipy (the stricter reference, 'speedup_vs_scipy_all_starts'): one least_squares (trf, bounds) per pixel and start with an analytic numpy Jacobian written in the benchmark (checked against the library's), the best start kept; both extrapolated to all pixels when scipy_pixels < n_loops; R2 compared on the same pixels; torch_*: the torch path (backend='torch') in the same process; peak RSS includes the ~300 MB of the imported libraries")}
    for model in args.models:
        load0 = os.getloadavg()[0]
        rss0 = peak_rss_mb()
        # The machine is shared and its speed drifts (+-20 % within minutes, and the per-pixel
        # Python loop and the batched fit do not drift alike): the scipy pixels run in slices,
        # each after a timing of the batched fit, and the ratio compares the sums over the
        # same stretch of time.
        t_b, c_b, res = timed_batched(X, v, model, repeats=args.repeats, backend=args.backend)
        rss_b = peak_rss_mb()
        check_numpy_jacobians(v, {model: res.starts[pixels].reshape(-1, res.starts.shape[-1])})
        if not args.no_torch:
            t_t, c_t, res_t = timed_batched(X, v, model, repeats=args.repeats, backend="torch")
        slices = np.array_split(np.arange(pixels.size), args.slices)
        t_s, r2_s, t_bs = 0.0, np.empty(pixels.size), []
        t_u, c_u, r2_u = 0.0, 0.0, np.empty(pixels.size)
        for sl in slices:
            t_bs.append(timed_batched(X, v, model, repeats=args.repeats, warm=False,
                                      backend=args.backend)[0])
            dt, dc, r2_u[sl] = scipy_user(X, v, model, res.starts, pixels[sl])
            t_u += dt
            c_u += dc
            dt, r2_s[sl] = scipy_per_pixel(X, v, model, res.starts, pixels[sl])
            t_s += dt
        t_b_inter = float(np.median(t_bs))
        t_s_all = t_s * X.shape[0] / pixels.size
        t_u_all = t_u * X.shape[0] / pixels.size
        r2_b = res.r2[pixels]
        entry = {
            "batched_seconds": round(t_b, 4),
            "batched_cpu_seconds": round(c_b, 4),
            "batched_repeats": args.repeats,
            "load_average_1min_before": round(load0, 2),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "scipy_pixels": int(pixels.size),
            "scipy_extrapolated": bool(pixels.size < X.shape[0]),
            "batched_seconds_between_scipy_slices": [round(t, 4) for t in t_bs],
            # issue 17's baseline: one start, 3-point Jacobian
            "scipy_user_seconds": round(t_u, 3),
            "scipy_user_seconds_all_pixels": round(t_u_all, 2),
            "scipy_user_ms_per_loop": round(1e3 * t_u / pixels.size, 2),
            "speedup": round(t_u_all / t_b_inter, 1),
            "speedup_note": ("scipy_user time (issue 17's baseline) over the median of the batched "
                             "timings taken between its slices"),
            "scipy_user_cpu_seconds": round(c_u, 3),
            "speedup_cpu": round(c_u * X.shape[0] / pixels.size / c_b, 1),
            "speedup_cpu_note": ("scipy_user CPU time (one thread) over the batched fit's best CPU "
                                 "time (all threads): the work ratio, less sensitive to the "
                                 "machine's load than the wall-time ratio"),
            "scipy_user_median_r2": float(np.median(r2_u)),
            "scipy_user_min_r2": float(np.min(r2_u)),
            "worst_r2_deficit_vs_scipy_user": float(np.max(r2_u - r2_b)),
            "pixels_more_than_1e-3_below_scipy_user": int(np.sum(r2_b < r2_u - 1e-3)),
            # the stricter reference: every start, analytic Jacobian
            "scipy_seconds": round(t_s, 3),
            "scipy_seconds_all_pixels": round(t_s_all, 2),
            "speedup_vs_scipy_all_starts": round(t_s_all / t_b_inter, 1),
            "batched_median_r2": float(np.median(res.r2)),
            "batched_median_r2_on_scipy_pixels": float(np.median(r2_b)),
            "scipy_median_r2": float(np.median(r2_s)),
            "batched_fraction_r2_above_0.9": float((res.r2 > 0.9).mean()),
            "scipy_fraction_r2_above_0.9": float((r2_s > 0.9).mean()),
            "batched_min_r2": float(np.min(res.r2)),
            "scipy_min_r2": float(np.min(r2_s)),
            "worst_r2_deficit_vs_scipy": float(np.max(r2_s - r2_b)),
            "pixels_more_than_1e-3_below_scipy": int(np.sum(r2_b < r2_s - 1e-3)),
            "fraction_within_0.005_of_scipy": float(np.mean(r2_b >= r2_s - 0.005)),
            "batched_converged_fraction": float(res.converged.mean()),
            "batched_max_iter_pixels": int((res.status == 2).sum()),
            "batched_mean_iterations": float(res.n_iter.mean()),
            "peak_rss_mb_before": round(rss0, 1),
            "peak_rss_mb_after_batched": round(rss_b, 1),
        }
        if not args.no_torch:
            entry.update({
                "torch_seconds": round(t_t, 4), "torch_cpu_seconds": round(c_t, 4),
                "torch_over_batched_wall": round(t_t / t_b, 2),
                "torch_over_batched_cpu": round(c_t / c_b, 2),
                "torch_median_r2": float(np.median(res_t.r2)),
                "max_abs_r2_difference_vs_torch": float(np.max(np.abs(res_t.r2 - res.r2))),
            })
        results["models"][model] = entry
        print(f"{model}: batched {t_b:.3f} s wall / {c_b:.3f} s CPU (between scipy slices: "
              f"median {t_b_inter:.3f} s; load {load0:.1f}-{entry['load_average_1min']:.1f})"
              + ("" if args.no_torch else f", torch {t_t:.3f} s / {c_t:.3f} s CPU") +
              f"; scipy user {t_u_all:.1f} s ({entry['scipy_user_ms_per_loop']} ms/loop) -> "
              f"{entry['speedup']}x ({entry['speedup_cpu']}x in CPU time), all starts {t_s_all:.1f} s -> "
              f"{entry['speedup_vs_scipy_all_starts']}x"
              f"{' (extrapolated from %d pixels)' % pixels.size if entry['scipy_extrapolated'] else ''}"
              f"; median R2 batched {np.median(r2_b):.6f} / scipy user "
              f"{entry['scipy_user_median_r2']:.6f} / all starts {entry['scipy_median_r2']:.6f}; "
              f"worst deficit {entry['worst_r2_deficit_vs_scipy_user']:.2e} / "
              f"{entry['worst_r2_deficit_vs_scipy']:.2e}", flush=True)
    scaling = []
    sizes = list(args.sizes) + ([262_144] if args.with_250k else [])
    for n in sizes:
        Y = synthetic_loops(args.models[0], n, v)
        load0 = os.getloadavg()[0]
        t, c = time.perf_counter(), time.process_time()
        res = fit_loops(Y, v, model=args.models[0], backend=args.backend)   # chunk_size=4096 pixels bounds the memory
        dt, dc = time.perf_counter() - t, time.process_time() - c
        scaling.append({"n_loops": n, "seconds": round(dt, 3), "cpu_seconds": round(dc, 3),
                        "us_per_loop": round(1e6 * dt / n, 1),
                        "median_r2": float(np.median(res.r2)), "peak_rss_mb": round(peak_rss_mb(), 1),
                        "load_average_1min": [round(load0, 2), round(os.getloadavg()[0], 2)]})
        print(f"scaling {args.models[0]}: {n} loops in {dt:.2f} s ({1e6 * dt / n:.0f} us/loop), "
              f"peak RSS {peak_rss_mb():.0f} MB", flush=True)
        del Y, res
    results["scaling"] = scaling
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
