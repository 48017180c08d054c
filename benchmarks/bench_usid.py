"""Benchmark: reading a USID SHO-fit file with switchscope against plain h5py (issue 14).

Writes a synthetic ``--size`` x ``--size`` USID file (2 fields x 2 cycles x 96 steps, SHO fit and
projected loops, no spectra; :func:`switchscope.io.usid_write.make_usid_example`) into a temporary
folder, or reuses ``--file``, then measures, each run in a fresh interpreter so that its peak RSS
is its own:

- ``h5py_fit``: ``f[".../Raw_Data-SHO_Fit_000/Fit"][()]``, the compound in one call;
- ``h5py_fit_loops``: the same plus ``Projected_Loops[()]`` (the data :func:`load` reads);
- ``load``: :func:`switchscope.io.load` (SHO fit + projected loops scattered to
  ``(row, col, cycle, field, step)`` float64 arrays, units converted);
- ``load_select``: ``load`` then :func:`switchscope.select.apply_selection` (default:
  out-of-field, mean of cycles);
- ``load_selecting``: ``load(path, select={})``, the same selection made while reading, block by
  block (what ``switchscope run`` does), so only the selected arrays are held;
- ``idle``: the same imports and nothing else, the baseline subtracted from every peak RSS.

Before timing, the whole file is read once so the OS page cache is equally warm for every run;
the runs of the different kinds are interleaved. Seconds are the median of ``--repeats`` runs
(wall time of the read alone, file opening included, imports not; the process CPU time too, less
disturbed by other load on a shared machine); peak memory is ``VmHWM`` of
the run minus that of the idle interpreter. "Arrays" are the bytes of what the call returns (the
numpy arrays, or the Dataset's data variables). Results go to ``benchmarks/results/usid_read.json``.

    python benchmarks/bench_usid.py                 # 256 x 256 (writes a ~2.4 GB file, ~1 min)
    python benchmarks/bench_usid.py --size 64       # quick check
    python benchmarks/bench_usid.py --file scan.h5  # reuse a file written before
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIT = "/Measurement_000/Channel_000/Raw_Data-SHO_Fit_000/Fit"
LOOPS = "/Measurement_000/Channel_000/Raw_Data-SHO_Fit_000/Fit-Loop_Fit_000/Projected_Loops"
MODES = ("h5py_fit", "h5py_fit_loops", "load", "load_select", "load_selecting")


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def child(mode: str, path: str) -> None:
    """One measurement in this (fresh) interpreter; prints one JSON line."""
    import h5py
    import numpy as np
    import xarray  # noqa: F401 - the same imports in every run, the idle one included

    import switchscope.io
    import switchscope.select

    rss_before = _status_kb("VmRSS")
    c0 = time.process_time()
    t0 = time.perf_counter()
    if mode == "idle":
        arrays: list = []
    elif mode in ("h5py_fit", "h5py_fit_loops"):
        with h5py.File(path, "r") as f:
            arrays = [f[FIT][()]]
            if mode == "h5py_fit_loops":
                arrays.append(f[LOOPS][()])
    elif mode == "load_selecting":
        ds = switchscope.select.apply_selection(switchscope.io.load(path, select={}))
        arrays = [v.values for v in ds.data_vars.values()]
    elif mode in ("load", "load_select"):
        ds = switchscope.io.load(path)
        if mode == "load_select":
            ds = switchscope.select.apply_selection(ds)
        arrays = [v.values for v in ds.data_vars.values()]
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - c0
    out = {"mode": mode, "seconds": seconds, "cpu_seconds": cpu, "vmhwm_kb": _status_kb("VmHWM"), "rss_before_kb": rss_before,
           "array_bytes": int(sum(np.asarray(a).nbytes for a in arrays)),
           "arrays": [[str(np.asarray(a).dtype), list(np.shape(a))] for a in arrays]}
    print(json.dumps(out))


def run_child(mode: str, path: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--file", str(path)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if res.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def warm_cache(path: Path) -> float:
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as fh:
        while fh.read(1 << 24):
            pass
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256, help="rows = cols of the synthetic scan (default 256)")
    ap.add_argument("--file", type=Path, help="a USID file to read (written there first if missing)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "usid_read.json")
    ap.add_argument("--child", choices=(*MODES, "idle"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, str(args.file))
        return

    import h5py
    import numpy as np

    tmp = None
    path = args.file
    write_s = None
    if path is None:
        tmp = Path(tempfile.mkdtemp(prefix="bench_usid_"))
        path = tmp / f"sho_{args.size}.h5"
    try:
        if not path.is_file():
            from switchscope.io.usid_write import make_usid_example

            print(f"writing {path} ({args.size} x {args.size}, 2 fields x 2 cycles x 96 steps) ...", flush=True)
            t0 = time.perf_counter()
            make_usid_example(path, rows=args.size, cols=args.size, n_steps=96, n_fields=2, n_cycles=2,
                              spectra=False)
            write_s = time.perf_counter() - t0
        with h5py.File(path, "r") as f:
            fit, loops = f[FIT], f[LOOPS]
            layout = {"fit_shape": list(fit.shape), "fit_dtype": [(n, str(fit.dtype[n])) for n in fit.dtype.names],
                      "fit_chunks": list(fit.chunks or ()), "fit_bytes": fit.size * fit.dtype.itemsize,
                      "loops_dtype": str(loops.dtype), "loops_bytes": loops.size * loops.dtype.itemsize}
        warm_s = warm_cache(path)
        run_child("load", path)  # untimed: Python's own caches (.pyc) and the page cache, as for every run
        runs: dict[str, list[dict]] = {m: [] for m in (*MODES, "idle")}
        for _ in range(args.repeats):
            for mode in ("idle", *MODES):
                runs[mode].append(run_child(mode, path))
                print(f"  {mode:15s} {runs[mode][-1]['seconds']:.3f} s", flush=True)
        file_bytes = path.stat().st_size
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    base_kb = statistics.median(r["vmhwm_kb"] for r in runs["idle"])
    summary = {}
    for mode in MODES:
        rs = runs[mode]
        peak = max(r["vmhwm_kb"] for r in rs) - base_kb
        summary[mode] = {"seconds_median": round(statistics.median(r["seconds"] for r in rs), 3),
                         "seconds_all": [round(r["seconds"], 3) for r in rs],
                         "cpu_seconds_median": round(statistics.median(r["cpu_seconds"] for r in rs), 3),
                         "peak_rss_mb": round(peak / 1024, 1), "arrays_mb": round(rs[0]["array_bytes"] / 2**20, 1),
                         "peak_over_arrays": round(peak * 1024 / rs[0]["array_bytes"], 2),
                         "arrays": rs[0]["arrays"]}
    ref = summary["h5py_fit_loops"]
    ratios = {
        "load_vs_h5py_fit_loops_time": round(summary["load"]["seconds_median"] / ref["seconds_median"], 2),
        "load_vs_h5py_fit_time": round(summary["load"]["seconds_median"] / summary["h5py_fit"]["seconds_median"], 2),
        "load_vs_h5py_fit_loops_cpu": round(summary["load"]["cpu_seconds_median"] / ref["cpu_seconds_median"], 2),
        "load_select_vs_h5py_fit_loops_time": round(summary["load_select"]["seconds_median"] / ref["seconds_median"], 2),
        "load_peak_over_its_arrays": summary["load"]["peak_over_arrays"],
        "load_peak_over_h5py_fit_loops_peak": round(summary["load"]["peak_rss_mb"] / ref["peak_rss_mb"], 2),
        "load_select_peak_over_load_arrays": round(summary["load_select"]["peak_rss_mb"] / summary["load"]["arrays_mb"], 2),
        "load_selecting_vs_h5py_fit_loops_time": round(summary["load_selecting"]["seconds_median"]
                                                       / ref["seconds_median"], 2),
        "load_selecting_peak_over_selected_arrays": summary["load_selecting"]["peak_over_arrays"],
    }
    result = {
        "file": {"size": args.size if args.file is None else None, "path": str(args.file) if args.file else "temporary",
                 "bytes": file_bytes, "write_s": None if write_s is None else round(write_s, 1), **layout},
        "method": ("each run in a fresh interpreter after the file was read once (page cache warm); seconds: median "
                   f"of {args.repeats} interleaved runs, reading only (imports excluded, file opening included); "
                   "peak_rss_mb: max VmHWM of the runs minus the median VmHWM of an idle interpreter with the same "
                   "imports; arrays_mb: bytes of the returned arrays / Dataset data variables"),
        "idle_vmhwm_mb": round(base_kb / 1024, 1),
        "warm_read_s": round(warm_s, 2),
        "results": summary,
        "ratios": ratios,
        "targets": {"time_within_1.5x_of_h5py": ratios["load_vs_h5py_fit_loops_time"] <= 1.5,
                    "peak_below_2x_arrays": ratios["load_peak_over_its_arrays"] < 2.0,
                    "selecting_peak_below_2x_selected_arrays": ratios["load_selecting_peak_over_selected_arrays"] < 2.0},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__, "h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for mode in MODES:
        s = summary[mode]
        print(f"{mode:15s} {s['seconds_median']:7.3f} s (cpu {s['cpu_seconds_median']:.3f} s)  peak {s['peak_rss_mb']:8.1f} MB  arrays {s['arrays_mb']:8.1f} MB"
              f"  peak/arrays {s['peak_over_arrays']:.2f}")
    print("ratios:", json.dumps(ratios))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
