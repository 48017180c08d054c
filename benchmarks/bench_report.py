"""Benchmark: build time and size of the HTML report for a 60 x 60 x 96 run.

The explorer embeds every pixel's curves. Baseline: the curves as plain float32 JSON lists
(``json.dumps(a.astype(float32).tolist())``); ours: integers of 4 significant digits of each
variable's half range (offset and scale), stored as deflated int16 differences in base64. Both are
measured in the same process on the same arrays, then the whole page is built (figures drawn and
inlined) and rebuilt from results.nc (figures drawn again).

Uses the real piezoresponse loops and resonance of ../shared/data when present (the other
contract variables are stand-ins derived from them), otherwise random loops.

    python benchmarks/bench_report.py [--repeats 3] [--out benchmarks/results/report.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def contract_dataset(seed: int = 0):
    """A results Dataset with every variable the report reads, and a decoder (linear)."""
    from scipy.signal import savgol_filter

    from switchscope import make_dataset
    from switchscope.interpret import generate

    rng = np.random.default_rng(seed)
    mat, res_file = DATA / "mixed_pzt_piezoresponse_loops.mat", DATA / "mixed_pzt_resonance_normalized.npy"
    if mat.exists() and res_file.exists():
        import scipy.io

        m = scipy.io.loadmat(mat)
        piezo, voltage = m["Loopdata_mixed"].astype(float), m["Voltagedata_mixed"].ravel().astype(float)
        res = 1320 + 3 * np.load(res_file, allow_pickle=False).reshape(60, 60, 96)
        source = "real"
    else:
        voltage = np.concatenate([np.linspace(16, -16, 48), np.linspace(-16, 16, 48)])
        piezo = np.tanh(voltage / 4)[None, None] * rng.random((60, 60, 1)) * 1e-4
        res = 1320 + rng.normal(size=(60, 60, 96))
        source = "random"
    ds = make_dataset({"piezoresponse": piezo, "resonance": res}, voltage, attrs={"source": source})
    clean = np.where(np.isfinite(piezo), piezo, np.nanmean(piezo))
    ds["piezoresponse_clean"] = (("row", "col", "step"), clean, {"norm_std": float(clean.std())})
    ds["resonance_clean"] = (("row", "col", "step"), res, {"norm_std": 3.0})
    ds["loop_fit"] = (("row", "col", "step"), savgol_filter(clean, 9, 3, axis=-1))
    ds["reconstruction_piezoresponse"] = ds["loop_fit"] + 0.02 * clean.std() * rng.normal(size=clean.shape)
    ds["reconstruction_resonance"] = ds["resonance_clean"] + 0.1 * rng.normal(size=res.shape)
    for name in ("loop_height", "loop_width", "loop_r2", "loop_coercive_pos", "loop_coercive_neg"):
        ds[name] = (("row", "col"), rng.random((60, 60)))
    ds["cluster_divisive"] = (("row", "col"), rng.integers(0, 5, (60, 60)))
    ds["pca_scores"] = (("row", "col", "pca_component"), rng.normal(size=(60, 60, 16)))
    Z = np.maximum(0, rng.normal(size=(3600, 16)))
    Z[:, 10:] = 0
    W = rng.normal(size=(16, 96)) * 1e-5
    gen = generate(lambda z: z @ W, Z, n_pixels=50, n_levels=21)
    ds["embedding_piezoresponse"] = (("row", "col", "neuron"), Z.reshape(60, 60, 16))
    ds["generated_piezoresponse"] = (("neuron", "level", "step"), gen.curves)
    ds = ds.assign_coords(generated_piezoresponse_level=(("neuron", "level"), gen.levels))
    return ds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "report.json")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from switchscope.report import build_report
    from switchscope.report.explorer import _quantize, decode_block, explorer_payload
    from switchscope.report.html import write_report

    ds = contract_dataset()
    curves = [ds[v].values.reshape(-1, 96) for v in ("piezoresponse", "piezoresponse_clean", "loop_fit",
                                                      "reconstruction_piezoresponse", "resonance",
                                                      "resonance_clean", "reconstruction_resonance")]
    t_base, t_ours = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        base = "".join(json.dumps([None if np.isnan(x) else x for x in c.astype(np.float32).ravel().tolist()], separators=(",", ":"))
                       for c in curves)
        t_base.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ours = "".join(json.dumps(_quantize(c, 4), separators=(",", ":")) for c in curves)
        t_ours.append(time.perf_counter() - t0)
    max_err = max(float(np.nanmax(np.abs(decode_block(b) - c.ravel())) / (np.nanmax(c) - np.nanmin(c)))
                  for c in curves for b in [_quantize(c, 4)])
    # a second baseline: the same 4 significant digits, but as floats of each value's magnitude
    t0 = time.perf_counter()
    sig4 = "".join(json.dumps([None if np.isnan(x) else float(f"{x:.4g}") for x in c.ravel().tolist()], separators=(",", ":"))
                   for c in curves)
    t_sig4 = time.perf_counter() - t0

    t_payload = time.perf_counter()
    explorer_payload(ds)
    t_payload = time.perf_counter() - t_payload

    tmp = Path(tempfile.mkdtemp(prefix="bench_report_"))
    try:
        ds.to_netcdf(tmp / "results.nc", engine="h5netcdf")
        t0 = time.perf_counter()
        index = write_report(ds, tmp / "report", summary={"timings_s": {"total": 1.0}})
        cold = time.perf_counter() - t0
        warm = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            build_report(tmp)
            warm.append(time.perf_counter() - t0)
        size = index.stat().st_size
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    before = json.loads(args.out.read_text()) if args.out.is_file() else {}
    result = {
        "data": ds.attrs["source"], "grid": [60, 60, 96], "curve_series": len(curves),
        "baseline_float32_json_mb": round(len(base) / 1e6, 2), "baseline_encode_s": round(min(t_base), 3),
        "baseline_4sig_float_json_mb": round(len(sig4) / 1e6, 2), "baseline_4sig_encode_s": round(t_sig4, 3),
        "ours_quantized_json_mb": round(len(ours) / 1e6, 2), "ours_encode_s": round(min(t_ours), 3),
        "ours_max_abs_error_over_range": max_err,
        "explorer_payload_s": round(t_payload, 3),
        "page_mb": round(size / 1e6, 2), "build_cold_s": round(cold, 3), "rebuild_warm_s": round(min(warm), 3),
        "encoding": "deflated int16 differences, base64; figures inlined as data: URIs",
        "previous": before.get("previous") or {k: before[k] for k in ("ours_quantized_json_mb", "page_mb",
                                                                        "build_cold_s", "rebuild_warm_s") if k in before},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"explorer curves ({len(curves)} series of 3600 x 96): float32 JSON {result['baseline_float32_json_mb']} MB "
          f"in {result['baseline_encode_s']} s; 4-digit floats {result['baseline_4sig_float_json_mb']} MB; quantized {result['ours_quantized_json_mb']} MB in "
          f"{result['ours_encode_s']} s (max error {max_err:.1e} of the range)")
    print(f"page {result['page_mb']} MB; build {cold:.2f} s cold, {min(warm):.2f} s rebuild from results.nc")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
