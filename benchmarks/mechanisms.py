"""Method comparison on held-out synthetic films: which representation tracks the switching mechanisms?

For each film (``switchscope.synthetic.make_dataset`` with seeds and grids that no test and not the
demo use; default seeds 21, 22, 23 at 60 x 60), cleaned with the default ``clean`` stage, every
method below turns the cleaned curves into per-pixel features, and each feature set is scored
against the truth maps ``truth_c_fraction``, ``truth_three_state`` and ``truth_hardening``:

* ``best_abs_rho``: the best single feature's |Spearman rho| with the truth (and which feature);
* ``cv_r2``: a cross-validated linear read-out, ridge regression on all the features
  (standardized; alpha chosen by RidgeCV inside each training fold), 5 folds over the pixels
  (shuffled, ``random_state=0``), R² of the pooled out-of-fold predictions;
* ``cpu_s``: the process CPU seconds the method took (``time.process_time``, all threads), and
  its wall seconds; the clean stage's time is recorded once per film (every method uses it).

Methods, on the piezoresponse and on the resonance curves each (the decomposition stage's
defaults): PCA (16 components: scores), NMF (4: abundances), the paper's divisive k-means (top
split on the piezoresponse, 5 + 4 sub-clusters; labels one-hot encoded as features), the sparse
LSTM autoencoder (``embedding_<channel>``, the default ``AutoencoderConfig()``: ``switchscope run``'s
budget, 40 epochs, seed 0, normalized exactly as the autoencoder stage does), the joint
multichannel autoencoder (``joint = true``: piezoresponse + resonance, ``embedding_joint``) and
the physical detectors (``switchscope.mechanisms.detect``: ``mechanism_three_state``,
``mechanism_hardening``, ``mechanism_c_like``; for them ``matching_abs_rho`` is the detector
meant for the mechanism).

    .venv/bin/python benchmarks/mechanisms.py [--seeds 21 22 23] [--grid 60 60] [--quick]
        [--methods NAME ...] [--out benchmarks/results/mechanisms.json]

``--quick``: one 24 x 24 film (seed 31), networks trained for 3 epochs (not the default budget;
the JSON says so, and goes to the temp folder): a fast check of the script (about 15 s).
``--features DIR`` saves every method's features; ``--rescore`` recomputes the scores of ``--out``
from them without training, ``--ceiling`` adds the detectors and PCA on the noise-free curves
(what the film's signal allows), ``--markdown`` prints the docs' table. Results are written after every method, so an
interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

#: Mechanism -> truth map.
MECHANISMS = {"c_fraction": "truth_c_fraction", "three_state": "truth_three_state",
              "hardening": "truth_hardening"}
#: Mechanism -> the detector meant for it.
MATCHING_DETECTOR = {"c_fraction": "mechanism_c_like", "three_state": "mechanism_three_state",
                     "hardening": "mechanism_hardening"}
CHANNELS = ("piezoresponse", "resonance")


# -- metrics --------------------------------------------------------------------------------------
def best_abs_rho(features: np.ndarray, truth: np.ndarray) -> tuple[float, int]:
    """The largest |Spearman rho| of any column of ``features`` (n_pixels, n_features) with
    ``truth`` (n_pixels,), and that column's index; constant columns (inactive neurons) are
    skipped; ``(nan, -1)`` when every column is constant."""
    from scipy.stats import rankdata

    F = np.asarray(features, dtype=float)
    F = F.reshape(len(F), -1)
    t = rankdata(np.asarray(truth, dtype=float))
    t = t - t.mean()
    R = rankdata(F, axis=0)
    R = R - R.mean(axis=0)
    den = np.sqrt((R**2).sum(axis=0) * (t**2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.abs(R.T @ t) / den
    rho[~(den > 0)] = np.nan
    if not np.isfinite(rho).any():
        return float("nan"), -1
    j = int(np.nanargmax(rho))
    return float(rho[j]), j


class _Winsorize:
    """Clip each feature to its 0.5 and 99.5 percentiles of the training fold (a scikit-learn
    transformer): a few extreme pixels (a detector's failed fit, a neuron that fires on a handful
    of pixels) would otherwise, once standardized, give held-out predictions far outside the
    truth's range (R² of -2000 measured on a detector map)."""

    def __init__(self, q: float = 0.5) -> None:
        self.q = q

    def fit(self, X: np.ndarray, y: Any = None) -> _Winsorize:
        self.lo_, self.hi_ = np.nanpercentile(X, [self.q, 100 - self.q], axis=0)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        return np.clip(X, self.lo_, self.hi_)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"q": self.q}

    def set_params(self, **params: Any) -> _Winsorize:
        self.q = params.get("q", self.q)
        return self


