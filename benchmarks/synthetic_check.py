"""Speed and fidelity of the synthetic dataset.

Measures, for several seeds: generation time of the 60 x 60 x 96 dataset (with and without
spectra), the adjusted Rand index of the paper's first divisive split (k-means, k=2, on
standardized piezoresponse) against ``truth_domain``, and how well a per-pixel scipy fit of the
paper's 13-parameter loop recovers ``truth_coercive_*``.

    python benchmarks/synthetic_check.py --seeds 0 1 2 --n-fit 200

Writes ``benchmarks/results/synthetic.json`` and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares
from scipy.special import erf
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from switchscope.preprocess import interpolate_nans
from switchscope.synthetic import make_dataset


def loop13(p: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a1, a2, a3, b1, b2, b3, b4, b5, b6, b7, b8, au, al = p
    s1 = (b1 + b2) / 2 + (b2 - b1) / 2 * erf((v - b7) / b5)
    s2 = (b4 + b3) / 2 + (b3 - b4) / 2 * erf((v - b8) / b6)
    upper = (a1 + a2) / 2 + (a2 - a1) / 2 * erf((v - au) / s1) + a3 * v
    lower = (a1 + a2) / 2 + (a2 - a1) / 2 * erf((v - al) / s2) + a3 * v
    return upper, lower


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n-fit", type=int, default=200, help="pixels fitted per seed")
    ap.add_argument("--repeats", type=int, default=5, help="timed generations per seed")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "synthetic.json"))
    args = ap.parse_args()

    rows = []
    for seed in args.seeds:
        make_dataset(seed=seed)  # warm-up (imports, caches)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            ds = make_dataset(seed=seed)
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        make_dataset(seed=seed, spectra=True)
        t_spec = time.perf_counter() - t0

        v = ds["voltage"].values
        raw = ds["piezoresponse"].values.reshape(-1, v.size)
        x = interpolate_nans(np.where(np.isfinite(raw), raw, np.nan))
        z = (x - x.mean(axis=0)) / x.std(axis=0)
        dom = ds["truth_domain"].values.ravel()
        ari = adjusted_rand_score(dom, KMeans(2, n_init=10, random_state=0).fit_predict(z))

        cn = ds["truth_coercive_neg"].values.ravel()
        cp = ds["truth_coercive_pos"].values.ravel()
        pick = np.random.default_rng(seed).choice(x.shape[0], args.n_fit, replace=False)
        lb = [-5, -5, -1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, -16, -16, -16, -16]
        ub = [5, 5, 1, 10, 10, 10, 10, 20, 20, 16, 16, 16, 16]
        p0 = [-1, 1, 0.01, 1, 1.5, 1, 1.5, 3, 3, 0, 0, -5, 7]
        err_n, err_p = [], []
        half = v.size // 2
        t0 = time.perf_counter()
        for i in pick:
            y = x[i] / 1e-4

            def resid(p, y=y):
                up, lo = loop13(p, v)
                return np.r_[up[: half + 1] - y[: half + 1], lo[half + 1:] - y[half + 1:]]

            fit = least_squares(resid, p0, bounds=(lb, ub))
            err_n.append(abs(fit.x[11] - cn[i]))
            err_p.append(abs(fit.x[12] - cp[i]))
        t_fit = time.perf_counter() - t0
        rows.append({
            "seed": seed,
            "generate_s_median": round(float(np.median(times)), 4),
            "generate_with_spectra_s": round(t_spec, 4),
            "kmeans_ari_domain": round(float(ari), 4),
            "fit13_median_abs_err_coercive_neg_v": round(float(np.median(err_n)), 4),
            "fit13_median_abs_err_coercive_pos_v": round(float(np.median(err_p)), 4),
            "fit13_p90_abs_err_v": round(float(np.percentile(err_n + err_p, 90)), 4),
            "fit13_pixels": args.n_fit,
            "fit13_seconds": round(t_fit, 2),
            "nonfinite_fraction": round(float((~np.isfinite(ds["piezoresponse"].values)).mean()), 5),
        })
        print(json.dumps(rows[-1]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"grid": [60, 60, 96], "runs": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    print("generation: median {:.3f} s; k-means ARI min {:.3f}; 13-parameter fit median coercive error "
          "max over seeds {:.3f} V".format(
              np.median([r["generate_s_median"] for r in rows]),
              min(r["kmeans_ari_domain"] for r in rows),
              max(max(r["fit13_median_abs_err_coercive_neg_v"], r["fit13_median_abs_err_coercive_pos_v"])
                  for r in rows)))


if __name__ == "__main__":
    main()
