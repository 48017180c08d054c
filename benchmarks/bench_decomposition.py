"""Benchmark: PCA, NMF and the divisive k-means on the 3600 real loops and on many synthetic loops.

Baseline and ours run in this process on the same data:

* PCA: the paper's call (``sklearn PCA``, exact LAPACK SVD, ``svd_solver="full"``) against
  ``switchscope.decomposition.pca`` with ``"auto"`` (covariance eigen-solver for tall data),
  ``"randomized"`` and ``"incremental"``; the agreement of the explained variance is reported.
* NMF: the paper's settings (``init="random"``, sklearn's defaults otherwise, on the raw-scale
  min-shifted loops) against ``switchscope.decomposition.nmf`` (``nndsvda``, data scaled to 1)
  with its default ``tol=1e-4`` and with ``tol=1e-3``.
* Divisive k-means (2 top clusters, then 5 + 4): ``KMeans`` (lloyd, 10 restarts, the paper's
  recipe) against ``MiniBatchKMeans``; agreement by adjusted Rand index, and against
  ``truth_domain`` on synthetic data.

The synthetic set is tiles of ``switchscope.synthetic`` films (100 x 100 pixels each, different
seeds, no artifacts) stacked to ``--n-synthetic`` loops.

    python benchmarks/bench_decomposition.py [--n-synthetic 250000] [--threads 2] [--repeats 3]
        [--skip-nmf-large] [--merge] [--out benchmarks/results/decomposition.json]

On a shared machine the 2-thread timings swing by 3x with the load (recorded with each set);
the real set is best re-measured alone with ``--n-synthetic 0 --threads 1 --merge``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAT = ROOT / ".." / "shared" / "data" / "mixed_pzt_piezoresponse_loops.mat"


def timed(fn, repeats):
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return result, {"best_s": round(min(times), 4), "median_s": round(statistics.median(times), 4)}


def real_loops():
    import scipy.io

    from switchscope.preprocess import interpolate_nans

    m = scipy.io.loadmat(MAT)
    X = m["Loopdata_mixed"].astype(float)
    return interpolate_nans(X.reshape(-1, X.shape[2])), None


def synthetic_loops(n):
    import numpy as np

    from switchscope.synthetic import make_dataset

    tiles, truth, total, seed = [], [], 0, 0
    while total < n:
        ds = make_dataset(100, 100, seed=seed, artifacts=False)
        tiles.append(ds["piezoresponse"].values.reshape(-1, ds.sizes["step"]))
        truth.append(ds["truth_domain"].values.ravel())
        total += tiles[-1].shape[0]
        seed += 1
    return np.concatenate(tiles)[:n], np.concatenate(truth)[:n]


def bench_set(name, X, truth, repeats, skip_nmf):
    import numpy as np
    from sklearn.cluster import KMeans
    from sklearn.decomposition import NMF, PCA
    from sklearn.metrics import adjusted_rand_score
    from sklearn.preprocessing import StandardScaler

    from switchscope.decomposition import DivisiveKMeans, nmf, pca

    out: dict = {"n_pixels": int(X.shape[0]), "n_steps": int(X.shape[1])}
    print(f"\n== {name}: {X.shape[0]} loops x {X.shape[1]} steps")

    # PCA ------------------------------------------------------------------------------------------
    base, t = timed(lambda: PCA(16, svd_solver="full").fit(X), repeats)
    res = {"baseline_sklearn_full_svd": t}
    ev_ref = base.explained_variance_
    for solver in ("auto", "randomized", "incremental"):
        r, t = timed(lambda: pca(X, 16, svd_solver=solver, batch_size=max(2000, X.shape[0] // 50)), repeats)
        t["solver_used"] = r.solver
        t["max_rel_diff_explained_variance_top8"] = float(np.max(np.abs(r.explained_variance[:8] - ev_ref[:8])
                                                                / ev_ref[:8]))
        res[f"ours_{solver}"] = t
        print(f"PCA {solver:12s} {t['best_s']:8.3f} s (full SVD {res['baseline_sklearn_full_svd']['best_s']:.3f} s)"
              f"  max rel. diff. of top-8 variances {t['max_rel_diff_explained_variance_top8']:.1e}")
    out["pca"] = res

    # NMF ------------------------------------------------------------------------------------------
    if not skip_nmf:
        Xs = X - X.min()
        nrep = 1 if X.shape[0] > 20000 else repeats
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            b, tb = timed(lambda: NMF(4, init="random", random_state=0).fit(Xs), nrep)
            Wb = b.transform(Xs)
            tb["relative_error"] = float(np.linalg.norm(Xs - Wb @ b.components_) / np.linalg.norm(Xs))
            tb["n_iter"] = int(b.n_iter_)
        out["nmf"] = {"baseline_paper_random_init": tb}
        print(f"NMF paper settings   {tb['best_s']:8.3f} s  rel. error {tb['relative_error']:.4f} ({tb['n_iter']} it)")
        for tol in (1e-4, 1e-3):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r, to = timed(lambda: nmf(X, 4, tol=tol), nrep)
            to["relative_error"] = r.relative_error
            to["n_iter"] = r.n_iter
            out["nmf"][f"ours_nndsvda_tol{tol:g}"] = to
            print(f"NMF ours tol={tol:g}    {to['best_s']:8.3f} s  rel. error {to['relative_error']:.4f} "
                  f"({to['n_iter']} it)")

    # divisive k-means ------------------------------------------------------------------------------
    def paper_recipe():
        Z = StandardScaler().fit_transform(X)
        top = KMeans(2, n_init=10, random_state=0).fit_predict(Z)
        sub = np.zeros(X.shape[0], dtype=int)
        for parent, k, off in ((0, 5, 0), (1, 4, 5)):
            idx = top == parent
            sub[idx] = KMeans(k, n_init=10, random_state=0).fit_predict(Z[idx]) + off
        return top, sub

    nrep = 1 if X.shape[0] > 20000 else repeats
    (ref_top, ref_sub), tb = timed(paper_recipe, nrep)
    res = {"baseline_paper_recipe_kmeans": tb}
    print(f"divisive paper recipe {tb['best_s']:8.3f} s")
    for algo, n_init in (("lloyd", 10), ("minibatch", 3)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m, t = timed(lambda: DivisiveKMeans(2, (5, 4), algorithm=algo, n_init=n_init,
                                                random_state=0).fit(X), nrep)
        t["n_init"] = n_init
        t["ari_top_vs_paper_recipe"] = float(adjusted_rand_score(ref_top, m.top_labels_))
        t["ari_sub_vs_paper_recipe"] = float(adjusted_rand_score(ref_sub, m.labels_))
        if truth is not None:
            t["ari_top_vs_truth_domain"] = float(adjusted_rand_score(truth, m.top_labels_))
        res[f"ours_{algo}"] = t
        extra = f", ARI(top, truth) {t['ari_top_vs_truth_domain']:.3f}" if truth is not None else ""
        print(f"divisive {algo:12s} {t['best_s']:8.3f} s  ARI(top, paper) {t['ari_top_vs_paper_recipe']:.3f}"
              f", ARI(sub, paper) {t['ari_sub_vs_paper_recipe']:.3f}{extra}")
    out["divisive_kmeans"] = res
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-synthetic", type=int, default=250_000, help="synthetic loops (default 250000; 0 skips)")
    p.add_argument("--threads", type=int, default=2, help="BLAS/OpenMP threads (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs on the real data (default 3)")
    p.add_argument("--skip-nmf-large", action="store_true", help="no NMF on the synthetic set")
    p.add_argument("--merge", action="store_true",
                   help="update the sets measured now in an existing --out file instead of replacing it "
                        "(e.g. re-measure the real set alone with --n-synthetic 0 --threads 1)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "decomposition.json")
    args = p.parse_args(argv)

    from threadpoolctl import threadpool_limits

    sys.path.insert(0, str(ROOT / "src"))
    results: dict = {}
    if args.merge and args.out.is_file():
        results = json.loads(args.out.read_text())
    results.update({"benchmark": "decomposition",
                    "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()}})
    with threadpool_limits(args.threads):
        if MAT.exists():
            load0 = os.getloadavg()[0]
            X, _ = real_loops()
            results["real_3600"] = bench_set("real loops", X, None, args.repeats, False)
            results["real_3600"].update(threads=args.threads, load_avg_1min=[load0, os.getloadavg()[0]])
        else:
            print(f"real data not found at {MAT}; skipped")
        if args.n_synthetic > 0:
            t0 = time.perf_counter()
            X, truth = synthetic_loops(args.n_synthetic)
            print(f"(synthetic loops generated in {time.perf_counter() - t0:.1f} s)")
            load0 = os.getloadavg()[0]
            results["synthetic"] = bench_set("synthetic loops", X, truth, args.repeats, args.skip_nmf_large)
            results["synthetic"].update(threads=args.threads, load_avg_1min=[load0, os.getloadavg()[0]])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, args.out)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
