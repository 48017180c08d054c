"""Joint multichannel autoencoder against the per-channel networks: which tracks the mechanisms?

On the default synthetic film (``switchscope run``'s data) with the default training budget
(``AutoencoderConfig()``, plus ``joint=True``), stages clean + autoencoder, this reports for each
embedding (piezoresponse, resonance, joint) the best single neuron's |Spearman rho| with
``truth_c_fraction``, ``truth_three_state`` and ``truth_hardening`` (the rule of the interpret
stage's ``mechanism_truth_<channel>``: :func:`switchscope.interpret.truth_correlations`), the
reconstruction MSE per channel (normalized units, all pixels), active neurons and seconds.

    .venv/bin/python benchmarks/bench_joint.py [--seed 0] [--out benchmarks/results/joint.json]
    .venv/bin/python benchmarks/bench_joint.py --l1-scale resonance=0.1 --out benchmarks/results/joint_l1_low.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

TRUTHS = ("truth_c_fraction", "truth_three_state", "truth_hardening", "truth_domain")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "joint.json"))
    ap.add_argument("--l1-scale", default=None, help="e.g. resonance=0.1 (AutoencoderConfig.l1_scale; "
                    "the joint network takes the strongest of its channels' penalties)")
    args = ap.parse_args()
    ae_kw: dict = {}
    if args.l1_scale:
        ae_kw["l1_scale"] = {k: float(v) for k, v in (p.split("=") for p in args.l1_scale.split(","))}

    from switchscope import pipeline
    from switchscope.autoencoder import AutoencoderConfig
    from switchscope.interpret import truth_correlations

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        ds = pipeline.run(None, Path(tmp) / "run", configs={"autoencoder": AutoencoderConfig(joint=True, **ae_kw)},
                          stages=["clean", "autoencoder"], seed=args.seed, progress=False, log=lambda m: None)
        summary = json.loads((Path(tmp) / "run" / "summary.json").read_text())
    seconds = time.perf_counter() - t0
    truths = {t: ds[t].values for t in TRUTHS if t in ds}
    ae = summary["autoencoder"]
    import hashlib

    import switchscope.synthetic as synthetic

    film = hashlib.sha256(Path(synthetic.__file__).read_bytes()).hexdigest()[:12]
    result: dict = {"grid": [int(ds.sizes["row"]), int(ds.sizes["col"])], "seed": args.seed,
                    "synthetic_py_sha256": film,
                    "total_seconds": round(seconds, 1), "l1_scale": ae_kw.get("l1_scale", 1.0), "machine": platform.processor() or platform.machine(),
                    "networks": {}}
    for net in ("piezoresponse", "resonance", "joint"):
        rho, _ = truth_correlations(ds[f"embedding_{net}"].transpose("row", "col", "neuron").values, truths)
        best = {}
        for k, t in enumerate(truths):
            col = np.abs(rho[:, k])
            j = int(np.nanargmax(col)) if np.isfinite(col).any() else -1
            best[t.removeprefix("truth_")] = {"abs_rho": round(float(col[j]), 3) if j >= 0 else None, "neuron": j}
        info = ae[net]
        mse = info.get("mse_per_channel", {net: info["mse_all"]})
        result["networks"][net] = {"best_neuron": best, "active_neurons": info["active_neurons"],
                                   "mse_all": {k: round(v, 4) for k, v in mse.items()},
                                   "mse_val": round(info["mse_val"], 4), "seconds": round(info["seconds"], 1)}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
