"""The synthetic film against the real one, statistic by statistic (issue 16, item 1).

Compares ``switchscope.synthetic.make_dataset`` (default 60 x 60, seed 0) with the real film of
Agar et al. 2019 in ``../shared/data``: the raw piezoresponse loops
(``mixed_pzt_piezoresponse_loops.mat``) and the resonance loops, which the paper's authors stored
already cleaned and normalized (``mixed_pzt_resonance_normalized.npy``, global mean 0, std 1). Both
films are cleaned with the paper's recipe (``switchscope.preprocess.clean``: NaN interpolation,
Savitzky-Golay outlier removal); the synthetic resonance is then normalized the same way as the
real one (global mean 0, std 1), so every resonance statistic is in standard-deviation units.

Statistics (per pixel, then percentiles over pixels):

* ``noise``: std of the residual of a Savitzky-Golay smooth (window 7, order 3) over the pixel's
  loop height (5th-95th percentile range of the smooth loop);
* ``height``, ``width``, ``coercive_neg``, ``coercive_pos``, ``imprint``: loop-fit metrics of
  ``switchscope.loops.fit_loops`` (paper13 model); the height in the raw loops' units;
* ``pca``: explained-variance ratio of the first 8 principal components of the globally
  normalized loops;
* ``res_between`` / ``res_within``: std of the pixel means, mean within-pixel std (std units);
* ``res_noise``: std of the Savitzky-Golay residual of the resonance (std units);
* ``res_depth``: butterfly depth, per branch the median of the smoothed curve minus its minimum,
  mean of the two branches (std units);
* ``res_rise``: hardening rise, per branch the highest point of the smoothed curve in the 6 V
  before the dip above the median of the 6 V before that, larger of the two branches (std units);
* Q range: synthetic only (the real data has no Q).

The ratio synthetic / real is given for each; ``within_1.5x`` says whether it is in [1/1.5, 1.5].
Signed voltage statistics (imprint, coercive voltages) are compared by their median and their
spread (10th-90th percentile range).

    python benchmarks/synthetic_vs_real.py [--seed 0] [--rows 60 --cols 60]

Writes ``benchmarks/results/synthetic_vs_real.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.io as sio
from scipy.signal import savgol_filter

from switchscope.loops import fit_loops
from switchscope.preprocess import clean
from switchscope.synthetic import make_dataset

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
PCTS = (10, 50, 90)
N_PCA = 8


def _clean(X: np.ndarray, channel: str) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return clean(np.array(X, dtype=float), channel=channel)


def loop_stats(X: np.ndarray, v: np.ndarray) -> dict[str, np.ndarray]:
    """Per-pixel piezoresponse statistics of cleaned loops X (n_pixels, n_steps)."""
    sm = savgol_filter(X, 7, 3, axis=1)
    span = np.percentile(sm, 95, axis=1) - np.percentile(sm, 5, axis=1)
    noise = (X - sm).std(axis=1) / span
    res = fit_loops(X, v)
    out = {"noise": noise}
    for k in ("height", "width", "coercive_neg", "coercive_pos", "imprint"):
        out[k] = np.asarray(res.metrics[k], float)
    out["r2"] = res.r2
    return out


def pca_ratio(X: np.ndarray) -> np.ndarray:
    Xn = (X - X.mean()) / X.std()
    Xc = Xn - Xn.mean(axis=0)
    s = np.linalg.svd(Xc, compute_uv=False) ** 2
    return s[:N_PCA] / s.sum()


def _branches(v: np.ndarray) -> list[np.ndarray]:
    n = v.size
    k = int(np.argmin(v))
    return [np.arange(0, k), np.arange(k, n)]  # sweep order: before = lower index


def resonance_stats(R: np.ndarray, v: np.ndarray) -> dict[str, np.ndarray]:
    """Per-pixel resonance statistics of a globally normalized resonance (std units)."""
    dv = abs(v[1] - v[0])
    lead = int(round(6.0 / dv))
    sm = savgol_filter(R, 7, 3, axis=1)
    depth, rise = [], []
    for idx in _branches(v):
        b = sm[:, idx]
        med = np.median(b, axis=1)
        k = np.argmin(b, axis=1)
        depth.append(med - b[np.arange(len(b)), k])
        r = np.full(len(b), 0.0)
        for i in range(len(b)):
            w = b[i, max(0, k[i] - lead):k[i]]
            base = b[i, max(0, k[i] - 2 * lead):max(0, k[i] - lead)]
            if w.size and base.size:
                r[i] = max(0.0, w.max() - np.median(base))
        rise.append(r)
    return {
        "res_within": R.std(axis=1),
        "res_noise": (R - sm).std(axis=1),
        "res_depth": np.mean(depth, axis=0),
        "res_rise": np.max(rise, axis=0),
        "_pixel_mean": R.mean(axis=1),
    }


def summarize(stats: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    out = {}
    for k, a in stats.items():
        if k.startswith("_"):
            continue
        a = a[np.isfinite(a)]
        out[k] = {f"p{p}": float(np.percentile(a, p)) for p in PCTS}
    out["res_between"] = {"std": float(np.std(stats["_pixel_mean"]))}
    return out


def film_stats(piezo: np.ndarray, res_norm: np.ndarray | None, v: np.ndarray) -> dict:
    t0 = time.perf_counter()
    loops = loop_stats(piezo, v)
    stats = {**loops}
    if res_norm is not None:
        stats.update(resonance_stats(res_norm, v))
    out = summarize(stats)
    out["pca"] = [float(x) for x in pca_ratio(piezo)]
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def compare(syn: dict, real: dict) -> list[tuple[str, float, float, float]]:
    """Rows (name, synthetic, real, ratio)."""
    rows = []
    for k in ("noise", "height", "width", "r2", "res_within", "res_noise", "res_depth", "res_rise"):
        if k not in real:
            continue
        for p in ("p50", "p90") if k != "noise" else ("p10", "p50", "p90"):
            rows.append((f"{k} {p}", syn[k][p], real[k][p]))
    for k in ("coercive_neg", "coercive_pos", "imprint"):
        rows.append((f"{k} median", syn[k]["p50"], real[k]["p50"]))
        rows.append((f"{k} spread p90-p10", syn[k]["p90"] - syn[k]["p10"], real[k]["p90"] - real[k]["p10"]))
    rows.append(("res_between std", syn["res_between"]["std"], real["res_between"]["std"]))
    for i, (a, b) in enumerate(zip(syn["pca"], real["pca"])):
        rows.append((f"pca evr {i + 1}", a, b))
    return [(n, a, b, a / b if b != 0 else float("nan")) for n, a, b in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", type=int, default=60)
    ap.add_argument("--cols", type=int, default=60)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "synthetic_vs_real.json"))
    args = ap.parse_args()

    mat = sio.loadmat(DATA / "mixed_pzt_piezoresponse_loops.mat")
    v_real = mat["Voltagedata_mixed"].ravel().astype(float)
    real_piezo = _clean(mat["Loopdata_mixed"].reshape(-1, v_real.size), "piezoresponse")
    real_res = np.load(DATA / "mixed_pzt_resonance_normalized.npy").astype(float)
    real = film_stats(real_piezo, real_res, v_real)
    real["q"] = None

    t0 = time.perf_counter()
    ds = make_dataset(rows=args.rows, cols=args.cols, seed=args.seed)
    t_gen = time.perf_counter() - t0
    v = ds["voltage"].values
    n = args.rows * args.cols
    piezo = _clean(ds["piezoresponse"].values.reshape(n, -1), "piezoresponse")
    res = _clean(ds["resonance"].values.reshape(n, -1), "resonance")
    res_kz_std = float(res.std())
    res_n = (res - res.mean()) / res.std()
    syn = film_stats(piezo, res_n, v)
    q = ds["quality_factor"].values
    q = q[np.isfinite(q)]
    syn["q"] = {f"p{p}": float(np.percentile(q, p)) for p in (1, 50, 99)}
    syn["resonance_global_std_khz"] = res_kz_std
    syn["generation_seconds"] = round(t_gen, 3)

    rows = compare(syn, real)
    print(f"{'statistic':28s} {'synthetic':>12s} {'real':>12s} {'ratio':>7s}")
    for name, a, b, r in rows:
        flag = "" if 1 / 1.5 <= r <= 1.5 else "  <-- outside 1.5x"
        print(f"{name:28s} {a:12.4g} {b:12.4g} {r:7.2f}{flag}")
    print(f"Q (synthetic only; the real data has no Q): p1 {syn['q']['p1']:.0f}, "
          f"p99 {syn['q']['p99']:.0f}")
    print(f"synthetic resonance global std {res_kz_std:.2f} kHz (one std unit); "
          f"generation {t_gen:.2f} s")
    result = {
        "synthetic_config": {"rows": args.rows, "cols": args.cols, "seed": args.seed},
        "synthetic": syn,
        "real": real,
        "table": [{"statistic": n_, "synthetic": a, "real": b, "ratio": r,
                   "within_1.5x": bool(1 / 1.5 <= r <= 1.5)} for n_, a, b, r in rows],
        "notes": {
            "resonance": "real resonance stored normalized (global mean 0, std 1); synthetic "
                         "resonance normalized the same way, so resonance rows are in std units",
            "q": "the real data has no quality factor; synthetic Q range reported alone",
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
