"""Benchmark of the chunked stages on dask: time against the in-process fit, and bounded memory.

1. **262k loops** (256 x 256 x 4 cycles of synthetic paper13 loops, built as in ``bench_loops.py``):
   :func:`switchscope.loops.fit_loops` in this process (torch on the machine's threads), then the
   chunked fit (:func:`switchscope.chunked.fit_loops_chunked`) on a ``local:2`` cluster (2 worker
   processes, 1 thread each), in the same process run; wall and CPU times (client + workers),
   the ratio, and whether every result is equal (bit for bit; the three integrated metrics to a
   few ulp, see docs/scale.md).
2. **A Zarr store of raw spectra** (complex64, ``--rows x --cols`` pixels x 96 steps x ``--freq``
   bins; 256 x 256 x 96 x 80 is 4.0 GB) written chunk by chunk, then ``switchscope run --stages
   sho,project,clean,loops --scheduler local:2 --format zarr`` on it through the Python API; the
   peak of the summed RSS of this process and all its children (the cluster's nannies and
   workers), sampled every 0.1 s with psutil.

Results go to ``benchmarks/results/dask.json`` (the parts run are merged into it).

    python benchmarks/bench_dask.py --part loops                # ~5 min on 2 cores
    python benchmarks/bench_dask.py --part zarr                 # 4 GB store, ~10 min
    python benchmarks/bench_dask.py --part zarr --rows 64 --cols 64   # a 250 MB store

The temporary stores go to ``--tmp`` (default a new folder under /tmp) and are deleted after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "dask.json"
sys.path.insert(0, str(ROOT / "benchmarks"))


class TreeRSS:
    """Peak of the summed resident memory of this process and its descendants, sampled."""

    def __init__(self, interval: float = 0.1) -> None:
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self.peak_pss = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def current(self) -> int:
        import psutil

        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def pss(self) -> int:
        """Summed proportional set size (shared library pages counted once overall)."""
        import psutil

        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                total += p.memory_full_info().pss
            except (psutil.Error, AttributeError):
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            if self.samples % 5 == 0:  # smaps is slower to read
                self.peak_pss = max(self.peak_pss, self.pss())
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> "TreeRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def cluster_cpu(client) -> float:
    """CPU seconds used so far by the cluster's worker processes (and their threads)."""
    return float(sum(client.run(time.process_time).values()))


def compare(ref, got) -> dict:
    """Which loop variables are bit-identical, and the largest relative difference of the rest."""
    out = {"identical": [], "max_rel_diff": {}}
    for name in ref.data_vars:
        a, b = np.asarray(ref[name].values), np.asarray(got[name].values)
        if a.dtype.kind == "f":
            same = np.array_equal(a, b, equal_nan=True)
        else:
            same = np.array_equal(a, b)
        if same:
            out["identical"].append(name)
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                rel = np.abs(a.astype(float) - b.astype(float)) / np.maximum(np.abs(a.astype(float)), 1e-300)
            out["max_rel_diff"][name] = float(np.nanmax(rel))
    return out


