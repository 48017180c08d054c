"""Whole-pipeline timings: the demo (synthetic default, every stage, training included) and the
paper's published networks on the real loops.

    python benchmarks/bench_pipeline.py                 # both runs
    python benchmarks/bench_pipeline.py --only demo

Targets (2-core machine): the demo in under 5 minutes, ``--pretrained paper`` on
``../shared/data/mixed_pzt_piezoresponse_loops.mat`` in under 1 minute. Each run is the command a
user types, in a fresh process, timed from outside; the stage timings come from its summary.json.
Results go to ``benchmarks/results/pipeline.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAT = ROOT / ".." / "shared" / "data" / "mixed_pzt_piezoresponse_loops.mat"

RUNS = {
    "demo": ([], 300.0),
    "pretrained_paper_real": (["--data", str(MAT), "--pretrained", "paper"], 60.0),
}


def time_run(name: str, extra: list[str], workdir: Path) -> dict:
    out = workdir / name
    cmd = [sys.executable, "-m", "switchscope.cli", "run", "--out", str(out), "--no-progress", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}): {proc.stderr.strip()}")
    summary = json.loads((out / "summary.json").read_text())
    return {"command": "switchscope " + " ".join(cmd[3:]), "wall_s": round(wall, 2),
            "stage_s": summary["timings_s"], "autoencoder": summary.get("autoencoder"),
            "loops_median_r2": (summary.get("loops") or {}).get("median_r2"),
            "report": summary.get("report")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=sorted(RUNS), help="run one of the two")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pipeline.json"))
    args = ap.parse_args()
    results: dict = {"machine": platform.platform(), "cpu_count": os.cpu_count(),
                     "load_average_before": os.getloadavg(), "runs": {}}
    if args.only and Path(args.out).is_file():  # one run again: keep the other's record
        results["runs"] = json.loads(Path(args.out).read_text()).get("runs", {})
    with tempfile.TemporaryDirectory() as tmp:
        for name, (extra, target) in RUNS.items():
            if args.only and name != args.only:
                continue
            r = time_run(name, extra, Path(tmp))
            r["target_s"] = target
            r["meets_target"] = r["wall_s"] < target
            results["runs"][name] = r
            print(f"{name}: {r['wall_s']:.1f} s (target < {target:.0f} s); stages: {r['stage_s']}")
    results["load_average_after"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
