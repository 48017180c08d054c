"""The offline HTML report: one page, every script and style inlined, figures beside it.

``build_report(outdir)`` rebuilds ``OUT/report/index.html`` from ``OUT/results.nc`` (and
``OUT/summary.json`` when present) without recomputing anything; :func:`report_stage` does the same
inside a run. Each section appears only when its variables or figures exist, so the page builds from
whatever a run produced. Text taken from data files (names, attrs) is escaped with
:func:`html.escape`; the explorer's JSON is embedded with ``<``, ``>`` and ``&`` written as
``\\u003c``, ``\\u003e`` and ``\\u0026`` so no string in it can close the ``<script>`` element.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import html
import json
import os
import time
import urllib.parse
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import xarray as xr

from .._config import StageConfig, register
from .._context import RunContext
from .._dataset import CHANNELS
from .._errors import DataError
from . import figures
from .explorer import _gradient, _script_json, _unit, explorer_payload
from .figures._common import active
from .figures.autoencoder import reconstruction_error

__all__ = ["ReportConfig", "build_report", "explorer_payload", "report_stage", "write_report"]

ASSETS = Path(__file__).resolve().parent / "assets"

#: Page sections for figures, in page order: (section id, heading). Each drawer of
#: :mod:`switchscope.report.figures` says which section a file it wrote belongs to.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("sho", "SHO fit"),
    ("cleaning", "Cleaning"),
    ("loops", "Loop fits"),
    ("decomposition", "Linear baselines: PCA, NMF, clusters"),
    ("autoencoder", "Autoencoder training"),
    ("reconstruction", "Reconstruction error"),
    ("embedding", "Embedding maps"),
    ("cross", "Cross-channel generation"),
    ("generated", "Generated loops per neuron"),
    ("measured", "Switching mechanisms, measured"),
)


@register("report")
@dataclasses.dataclass(frozen=True, kw_only=True)
class ReportConfig(StageConfig):
    """Options of the ``report`` stage.

    Attributes
    ----------
    title : str
        Page title.
    figures : bool
        Draw the figures (from the results; False: the page shows the figures already there).
    movies : bool
        Also write the training and generator movies (GIF and MP4) beside the page.
    movie_fps : float
        Frames per second of the movies.
    max_explorer_pixels : int
        Largest number of pixels whose curves are embedded for the explorer; larger grids are
        subsampled with one stride along rows and columns (the page says so).
    explorer_digits : int
        Significant digits kept (of each variable's half range) in the embedded curves and maps.
        3 (the default) keeps every value within 1/2000 of its variable's range (half a pixel of
        a 1000-pixel plot) and the paper's two-channel page under 4 MB; the exact values are in
        results.nc.
    explorer_channels : tuple of str
        Channels whose per-pixel curves the explorer embeds (each costs about 1.9 MB per curve
        kind for 60 x 60 x 96); the first present one is used when none of them is.
    """

    title: str = "switchscope report"
    figures: bool = True
    movies: bool = True
    movie_fps: float = 4.0
    max_explorer_pixels: int = 10000
    explorer_digits: int = 3
    explorer_channels: tuple[str, ...] = ("piezoresponse", "resonance")

    def validate(self) -> None:
        if not isinstance(self.title, str):
            self._fail("title", "a string", self.title)
        for name in ("figures", "movies"):
            self.check_choice(name, (True, False))
        self.check_number("movie_fps", lo=0, hi=60, lo_open=True)
        self.check_number("max_explorer_pixels", lo=1, hi=10_000_000, integer=True)
        self.check_number("explorer_digits", lo=2, hi=8, integer=True)
        if isinstance(self.explorer_channels, str) or not all(c in CHANNELS for c in self.explorer_channels):
            self._fail("explorer_channels", "a list of channel names from " + ", ".join(CHANNELS),
                       self.explorer_channels)
        object.__setattr__(self, "explorer_channels", tuple(self.explorer_channels))


# ---------------------------------------------------------------------------------------------
# page
# ---------------------------------------------------------------------------------------------
def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x: Any) -> str:
    if isinstance(x, (float, np.floating)):
        return "NaN" if not np.isfinite(x) else f"{float(x):.4g}"
    if isinstance(x, (list, tuple)) and len(x) > 12:
        return _e(json.dumps(list(x[:12]), default=str)[:-1] + ", ...]")
    if isinstance(x, (list, tuple, dict)):
        s = json.dumps(x, default=str)
        return _e(s if len(s) <= 300 else s[:300] + "...")
    return _e(x)


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]], *, cls: str = "", text_cols: int = 1,
           shade: bool | Mapping[int, float] = False) -> str:
    """An HTML table. ``shade=True`` tints numeric cells in [-1, 1] by magnitude (blue +, red -);
    a mapping ``{column: full scale}`` tints only those columns, each on its own scale."""
    scales: Mapping[int, float] = shade if isinstance(shade, Mapping) else {}
    h = "".join(f'<th class="text">{_e(c)}</th>' if i < text_cols else f"<th>{_e(c)}</th>"
                for i, c in enumerate(header))
    body = []
    for r in rows:
        cells = []
        for i, c in enumerate(r):
            style = ""
            full = scales.get(i) if scales else (1.0 if shade is True else None)
            if full and isinstance(c, (float, np.floating)) and np.isfinite(c) and abs(c) <= full:
                rgb = "31,119,180" if c >= 0 else "214,39,40"
                style = f' style="background: rgba({rgb},{0.6 * abs(float(c)) / full:.2f})"'
            klass = ' class="text"' if i < text_cols else ""
            cells.append(f"<td{klass}{style}>{_fmt(c)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table class="{_e(cls)}"><thead><tr>{h}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _img(path: Path, caption: str) -> str:
    """A figure with its PNG inlined (a data: URI): the page needs no file beside it."""
    import base64

    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_e(caption)}" data-file="{_e(Path(path).name)}"'
            f' loading="eager"><figcaption>{_e(caption)}</figcaption></figure>')


def _section(sid: str, title: str, body: str) -> tuple[str, str, str]:
    """``(id, heading, body)``: the body is HTML built by this module's escaping helpers."""
    return sid, title, body