def part_loops(args) -> dict:
    import dask.array as da
    import torch
    import xarray as xr

    from bench_loops import synthetic_loops
    from switchscope._scheduler import scheduler
    from switchscope.chunked import fit_loops_chunked
    from switchscope.loops import fit_loops
    from switchscope.paper import paper_voltage

    v = paper_voltage()
    n = args.loops
    X = synthetic_loops("paper13", n, v)
    print(f"{n} loops built; in-process fit on {torch.get_num_threads()} torch threads ...", flush=True)
    fit_loops(X[:512], v)  # warm-up
    load0 = os.getloadavg()
    t, c = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = fit_loops(X, v).to_dataset()
    t_in, c_in = time.perf_counter() - t, time.process_time() - c
    print(f"  in-process {t_in:.1f} s wall, {c_in:.1f} s CPU", flush=True)
    ref = ref.drop_vars([c for c in ref.coords if c != "param"])
    lazy = xr.Dataset({"loops": (("pixel", "step"), da.from_array(X, chunks=(args.chunk, -1)))},
                      coords={"voltage": ("step", v)})
    t0 = time.perf_counter()
    with scheduler("local:2") as client, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sending large graph")
        start_s = time.perf_counter() - t0
        # the loops go to the workers once, before the timing (as they are in memory in-process)
        t = time.perf_counter()
        lazy = client.persist(lazy)
        from distributed import wait

        wait(lazy)
        send_s = time.perf_counter() - t
        # warm the workers (imports) as the in-process fit was warmed
        client.compute(fit_loops_chunked(lazy.isel(pixel=slice(0, 512)).chunk({"pixel": 256}), "loops")).result()
        w0, c0, t = cluster_cpu(client), time.process_time(), time.perf_counter()
        got = client.compute(fit_loops_chunked(lazy, "loops")).result()
        t_d = time.perf_counter() - t
        c_d = (time.process_time() - c0) + (cluster_cpu(client) - w0)
    print(f"  local:2 {t_d:.1f} s wall, {c_d:.1f} s CPU (client + workers); cluster start {start_s:.1f} s",
          flush=True)
    got = got.drop_vars([c for c in got.coords if c != "param"])
    cmp = compare(ref, got)
    return {
        "what": f"{n} synthetic paper13 loops (256 x 256 x 4 cycles), float64, default options",
        "chunk_pixels": args.chunk, "n_chunks": -(-n // args.chunk),
        "in_process": {"wall_s": round(t_in, 2), "cpu_s": round(c_in, 2), "torch_threads": torch.get_num_threads()},
        "local_2": {"wall_s": round(t_d, 2), "cpu_s": round(c_d, 2), "cluster_start_s": round(start_s, 2),
                    "loops_to_workers_s": round(send_s, 2),
                    "workers": 2, "threads_per_worker": 1},
        "ratio_wall_local2_over_in_process": round(t_d / t_in, 3),
        "target": "local:2 within 1.3x of in-process, identical results",
        "identical_variables": cmp["identical"],
        "max_rel_diff_others": cmp["max_rel_diff"],
        "loadavg_before": [round(x, 2) for x in load0],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }


def write_spectra_store(path: Path, rows: int, cols: int, n_freq: int, rows_per_chunk: int) -> int:
    """A Zarr store of raw complex64 band-excitation spectra (row, col, step, freq) of switching
    loops, generated chunk by chunk (never whole in memory); returns its size in bytes."""
    import dask.array as da
    import xarray as xr

    from switchscope.io import save_zarr
    from switchscope.paper import paper_voltage
    from switchscope.synthetic import sho_response

    v = paper_voltage()
    desc = np.r_[np.ones(v.size // 2, bool), np.zeros(v.size - v.size // 2, bool)]
    freq = np.linspace(1300.0, 1345.0, n_freq)

    def block(block_id=None, **_):
        r0 = block_id[0] * rows_per_chunk
        nr = min(rows_per_chunk, rows - r0)
        rng = np.random.default_rng(1000 + block_id[0])
        cneg = rng.uniform(-7, -3, (nr, cols, 1))
        cpos = rng.uniform(3, 7, (nr, cols, 1))
        w = rng.uniform(0.8, 2.0, (nr, cols, 1))
        c = np.where(desc, cneg, cpos)
        p = np.tanh((v - c) / w)                        # +1 above the coercive voltage
        p = np.where(desc, -p, p) * -1                  # descending from +1, ascending from -1
        amp = 1e-4 * (np.abs(p) + 0.05) * rng.uniform(0.8, 1.2, (nr, cols, 1))
        phase = np.where(p >= 0, 0.0, 180.0) + rng.normal(0, 3, p.shape)
        f0 = 1322.0 + 3.0 * p * v / 16.0 + rng.normal(0, 0.5, p.shape)
        q = rng.uniform(180, 260, p.shape)
        s = sho_response(freq, amp, phase, f0, q)
        s += 2e-4 * (rng.normal(size=s.shape) + 1j * rng.normal(size=s.shape))
        return s.astype(np.complex64)

    chunks = ((rows_per_chunk,) * (rows // rows_per_chunk) + ((rows % rows_per_chunk,) if rows % rows_per_chunk else ()),
              (cols,), (v.size,), (n_freq,))
    spec = da.map_blocks(block, chunks=chunks, dtype=np.complex64)
    ds = xr.Dataset({"spectrum": (("row", "col", "step", "freq"), spec, {"units": "a.u."})},
                    coords={"voltage": ("step", v, {"units": "V"}), "freq": ("freq", freq, {"units": "kHz"})},
                    attrs={"source": "bench_dask synthetic spectra"})
    import dask

    with dask.config.set(scheduler="threads", num_workers=2):
        save_zarr(ds, path)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def part_zarr(args, tmp: Path) -> dict:
    from switchscope._scheduler import RunConfig
    from switchscope.io.config import DataConfig
    from switchscope.pipeline import run

    store = tmp / "scan.zarr"
    t = time.perf_counter()
    size = write_spectra_store(store, args.rows, args.cols, args.freq, rows_per_chunk=2)
    t_write = time.perf_counter() - t
    print(f"store written: {size / 1e9:.2f} GB in {t_write:.0f} s", flush=True)
    out = tmp / "out"
    rss = TreeRSS()
    base = rss.current()
    load0 = os.getloadavg()
    t, c = time.perf_counter(), time.process_time()
    with rss, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run(None, out, stages=["sho", "project", "clean", "loops"], progress=False,
            configs={"data": DataConfig(path=str(store)),
                     "run": RunConfig(scheduler=args.scheduler, format="zarr")})
    wall, cpu_client = time.perf_counter() - t, time.process_time() - c
    summary = json.loads((out / "summary.json").read_text())
    out_size = sum(f.stat().st_size for f in (out / "results.zarr").rglob("*") if f.is_file())
    return {
        "what": f"raw spectra {args.rows} x {args.cols} pixels x 96 steps x {args.freq} bins complex64 in a Zarr store, "
                "run --stages sho,project,clean,loops --format zarr",
        "scheduler": args.scheduler or "in-process (threads)",
        "store_bytes": size, "store_gb": round(size / 1e9, 3), "store_write_s": round(t_write, 1),
        "spectra": int(args.rows * args.cols * 96),
        "run_wall_s": round(wall, 1), "client_cpu_s": round(cpu_client, 1),
        "timings_s": summary["timings_s"],
        "sho_spectra_per_s": summary["sho"]["spectra_per_s"],
        "sho_chunks": summary["sho"]["chunks"],
        "loops_median_r2": summary["loops"]["median_r2"],
        "results_zarr_bytes": out_size,
        "peak_rss_tree_gb": round(rss.peak / 1e9, 3),
        "peak_pss_tree_gb": round(rss.peak_pss / 1e9, 3),
        "rss_tree_before_gb": round(base / 1e9, 3),
        "rss_samples": rss.samples,
        "target": "peak memory (client + workers) under 2 GB for a 4 GB store",
        "loadavg_before": [round(x, 2) for x in load0],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["loops", "zarr", "all"], default="all")
    ap.add_argument("--loops", type=int, default=262_144)
    ap.add_argument("--chunk", type=int, default=16_384, help="pixels per chunk of the loop fit")
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--cols", type=int, default=256)
    ap.add_argument("--freq", type=int, default=80)
    ap.add_argument("--scheduler", default="local:2", help="scheduler of the Zarr run ('' for in-process)")
    ap.add_argument("--tmp", type=Path, default=None)
    ap.add_argument("--key", default=None, help="name of the zarr entry in the results (default by size)")
    args = ap.parse_args(argv)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "date": time.strftime("%Y-%m-%d")}
    if args.part in ("loops", "all"):
        results["loops_262k"] = part_loops(args)
        RESULTS.write_text(json.dumps(results, indent=1))
    if args.part in ("zarr", "all"):
        tmp = Path(tempfile.mkdtemp(prefix="bench-dask-", dir=args.tmp))
        try:
            key = args.key or f"zarr_{args.rows}x{args.cols}x96x{args.freq}_{args.scheduler or 'threads'}"
            results[key] = part_zarr(args, tmp)
            print(json.dumps(results[key], indent=1))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # only the folder made above
        RESULTS.write_text(json.dumps(results, indent=1))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