def cv_r2(features: np.ndarray, truth: np.ndarray, *, n_splits: int = 5, seed: int = 0) -> float:
    """Cross-validated R² of a linear read-out of ``truth`` from all ``features``.

    Features clipped to their 0.5..99.5 percentiles and standardized (both fitted on the training
    fold), ridge regression with its alpha chosen among 13 values (1e-3..1e3) by ``RidgeCV`` on
    each training fold only; ``n_splits`` shuffled folds (``random_state=seed``); the R² of the
    pooled out-of-fold predictions against ``truth``.
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    F = np.asarray(features, dtype=float)
    F = F.reshape(len(F), -1)
    y = np.asarray(truth, dtype=float)
    model = make_pipeline(_Winsorize(), StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
    pred = cross_val_predict(model, F, y, cv=KFold(n_splits, shuffle=True, random_state=seed))
    return float(r2_score(y, pred))


def score(features: np.ndarray, truths: dict[str, np.ndarray], names: list[str]) -> dict[str, Any]:
    """``{mechanism: {best_abs_rho, best_feature, cv_r2}}`` for one feature set."""
    out: dict[str, Any] = {}
    for mech, t in truths.items():
        rho, j = best_abs_rho(features, t)
        out[mech] = {"best_abs_rho": _round(rho), "best_feature": names[j] if j >= 0 else None,
                     "cv_r2": _round(cv_r2(features, t))}
    return out


def method_scores(method: str, F: np.ndarray, names: list[str], truths: dict[str, np.ndarray]) -> dict[str, Any]:
    """:func:`score`, plus ``matching_abs_rho`` (the detector meant for each mechanism) for the detectors."""
    out = score(F, truths, names)
    if method == "detectors":
        for mech, det in MATCHING_DETECTOR.items():
            j = names.index(det)
            out[mech]["matching_abs_rho"] = _round(best_abs_rho(F[:, [j]], truths[mech])[0])
    return out


def rescore(doc: dict[str, Any], features_dir: Path) -> dict[str, Any]:
    """Scores recomputed from the features saved by a run (``--features``); times kept."""
    for film in doc["films"]:
        tag = f"seed{film['seed']}_{film['grid'][0]}x{film['grid'][1]}"
        truths = dict(np.load(features_dir / f"{tag}_truth.npz"))
        for name, entry in film["methods"].items():
            saved = np.load(features_dir / f"{tag}_{name}.npz")
            entry["scores"] = method_scores(name, saved["F"], [str(n) for n in saved["names"]], truths)
    doc["summary"] = summarize(doc["films"])
    doc["targets"] = targets(doc["summary"])
    return doc


def _round(x: float, n: int = 4) -> float | None:
    return round(float(x), n) if np.isfinite(x) else None


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


# -- methods --------------------------------------------------------------------------------------
def _one_hot(labels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    ks = np.unique(labels)
    return (labels[:, None] == ks[None, :]).astype(float), [f"cluster {int(k)}" for k in ks]


def _methods(ds, epochs: int | None, tmp: Path) -> list[tuple[str, Callable[[], tuple[np.ndarray, list[str], dict]]]]:
    """(name, function returning (features (n_pixels, k), feature names, extra info)) per method."""
    from switchscope import decomposition as dec
    from switchscope.autoencoder import Autoencoder, AutoencoderConfig, active_neurons
    from switchscope.autoencoder.stage import _loops, _normalization  # the stage's own inputs
    from switchscope.mechanisms import detect

    cfg = AutoencoderConfig(seed=0, device="cpu")
    if epochs is not None:
        cfg = cfg.replace(epochs=epochs, refine_epochs=min(cfg.refine_epochs, 1))
    X = {c: dec._channel_matrix(ds, c)[0] for c in CHANNELS}
    split = X["piezoresponse"]

    def normalized(channel: str) -> np.ndarray:
        name, Xc, _ = _loops(ds, channel)
        st = _normalization(ds, name, Xc)
        return (Xc - st.mean) / st.std

    def pca(c):
        p = dec.pca(X[c], 16, random_state=0)
        return p.scores, [f"PC{k}" for k in range(p.scores.shape[1])], {
            "explained_variance": round(float(p.explained_variance_ratio.sum()), 4)}

    def nmf(c):
        n = dec.nmf(X[c], 4, random_state=0)
        return n.abundances, [f"NMF{k}" for k in range(n.abundances.shape[1])], {}

    def kmeans(c):
        r = dec.divisive_kmeans(X[c], split_data=split, n_subclusters=(5, 4), n_init=10, random_state=0)
        F, names = _one_hot(np.asarray(r.labels))
        return F, names, {"sizes": np.bincount(r.labels).tolist()}

    def network(channels: tuple[str, ...]):
        Xn = np.stack([normalized(c) for c in channels], axis=2) if len(channels) > 1 else normalized(channels[0])
        label = "+".join(channels) if len(channels) > 1 else channels[0]
        ae = Autoencoder(cfg, channel=label).fit(Xn, checkpoint_dir=tmp / label.replace("+", "_"))
        Z = np.asarray(ae.transform(Xn), dtype=float)
        active = active_neurons(Z)  # silenced neurons are no features (the project's own rule)
        return Z[:, active], [f"neuron {k}" for k in np.flatnonzero(active)], {
            "active_neurons": int(active.sum()), "epochs": int(ae.n_epochs_),
            "mse_val": _round(float(np.mean((ae.reconstruct(Xn)[ae.val_index_] - Xn[ae.val_index_]) ** 2)))}

    def detectors():
        maps = detect(ds)
        names = list(maps)
        return np.stack([maps[n].values.ravel() for n in names], axis=1), names, {}

    out = []
    for c in CHANNELS:
        out += [(f"pca_{c}", lambda c=c: pca(c)), (f"nmf_{c}", lambda c=c: nmf(c)),
                (f"kmeans_{c}", lambda c=c: kmeans(c))]
    out += [("detectors", detectors)]
    out += [(f"autoencoder_{c}", lambda c=c: network((c,))) for c in CHANNELS]
    out += [("autoencoder_joint", lambda: network(CHANNELS))]
    return out


def run_film(rows: int, cols: int, seed: int, epochs: int | None, write: Callable[[dict], None],
             features_dir: Path | None = None, methods: list[str] | None = None) -> dict:
    from switchscope.preprocess import CleanConfig, clean
    from switchscope.synthetic import make_dataset

    ds = make_dataset(rows, cols, seed)
    truths = {m: ds[t].values.ravel().astype(float) for m, t in MECHANISMS.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cleaned, cpu, wall = _timed(lambda: clean(ds, CleanConfig()))
    tag = f"seed{seed}_{rows}x{cols}"
    if features_dir is not None:
        features_dir.mkdir(parents=True, exist_ok=True)
        np.savez(features_dir / f"{tag}_truth.npz", **truths)
    film: dict[str, Any] = {"grid": [rows, cols], "seed": seed,
                            "clean": {"cpu_s": round(cpu, 2), "wall_s": round(wall, 2)}, "methods": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in _methods(cleaned, epochs, Path(tmp)):
            if methods is not None and name not in methods:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                (F, names, info), cpu, wall = _timed(fn)
            if features_dir is not None:
                np.savez(features_dir / f"{tag}_{name}.npz", F=F, names=np.array(names))
            entry = {"n_features": int(F.shape[1]), "cpu_s": round(cpu, 2), "wall_s": round(wall, 2), **info,
                     "scores": method_scores(name, F, names, truths)}
            film["methods"][name] = entry
            print(f"seed {seed} {rows}x{cols} {name}: cpu {cpu:.1f} s, "
                  + ", ".join(f"{m} rho {s['best_abs_rho']} R2 {s['cv_r2']}" for m, s in entry["scores"].items()),
                  flush=True)
            write(film)
    return film


def ceiling(rows: int, cols: int, seed: int) -> dict[str, Any]:
    """What the film's signal allows: the detectors and PCA (16) on the noise-free curves
    (``truth_<channel>`` in place of ``<channel>_clean``), scored the same way."""
    from switchscope import decomposition as dec
    from switchscope.mechanisms import detect
    from switchscope.preprocess import CleanConfig, clean
    from switchscope.synthetic import make_dataset

    ds = make_dataset(rows, cols, seed)
    truths = {m: ds[t].values.ravel().astype(float) for m, t in MECHANISMS.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cleaned = clean(ds, CleanConfig())
    for c in CHANNELS:
        cleaned[f"{c}_clean"] = cleaned[f"{c}_clean"].copy(data=ds[f"truth_{c}"].transpose(
            *cleaned[f"{c}_clean"].dims).values)
    out: dict[str, Any] = {}
    maps = detect(cleaned)
    names = list(maps)
    F = np.stack([maps[n].values.ravel() for n in names], axis=1)
    out["detectors"] = method_scores("detectors", F, names, truths)
    for c in CHANNELS:
        p = dec.pca(dec._channel_matrix(cleaned, c)[0], 16, random_state=0)
        out[f"pca_{c}"] = score(p.scores, truths, [f"PC{k}" for k in range(16)])
    return out


def summarize(films: list[dict]) -> dict[str, Any]:
    """Per method and mechanism: mean, min and max over films of best |rho| and CV R²; mean CPU s."""
    out: dict[str, Any] = {}
    methods = [m for m in films[0]["methods"] if all(m in f["methods"] for f in films)]
    for m in methods:
        entry: dict[str, Any] = {"cpu_s_mean": round(float(np.mean([f["methods"][m]["cpu_s"] for f in films])), 2)}
        for mech in MECHANISMS:
            for key in ("best_abs_rho", "cv_r2", "matching_abs_rho"):
                vals = [f["methods"][m]["scores"][mech].get(key) for f in films]
                vals = [v for v in vals if v is not None]
                if vals:
                    entry.setdefault(mech, {})[key] = {"mean": round(float(np.mean(vals)), 3),
                                                       "min": round(float(np.min(vals)), 3),
                                                       "max": round(float(np.max(vals)), 3)}
        out[m] = entry
    return out


def targets(summary: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets on the worst film: some embedding neuron >= 0.7 for each mechanism
    (any of the autoencoders), each matching detector >= 0.8."""
    nets = [m for m in summary if m.startswith("autoencoder_")]
    out: dict[str, Any] = {"neuron_target": 0.7, "detector_target": 0.8, "neuron": {}, "detector": {}}
    for mech in MECHANISMS:
        best = max(nets, key=lambda m: summary[m][mech]["best_abs_rho"]["min"]) if nets else None
        if best:
            v = summary[best][mech]["best_abs_rho"]["min"]
            out["neuron"][mech] = {"network": best, "worst_film_abs_rho": v, "reached": bool(v >= 0.7)}
        if "detectors" in summary:
            v = summary["detectors"][mech]["matching_abs_rho"]["min"]
            out["detector"][mech] = {"detector": MATCHING_DETECTOR[mech], "worst_film_abs_rho": v,
                                     "reached": bool(v >= 0.8)}
    return out