#: Captions of the drawn figures, by file-name pattern ({ch}: the channel in the name).
_CAPTIONS: tuple[tuple[str, str], ...] = (
    (r"sho_maps\.png", "SHO fit of every spectrum: amplitude A, resonance w0, quality factor Q, phase phi and "
                        "log10(1 - R²), at the step nearest 0 V on the descending sweep (top) and on the ascending sweep "
                        "(bottom): the two remanent states, so phi and A show the written domains. Every step "
                        "is in the explorer and in results.nc."),
    (r"sho_r2\.png", "Fit quality: histogram of 1 - R² over every spectrum (log axes) and each pixel's worst fit "
                      "over the steps, as log10(1 - R²)."),
    (r"sho_projection\.png", "Projection of amplitude and phase onto loops: angle and offset of each pixel's axis "
                              "of switching."),
    (r"clean\.png", "Raw (grey) and cleaned (blue) curve of the most repaired pixel of each channel."),
    (r"loop_maps\.png", "Switching parameters of the fitted loops, one map each, and the fit quality R²."),
    (r"loop_examples\.png", "Measured and fitted loops of pixels across the R² range, the worst first "
                             "(red: descending sweep, blue: ascending)."),
    (r"pca(?P<ch>_\w+)?\.png", "PCA{ch}: components, explained variance and score maps."),
    (r"nmf(?P<ch>_\w+)?\.png", "NMF{ch}: components and their abundance maps."),
    (r"clusters_divisive(?P<ch>_\w+)?\.png", "The paper's divisive k-means{ch}: cluster map and mean loop of "
                                              "each cluster."),
    (r"clusters_kmeans_pca(?P<ch>_\w+)?\.png", "k-means on PCA scores{ch}: cluster map and mean loop of each "
                                                "cluster."),
    (r"embedding_(?P<ch>\w+)\.png", "{ch} embedding: one map per active neuron, each on its own full range."),
    (r"training_(?P<ch>\w+)\.png", "{ch} autoencoder: training and validation error per epoch."),
    (r"reconstruction_error\.png", "Autoencoder reconstruction error per pixel, in normalized units."),
    (r"generated_piezoresponse_from_resonance\.png", "Piezoresponse loops of the pixels that the resonance "
                                                      "generator selects at each level."),
    (r"mechanism_maps\.png", "Mechanism detectors: width of an intermediate plateau between two switching "
                               "events (three-state, V), rise of the resonance before switching above the "
                               "branch's baseline (hardening), height and sharpness of the step relative to "
                               "the film (c-like)."),
    (r"mechanism_named_(?P<ch>\w+)\.png", "{ch}: each named neuron beside the map of what it tracks and, where "
                                            "the interpret stage made them, its generated loops."),
    (r"generated_(?P<ch>\w+)\.png", "{ch} loops generated by sweeping each active neuron from 0 (dark) to its "
                                     "largest activation (light)."),
)


def _caption(name: str) -> str:
    import re

    for pattern, text in _CAPTIONS:
        m = re.fullmatch(pattern, name)
        if m:
            ch = (m.groupdict().get("ch") or "").strip("_")
            return text.format(ch=(f" of {ch}" if text.startswith(("PCA", "NMF", "The paper", "k-means")) and ch
                                   else ch)).replace("  ", " ")
    return name.removesuffix(".png").replace("_", " ")


#: Why a switching map has no value at a pixel, by map (shown beside the NaN counts).
_NAN_REASONS = {
    "nucleation": "the response never changes by the nucleation fraction inside the voltage range",
    "coercive": "the loop never crosses half its height inside the voltage range",
}