LABELS = {"pca": "PCA (16)", "nmf": "NMF (4)", "kmeans": "divisive k-means (one-hot)",
          "autoencoder": "autoencoder", "detectors": "detectors (3 maps)"}


def table(doc: dict[str, Any]) -> str:
    """The docs' Markdown table: per method, mean over films of best |rho| (worst film) and CV R²."""
    head = ("| method | channel | CPU s | c fraction: rho (worst) | R² | three-state: rho (worst) | R² "
            "| hardening: rho (worst) | R² |\n|---|---|---|---|---|---|---|---|---|")
    rows = [head]
    for m, e in doc["summary"].items():
        kind, _, channel = m.partition("_")
        channel = {"joint": "piezoresponse + resonance", "": "piezoresponse (hardening: + resonance)"}.get(
            channel, channel)
        label = LABELS.get(kind, kind) + (" (joint)" if m == "autoencoder_joint" else "")
        cells = [label, channel, f"{e['cpu_s_mean']:.1f}"]
        for mech in MECHANISMS:
            r, q = e[mech]["best_abs_rho"], e[mech]["cv_r2"]
            cells += [f"{r['mean']:.2f} ({r['min']:.2f})", f"{q['mean']:.2f}"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[21, 22, 23])
    ap.add_argument("--grid", type=int, nargs=2, default=[60, 60], metavar=("ROWS", "COLS"))
    ap.add_argument("--quick", action="store_true", help="one 24 x 24 film (seed 31), 3 epochs: a check")
    ap.add_argument("--out", default=None, help="results JSON (default benchmarks/results/mechanisms.json; "
                                                "with --quick, switchscope_mechanisms_quick.json in the temp folder)")
    ap.add_argument("--features", default=None, help="folder to save every method's features in (npz)")
    ap.add_argument("--ceiling", action="store_true",
                    help="add to --out, per film, the detectors and PCA on the noise-free curves; no training")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="add the films of these results files (e.g. one seed run in a second process) to --out")
    ap.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                    help="only these methods (e.g. detectors pca_resonance autoencoder_piezoresponse); default all")
    ap.add_argument("--markdown", action="store_true", help="print the docs' table of --out and exit")
    ap.add_argument("--rescore", action="store_true",
                    help="recompute the scores of --out from the features saved in --features; no training")
    args = ap.parse_args()
    results = Path(__file__).parent / "results"
    out_path = Path(args.out) if args.out else (Path(tempfile.gettempdir()) / "switchscope_mechanisms_quick.json"
                                                if args.quick else results / "mechanisms.json")
    features_dir = Path(args.features) if args.features else None
    if args.merge:
        doc = json.loads(out_path.read_text())
        films = {(f["seed"], tuple(f["grid"])): f for f in doc["films"]}
        for other in args.merge:
            more = json.loads(Path(other).read_text())
            for f in more["films"]:  # a film interrupted in one run gives way to a complete one
                key = (f["seed"], tuple(f["grid"]))
                if key not in films or len(f["methods"]) > len(films[key]["methods"]):
                    films[key] = f
            doc["films"] = sorted(films.values(), key=lambda f: (f["seed"], f["grid"]))
            doc.setdefault("merged_from", []).append({"command": more["command"],
                                                      "synthetic_py_sha256": more["synthetic_py_sha256"],
                                                      "machine": more["machine"]})
        doc["summary"] = summarize(doc["films"])
        doc["targets"] = targets(doc["summary"])
        out_path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        return
    if args.ceiling:
        doc = json.loads(out_path.read_text())
        for film in doc["films"]:
            film["noise_free"] = ceiling(film["grid"][0], film["grid"][1], film["seed"])
            print(film["seed"], json.dumps(film["noise_free"]))
        out_path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        return
    if args.markdown:
        print(table(json.loads(out_path.read_text())))
        return
    if args.rescore:
        if features_dir is None:
            ap.error("--rescore needs --features")
        doc = rescore(json.loads(out_path.read_text()), features_dir)
        out_path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        print(json.dumps(doc["targets"], indent=1))
        return
    seeds, (rows, cols), epochs = args.seeds, args.grid, None
    if args.quick:
        seeds, rows, cols, epochs = [31], 24, 24, 3

    import sklearn
    import torch

    import switchscope
    import switchscope.mechanisms as mechanisms
    import switchscope.synthetic as synthetic

    from switchscope.autoencoder import AutoencoderConfig

    cfg = AutoencoderConfig()
    result: dict[str, Any] = {
        "command": "python benchmarks/mechanisms.py" + (" --quick" if args.quick else
                                                        f" --seeds {' '.join(map(str, seeds))} --grid {rows} {cols}")
                   + (f" --methods {' '.join(args.methods)}" if args.methods else ""),
        "films": [], "quick": bool(args.quick),
        "autoencoder_budget": {"epochs": epochs or cfg.epochs, "refine_epochs": cfg.refine_epochs if epochs is None
                               else min(cfg.refine_epochs, 1), "max_seconds": cfg.max_seconds,
                               "threads": cfg.threads, "seed": 0,
                               "default_switchscope_run": epochs is None},
        "metrics": {"best_abs_rho": "largest |Spearman rho| of one feature with the truth map",
                    "cv_r2": "ridge (features clipped to training-fold 0.5..99.5 percentiles, standardized, RidgeCV alpha 1e-3..1e3 per training fold), 5 shuffled "
                             "folds over pixels, R2 of pooled out-of-fold predictions",
                    "cpu_s": "process CPU seconds (all threads) of the method, after the clean stage"},
        "synthetic_py_sha256": hashlib.sha256(Path(synthetic.__file__).read_bytes()).hexdigest()[:12],
        "mechanisms_py_sha256": hashlib.sha256(Path(mechanisms.__file__).read_bytes()).hexdigest()[:12],
        "versions": {"switchscope": switchscope.__version__, "torch": torch.__version__,
                     "scikit-learn": sklearn.__version__},
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "load_average_start": [round(x, 2) for x in os.getloadavg()]},
    }
    torch.set_num_threads(1)

    def write(film: dict | None = None) -> None:
        films = result["films"] + ([film] if film is not None and film not in result["films"] else [])
        doc = dict(result, films=films)
        if films and films[0]["methods"]:
            doc["summary"] = summarize(films)
            doc["targets"] = targets(doc["summary"])
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")

    t0 = time.perf_counter()
    for seed in seeds:
        film = run_film(rows, cols, seed, epochs, write, features_dir, args.methods)
        result["films"].append(film)
        write()
    result["total_wall_s"] = round(time.perf_counter() - t0, 1)
    result["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    write()
    print(json.dumps({"summary": summarize(result["films"]), "targets": targets(summarize(result["films"]))},
                     indent=1))


if __name__ == "__main__":
    main()