def _summary_section(ds: xr.Dataset, summary: Mapping[str, Any]) -> str:
    rows = [("grid (rows x cols)", f"{ds.sizes.get('row', 0)} x {ds.sizes.get('col', 0)}"),
            ("steps", ds.sizes.get("step", 0))]
    if "voltage" in ds.coords:
        v = np.asarray(ds["voltage"].values, float)
        rows.append(("voltage", f"{v[0]:.3g} V first, range {v.min():.3g} to {v.max():.3g} V"))
    rows += [(f"attribute: {k}", v) for k, v in ds.attrs.items()]
    out = _table(["item", "value"], rows, text_cols=2)
    chan = []
    for ch in CHANNELS:
        if ch in ds:
            a = ds[ch].values
            fin = np.isfinite(a)
            chan.append((ch, _unit(ds[ch].attrs.get("units", "")), "x".join(map(str, a.shape)),
                         f"{100 * fin.mean():.2f}%", a[fin].min() if fin.any() else "none finite",
                         a[fin].max() if fin.any() else "none finite"))
    if chan:
        out += _table(["channel", "units", "shape", "finite", "min (finite)", "max (finite)"], chan, text_cols=3)
    arrays = [(str(v), ", ".join(map(str, ds[v].dims)), "x".join(map(str, ds[v].shape)),
               _unit(ds[v].attrs.get("units", "")), ds[v].attrs.get("long_name", "")) for v in ds.data_vars]
    out += ("<details><summary>All arrays in results.nc</summary>"
            + _table(["variable", "dims", "shape", "units", "description"], arrays, text_cols=5) + "</details>")
    return out


def _cleaning_table(ds: xr.Dataset, summary: Mapping[str, Any]) -> str:
    rows, reasons, ranges = [], [], []
    for ch in CHANNELS:
        v = f"{ch}_clean"
        if v not in ds:
            continue
        a = ds[v].attrs
        method = str(a.get("normalization", "global"))
        if method == "pixel":
            stats = [f"per pixel ({ch}_norm_mean)", f"per pixel ({ch}_norm_std)"]
        else:
            stats = [a.get("norm_mean", ""), a.get("norm_std", "")]
        rows.append([ch, a.get("n_nonfinite", ""), a.get("n_out_of_range", ""), a.get("n_outliers", ""), method,
                     *stats])
        if "normalization_reason" in a:
            reasons.append(f"<li><b>{_e(ch)}</b>: {_e(a['normalization_reason'])}.</li>")
        if "resonance_range_khz" in a:
            lo, hi = np.ravel(a["resonance_range_khz"])[:2]
            ranges.append(f"{ch} outside {_fmt(float(lo))}-{_fmt(float(hi))} kHz "
                          f"({_e(a.get('resonance_range_source', ''))})")
    if not rows:
        return ""
    from ..preprocess import CleanConfig

    recorded = summary.get("configs", {}).get("clean") if isinstance(summary.get("configs"), Mapping) else None
    clean = {**CleanConfig().to_dict(), **(recorded if isinstance(recorded, Mapping) else {})}
    n_pix = int(ds.sizes.get("row", 0)) * int(ds.sizes.get("col", 0))
    per = clean["n_outliers"]
    out_of_range = ("; values <b>out of range</b> (" + _e("; ".join(ranges)) + ") were set to NaN and interpolated"
                    if ranges else "")
    note = ("<p class=\"note\">Points replaced, and why: <b>NaN/Inf</b> values in the file were interpolated from "
            f"their neighbours along the voltage{out_of_range}; the paper's recipe then replaces, in every curve, the "
            f"<b>{_e(per)} points farthest from a Savitzky-Golay fit</b> (window "
            f"{_e(clean.get('savgol_window', 7))}, order {_e(clean.get('savgol_order', 3))}), spikes or not: "
            f"{_e(per)} x {n_pix} pixels. Each channel is then normalized for the learning stages: "
            "<b>global</b> (the paper: its mean and standard deviation, norm_mean and norm_std), <b>pixel</b> (each "
            "curve by its own mean and standard deviation) or <b>robust</b> (median and interquartile range / "
            "1.349).</p>")
    if reasons:
        note += f"<ul class=\"note\">{''.join(reasons)}</ul>"
    return note + _table(["channel", "NaN/Inf repaired", "out of range", "outlier points replaced", "normalization",
                          "norm_mean", "norm_std"], rows, text_cols=1)


def _sho_table(ds: xr.Dataset, summary: Mapping[str, Any]) -> str:
    """The SHO fit in numbers: spectra, median R², status counts (from the arrays, with the
    run's own summary line beside them; every string escaped)."""
    if "sho_r2" not in ds:
        return ""
    from ..sho import STATUS_MESSAGES

    r2 = ds["sho_r2"].values.astype(float)
    rows: list[tuple[str, Any]] = [("spectra", int(r2.size)),
                                   ("median R²", float(np.nanmedian(r2)) if np.isfinite(r2).any() else "none finite"),
                                   ("spectra with R² < 0.9", int(np.sum(r2 < 0.9)))]
    if "freq" in ds.coords:
        rows.append(("frequency bins", int(ds.sizes.get("freq", 0))))
    info = summary.get("sho") if isinstance(summary.get("sho"), Mapping) else {}
    for key, label in (("dtype", "fit dtype"), ("seconds", "fit seconds"), ("spectra_per_s", "spectra per second")):
        if key in info:
            rows.append((label, info[key]))
    if "projection_angle" in ds:
        method = ds["piezoresponse"].attrs.get("projection", "") if "piezoresponse" in ds else ""
        rows.append(("projection", method or "yes"))
    out = _table(["quantity", "value"], rows)
    if "sho_status" in ds:
        codes, counts = np.unique(ds["sho_status"].values.astype(int), return_counts=True)
        out += _table(["status", "meaning", "spectra", "share"],
                      [(int(c), STATUS_MESSAGES.get(int(c), "unknown"), int(n), f"{100 * n / r2.size:.2f}%")
                       for c, n in zip(codes, counts)], text_cols=2)
    if isinstance(info.get("status"), str):
        out += f'<p class="note">The run reported: {_e(info["status"])}.</p>'
    return out


def _loops_table(ds: xr.Dataset) -> str:
    rows = []
    if "loop_r2" in ds:
        r2 = ds["loop_r2"].values.astype(float)
        rows += [("median R²", np.nanmedian(r2)), ("min R²", np.nanmin(r2)),
                 ("pixels with R² < 0.95", int(np.sum(r2 < 0.95)))]
    if "loop_converged" in ds:
        rows.append(("converged", f"{100 * np.mean(ds['loop_converged'].values.astype(bool)):.1f}%"))
    for v in ("loop_height", "loop_width", "loop_area", "loop_coercive_neg", "loop_coercive_pos", "loop_imprint"):
        if v in ds:
            rows.append((f"median {v}", np.nanmedian(ds[v].values.astype(float))))
    table = _table(["quantity", "value"], rows) if rows else ""
    fitted = ds["loop_r2"].values if "loop_r2" in ds else None
    n_unfit = int(np.sum(~np.isfinite(fitted))) if fitted is not None else 0
    gaps = []
    for v in [str(x) for x in ds.data_vars if str(x).startswith("loop_") and ds[x].dims == ("row", "col")]:
        vals = ds[v].values
        if vals.dtype.kind != "f":
            continue
        n_nan = int(np.isnan(vals).sum()) - n_unfit
        if n_nan > 0:
            why = next((r for k, r in _NAN_REASONS.items() if k in v), "not defined for these loops")
            gaps.append((v, n_nan, f"{100 * n_nan / vals.size:.1f}%", why))
    if gaps:
        table += ("<p class=\"note\">Maps with pixels left empty (NaN) on fitted loops, and why"
                  + (f"; {n_unfit} pixels were not fitted at all (see loop_status)" if n_unfit else "") + ".</p>"
                  + _table(["map", "pixels", "share", "why"], gaps, text_cols=1))
    return table


def _decomposition_table(ds: xr.Dataset) -> str:
    if "pca_explained_variance" not in ds:
        return ""
    ev = np.asarray(ds["pca_explained_variance"].values, float)
    total = ev.sum()
    ratio = ev / total if total > 0 else ev
    return _table(["component", "explained variance", "cumulative share"],
                  [(k, ev[k], np.cumsum(ratio)[k]) for k in range(ev.size)])


def _baseline_rows(summary: Mapping[str, Any]) -> tuple[dict[str, list[tuple]], dict[str, list[str]]]:
    """Rows of the baseline tables and the warnings, by page section, from ``summary``."""
    rows: dict[str, list[tuple]] = {"decomposition": [], "reconstruction": []}
    warns: dict[str, list[str]] = {"decomposition": [], "reconstruction": []}

    def add(gid: str, ch: str, model: str, b: Any) -> None:
        if not isinstance(b, Mapping) or "model_fraction" not in b:
            return
        rows[gid].append((ch, model, b.get("model_fraction"), b.get("mean_loop_fraction"),
                          b.get("pca_fraction", "-"), str(b.get("evaluated_on", ""))))
        if b.get("warning"):
            warns[gid].append(str(b["warning"]))

    dec = summary.get("decomposition")
    if isinstance(dec, Mapping):
        for ch, part in [(dec.get("channel", ""), dec), *[(k, v) for k, v in dec.items()
                                                          if k in CHANNELS and isinstance(v, Mapping)]]:
            b = part.get("baselines") if isinstance(part, Mapping) else None
            if isinstance(b, Mapping):
                for key in ("pca", "nmf"):
                    add("decomposition", str(ch), key.upper(), {**b.get(key, {}), "evaluated_on": b.get("evaluated_on")})
    ae = summary.get("autoencoder")
    if isinstance(ae, Mapping):
        for ch, info in ae.items():
            if isinstance(info, Mapping):
                add("reconstruction", str(ch), "autoencoder", info.get("baselines"))
    return rows, warns


def _baselines_block(summary: Mapping[str, Any], gid: str) -> str:
    """The learned models' errors against the mean loop (and PCA), with a warning box for each
    model that is not clearly better than the mean loop."""
    rows, warns = _baseline_rows(summary)
    if not rows[gid]:
        return ""
    boxes = "".join(f'<div class="ss-warning" role="alert"><b>Warning:</b> {_e(w)}.</div>' for w in warns[gid])
    pca = ("; PCA: PCA with as many components as the network's active neurons, fitted on the same training "
           "pixels" if gid == "reconstruction" else "")
    return (boxes + "<p class=\"note\">Reconstruction error against trivial baselines, as fractions of the data "
            "variance (1: no better than one number). Mean loop: every curve predicted by the mean curve of the "
            f"training pixels{pca}. A model is clearly better when its error stays below 0.8 x the mean "
            "loop's.</p>"
            + _table(["channel", "model", "model error", "mean loop", "PCA (same size)", "evaluated on"], rows[gid],
                     text_cols=2))


def _reconstruction_table(ds: xr.Dataset, summary: Mapping[str, Any]) -> str:
    rows = []
    for ch in CHANNELS:
        err = reconstruction_error(ds, ch)
        if err is not None:
            rows.append((ch, np.nanmean(err), np.nanmedian(err), np.nanmax(err)))
    if not rows:
        return ""
    return ("<p class=\"note\">Mean squared error of reconstruction_&lt;channel&gt; against "
            "&lt;channel&gt;_clean, in normalized units (divided by norm_std²).</p>"
            + _table(["channel", "mean MSE", "median MSE", "max MSE"], rows))


def _active_of(ds: xr.Dataset, ch: str) -> np.ndarray | None:
    """The active neurons of ``embedding_<ch>`` (the ones its maps show), None without it."""
    emb = ds.get(f"embedding_{ch}")
    return None if emb is None else active(emb.transpose("row", "col", ...).values)


def _mechanism_tables(ds: xr.Dataset) -> str:
    parts = []
    for ch in CHANNELS:
        active = _active_of(ds, ch)
        v = f"mechanism_truth_{ch}"
        if v in ds:
            rho = ds[v].transpose("neuron", "truth").values
            truths = [str(t) for t in ds[v]["truth"].values]
            keep = np.flatnonzero(np.isfinite(rho).any(axis=1))
            if active is not None:  # exactly the neurons the embedding maps show
                keep = np.intersect1d(keep, active)
            rows = []
            for j in keep:
                best = int(np.nanargmax(np.abs(rho[j])))
                rows.append([f"neuron {j}", *rho[j].tolist(), truths[best]])
            parts.append(f"<h3>{_e(ch)}: Spearman rank correlation with ground truth</h3>"
                         f"<p class=\"note\">The {len(keep)} active neurons; colour: rho from -1 (red) to +1 "
                         "(blue).</p>"
                         + _table(["neuron", *truths, "best match"], rows, cls="mechanism",
                                  shade={i + 1: 1.0 for i in range(len(truths))}))
        eta, fv = f"mechanism_cluster_eta2_{ch}", f"mechanism_cluster_f_{ch}"
        if eta in ds:
            e = ds[eta].values.astype(float)
            f = ds[fv].values.astype(float) if fv in ds else np.full_like(e, np.nan)
            keep = np.flatnonzero(np.isfinite(e))
            if active is not None:
                keep = np.intersect1d(keep, active)
            rows = [(f"neuron {j}", e[j], f[j]) for j in keep]
            f_max = float(np.nanmax(f[keep])) if keep.size and np.isfinite(f[keep]).any() else 0.0
            parts.append(f"<h3>{_e(ch)}: separation of cluster_divisive</h3>"
                         "<p class=\"note\">eta²: share of a neuron's variance between clusters "
                         "(0 none, 1 complete; shaded on 0-1); F: one-way ANOVA statistic (shaded on 0 to "
                         "its largest value here). Active neurons only.</p>"
                         + _table(["neuron", "eta²", "F"], rows, cls="mechanism",
                                  shade={1: 1.0, **({2: f_max} if f_max > 0 else {})}))
    return "".join(parts)


def _measured_block(ds: xr.Dataset) -> str:
    """Definitions of the mechanism detectors, the named neurons (sentences) and the rho table."""
    from ..mechanisms import DETECTORS, sentences

    rows = [(v, DETECTORS[v][1], ds[v].attrs.get("units", "")) for v in DETECTORS if v in ds]
    if not rows:
        return ""
    parts = [_table(["map", "definition", "units"], rows, text_cols=3)]
    said = sentences(ds)
    if "mechanism_named" in ds:
        a = ds["mechanism_named"].attrs
        parts.append(f"<p class=\"note\">Rule: a neuron is named after the measure with the largest |Spearman rho| "
                     f"when |rho| &gt;= {_e(a.get('min_rho'))} and every measure within {_e(a.get('margin'))} of it "
                     f"correlates with it at |rho| &gt;= {_e(a.get('same_measure'))}.</p>")
        parts.append("<ul>" + "".join(f"<li>{_e(t)}</li>" for t in said) + "</ul>" if said
                     else "<p>No neuron passes the rule.</p>")
    if "mechanism_rho" in ds:
        rho = ds["mechanism_rho"].transpose("mechanism_channel", "neuron", "measure").values
        measures = [str(m) for m in ds["measure"].values]
        body = [(f"{ch} {int(n)}", *rho[c, j].tolist())
                for c, ch in enumerate(str(x) for x in ds["mechanism_channel"].values)
                for j, n in enumerate(ds["neuron"].values) if np.isfinite(rho[c, j]).any()]
        parts.append(_table(["neuron", *[m.removeprefix("mechanism_").removeprefix("loop_") for m in measures]],
                            body, cls="mechanism", shade={i + 1: 1.0 for i in range(len(measures))}))
    return "".join(parts)


def _flatten_summary(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and len(v) <= 40:
            out += _flatten_summary(v, key + ".")
        else:
            out.append((key, v))
    return out


def _explorer_section(payload: dict[str, Any]) -> str:
    if not payload["maps"] and not payload["panels"] and not payload["generated"] and not payload.get("sho"):
        return ""
    parts = []
    if payload["stride"] > 1:
        parts.append(f'<p class="note" id="ss-subsampled">The grid of {payload["grid"][0]} x {payload["grid"][1]} '
                     f'pixels is subsampled for the explorer: one row and one column in {payload["stride"]} '
                     f'({payload["sub_grid"][0]} x {payload["sub_grid"][1]} pixels).</p>')
    rows, cols = payload["sub_grid"]
    scale = max(1, 240 // max(rows, cols, 1))  # drawn at scale x scale per pixel: a crisp cross-hair

    def canvas(attrs: str) -> str:
        return (f'<canvas {attrs} data-rows="{rows}" data-cols="{cols}" data-scale="{scale}" '
                f'width="{cols * scale}" height="{rows * scale}"></canvas>')

    def bar(m: Mapping[str, Any]) -> str:
        if m["categorical"]:
            return '<div class="ss-cbar-labels"><span>labels: one colour each</span></div>'
        return (f'<div class="ss-cbar" style="background: {_gradient()}"></div><div class="ss-cbar-labels">'
                f'<span>{_fmt(m["vmin"])}</span><span>{_e(m["units"])} ({_e(m["range"])})</span>'
                f'<span>{_fmt(m["vmax"])}</span></div>')

    if payload["maps"]:
        maps = "".join(
            "<figure>" + canvas(f'class="ss-map" data-index="{i}" data-name="{_e(m["name"])}"')
            + f'{bar(m)}<figcaption>{_e(m["name"])}</figcaption></figure>' for i, m in enumerate(payload["maps"]))
        parts.append('<p class="note">Click a pixel on any map to see its curves; hover to read a value.</p>'
                     f'<div id="ss-hover" class="note">&nbsp;</div><div id="ss-maps">{maps}</div>')
    if payload["panels"]:
        opts = "".join(f'<option value="{pi}:{si}">{_e(s["variable"])}</option>'
                       for pi, p in enumerate(payload["panels"]) for si, s in enumerate(p["series"]))
        parts.append(
            '<h3>Data cube</h3><p class="note">A map of any curve variable at one voltage step; the colour '
            'scale spans the variable\'s full range at every step.</p><div class="ss-gen-controls">'
            f'<label>variable <select id="ss-cube-var">{opts}</select></label>'
            f'<label>step <input type="range" id="ss-cube-step" min="0" max="{len(payload["voltage"]) - 1}" '
            'step="1" value="0"></label><span id="ss-cube-value"></span></div>'
            + "<figure>" + canvas('id="ss-cube" class="ss-cube" data-name="cube"')
            + f'<div class="ss-cbar" style="background: {_gradient()}"></div>'
            '<div class="ss-cbar-labels"><span id="ss-cube-min"></span><span id="ss-cube-units"></span>'
            '<span id="ss-cube-max"></span></div></figure>')
    parts.append('<div id="ss-pixel"></div>')
    if payload["panels"]:
        parts.append('<p class="note">Solid: descending sweep; dashed: ascending sweep. '
                     '<button type="button" id="ss-csv">Download this pixel\'s curves (CSV)</button></p>')
    if payload["panels"]:
        colors = {"raw": "#999999", "clean": "#1f77b4", "fit": "#d62728", "reconstruction": "#2ca02c"}
        boxes = []
        for i, p in enumerate(payload["panels"]):
            legend = "".join(f'<span><i style="background:{colors[s["name"]]}"></i>{_e(s["name"])} '
                             f'({_e(s["variable"])})</span>' for s in p["series"])
            boxes.append(f'<div class="ss-panel-box"><h3>{_e(p["channel"])} ({_e(p["units"])})</h3>'
                         f'<div class="legend">{legend}</div>'
                         f'<svg class="ss-plot ss-panel" id="ss-panel-{i}" data-channel="{_e(p["channel"])}"></svg></div>')
        parts.append(f'<div id="ss-curves">{"".join(boxes)}</div>')
    sho = payload.get("sho")
    if sho:
        every = (f' The spectra are embedded for one explorer pixel in {sho["every"]} along rows and columns '
                 f'({sho["sub_grid"][0]} x {sho["sub_grid"][1]} pixels): the nearest one to the clicked pixel is '
                 'shown.' if sho["every"] > 1 else "")
        boxes = "".join(
            f'<div class="ss-panel-box"><h3>{_e(title)}</h3><div class="legend">'
            '<span><i style="background:#999999"></i>measured (spectrum)</span>'
            '<span><i style="background:#d62728"></i>SHO fit</span></div>'
            f'<svg class="ss-plot" id="{_e(sid)}"></svg></div>'
            for sid, title in (("ss-sho-amp", f"|H| ({sho['units']})" if sho["units"] else "|H|"),
                               ("ss-sho-phase", "phase (deg)")))
        parts.append(
            '<h3>SHO fit of one spectrum</h3><p class="note">The measured band-excitation spectrum of the clicked '
            'pixel at one step (grey) and the SHO model drawn from its fitted A, w0, Q and phi (red), '
            'H(w) = A exp(i phi) w0² / (w² - i w w0 / Q - w0²).' + every + '</p>'
            '<div class="ss-gen-controls" id="ss-sho">'
            f'<label>step <input type="range" id="ss-sho-step" min="0" max="{len(payload["voltage"]) - 1}" '
            'step="1" value="0"></label><span id="ss-sho-value"></span></div>'
            f'<div id="ss-sho-curves">{boxes}</div>')
    if payload["generated"]:
        opts = "".join(f'<option value="{i}">{_e(g["variable"])}</option>' for i, g in enumerate(payload["generated"]))
        parts.append(
            '<h3>Generator</h3><div class="ss-gen-controls">'
            f'<label>curves <select id="ss-gen-channel">{opts}</select></label>'
            '<label>neuron <select id="ss-gen-neuron"></select></label>'
            '<label>activation <input type="range" id="ss-gen-level" min="0" max="1" step="1" value="0"></label>'
            '<span id="ss-gen-value"></span></div>'
            '<svg class="ss-plot" id="ss-gen-plot"></svg>')
    return "".join(parts)


def _render_page(*, title: str, source: Any, stamp: str, sections: list[tuple[str, str, str]], data: str,
                 selection: str = "") -> str:
    """The page from ``assets/page.html.j2``. The template engine escapes every value (title,
    source, section ids and headings); the section bodies come from this module's helpers, which
    escape what they insert, and the CSS, script and JSON data (no ``<``, ``>`` or ``&`` in it) go
    in as they are."""
    import jinja2
    from markupsafe import Markup

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(ASSETS)), autoescape=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template("page.html.j2").render(
        title=title, source=str(source), stamp=stamp, selection=str(selection),
        sections=[{"id": sid, "title": head, "body": Markup(body)} for sid, head, body in sections],
        css=Markup((ASSETS / "report.css").read_text(encoding="utf-8")),
        js=Markup((ASSETS / "explorer.js").read_text(encoding="utf-8")), data=Markup(data))


def _figure_files(figdir: Path) -> list[str]:
    return sorted(p.name for p in figdir.glob("*.png")) if figdir.is_dir() else []


def _stage_option(summary: Mapping[str, Any], section: str, name: str, default: Any) -> Any:
    """An option as the run recorded it in ``summary["configs"]`` (older ``[interpret] movies``)."""
    configs = summary.get("configs")
    value = configs.get(section, {}).get(name, default) if isinstance(configs, Mapping) else default
    return value if isinstance(value, type(default)) else default


def write_report(ds: xr.Dataset, report_dir: str | Path, *, summary: Mapping[str, Any] | None = None,
                 config: ReportConfig | None = None, run_dir: str | Path | None = None) -> Path:
    """Draw every figure and movie of ``ds`` (see :mod:`switchscope.report.figures`) and render
    ``report_dir/index.html``. ``run_dir``: the run's folder, whose ``models/`` hold the training
    curves (default: the folder above ``report_dir``).

    Returns the path of the page.
    """
    config = config or ReportConfig()
    summary = dict(summary or {})
    report_dir = Path(report_dir)
    run_dir = Path(run_dir) if run_dir is not None else report_dir.parent
    figdir = report_dir / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    drawn: dict[str, list[tuple[str, Path]]] = {}
    if config.figures:
        skip = tuple(s for s in ("clean", "loops") if not _stage_option(summary, s, "figures", True))
        movies = config.movies and _stage_option(summary, "interpret", "movies", True)
        drawn = figures.draw_figures(ds, report_dir, run_dir=run_dir, movies=movies,
                                     fps=_stage_option(summary, "interpret", "movie_fps", config.movie_fps),
                                     skip=skip)
    grouped: dict[str, list[str]] = {sid: [] for sid, _ in SECTIONS}
    for pairs in drawn.values():
        for sid, path in pairs:
            if sid in grouped and path.suffix == ".png":
                grouped[sid].append(path.name)
    known = {n for names in grouped.values() for n in names}
    other = [n for n in _figure_files(figdir) if n not in known]

    def figs(gid: str) -> str:
        return "".join(_img(figdir / n, _caption(n)) for n in grouped[gid])

    sections: list[tuple[str, str, str]] = [_section("summary", "Dataset", _summary_section(ds, summary))]
    payload = explorer_payload(ds, max_pixels=config.max_explorer_pixels, digits=config.explorer_digits,
                               channels=config.explorer_channels)
    explorer = _explorer_section(payload)
    if explorer:  # first after the summary: the place to start
        sections.append(_section("explorer", "Explorer", explorer))
    extra = {"sho": _sho_table(ds, summary), "cleaning": _cleaning_table(ds, summary), "loops": _loops_table(ds),
             "decomposition": _baselines_block(summary, "decomposition") + _decomposition_table(ds),
             "reconstruction": _baselines_block(summary, "reconstruction") + _reconstruction_table(ds, summary),
             "measured": _measured_block(ds)}
    for gid, title in SECTIONS:
        body = extra.get(gid, "") + figs(gid)
        if body:
            sections.append(_section(gid, title, body))

    moviedir = report_dir / "movies"
    movies = sorted(moviedir.iterdir()) if moviedir.is_dir() else []
    mv = []
    names = {p.name for p in movies}
    for p in movies:
        if p.suffix != ".mp4":
            continue
        rel = _e(urllib.parse.quote(f"movies/{p.name}"))
        gif = p.with_suffix(".gif").name
        link = (f' (<a href="{_e(urllib.parse.quote(f"movies/{gif}"))}">GIF</a>)' if gif in names else "")
        mv.append(f'<figure class="movie"><video controls loop muted src="{rel}"></video>'
                  f'<figcaption>{_e(p.stem.replace("_", " "))}: MP4{link}</figcaption></figure>')
    if mv:
        note = ('<p class="note">The movies are files in <code>movies/</code> beside this page; '
                "a copy of <code>index.html</code> alone shows everything else.</p>")
        sections.append(_section("movies", "Movies", note + "".join(mv)))
    mech = _mechanism_tables(ds)
    if mech:
        sections.append(_section("mechanisms", "Mechanism labels", mech))

    timings = summary.get("timings_s")
    if isinstance(timings, Mapping) and timings:
        sections.append(_section("timings", "Timings",
                                 _table(["stage", "seconds"], [(k, v) for k, v in timings.items()])))
    rest = {k: v for k, v in summary.items() if k not in ("timings_s", "configs", "versions")}
    if rest:
        sections.append(_section("numbers", "Key numbers (summary.json)",
                                 _table(["key", "value"], _flatten_summary(rest), text_cols=2)))
    if isinstance(summary.get("versions"), Mapping):
        sections.append(_section("versions", "Software", _table(["package", "version"], summary["versions"].items(),
                                                                  text_cols=2)))
    if other:
        sections.append(_section("other", "Other figures",
                                 "".join(_img(figdir / n, n.removesuffix(".png")) for n in other)))

    source = ds.attrs.get("source", summary.get("dataset", {}).get("source", "") if isinstance(
        summary.get("dataset"), Mapping) else "")
    selection = ds.attrs.get("selection", "")
    page = _render_page(
        title=config.title, source=source, selection=selection, stamp=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        sections=sections, data=_script_json(payload))
    index = report_dir / "index.html"
    tmp = index.with_name(f".index.html.tmp-{os.getpid()}")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, index)
    finally:
        tmp.unlink(missing_ok=True)
    return index


def build_report(outdir: str | Path, *, config: ReportConfig | None = None) -> Path:
    """Rebuild ``outdir/report/index.html`` from ``outdir/results.nc`` and ``outdir/summary.json``.

    Nothing is refitted: figures already in ``outdir/report/figures`` are kept, missing ones that
    can be drawn from the arrays are drawn.

    Parameters
    ----------
    outdir : path
        A run's output folder.

    Returns
    -------
    Path
        ``outdir/report/index.html``.
    """
    outdir = Path(outdir)
    results = outdir / "results.nc"
    if not results.is_file() and (outdir / "results.zarr").is_dir():
        results = outdir / "results.zarr"  # a run with --format zarr
    elif not results.is_file():
        raise DataError(f"no results.nc in {str(outdir)!r}; give the output folder of `switchscope run`")
    from ..io import load

    ds = load(results)  # the reader restores the attributes save() wrote as JSON
    summary: dict[str, Any] = {}
    sfile = outdir / "summary.json"
    if sfile.is_file():
        try:
            summary = json.loads(sfile.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"summary.json in {str(outdir)!r} is not valid JSON ({exc}); "
                            "delete it or rerun `switchscope run`") from None
    return write_report(ds, outdir / "report", summary=summary, config=config, run_dir=outdir)


def report_stage(ds: xr.Dataset, config: ReportConfig, ctx: RunContext) -> xr.Dataset:
    """Pipeline stage: write ``ctx.workdir/report/index.html`` from the run's arrays and summary."""
    t0 = time.perf_counter()
    index = write_report(ds, ctx.workdir / "report", summary=ctx.summary, config=config, run_dir=ctx.workdir)
    figdir = ctx.workdir / "report" / "figures"
    ctx.summary["report"] = {
        "path": str(index.relative_to(ctx.workdir)),
        "n_figures": len(_figure_files(figdir)),
        "size_mb": round(index.stat().st_size / 1e6, 2),
        "build_s": round(time.perf_counter() - t0, 3),
    }
    return ds.copy()
