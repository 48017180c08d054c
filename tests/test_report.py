"""The HTML report: explorer data, escaping, optional sections, rebuild from results.nc."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from switchscope import ConfigError, DataError, make_dataset
from switchscope.stages import RunContext
from switchscope.interpret import InterpretConfig, interpret_stage
from switchscope.report import ReportConfig, build_report, report_stage
from switchscope.report.explorer import _script_json, explorer_payload

PWN = "<script>window.__pwned=1</script>"


def fake_results(rows=12, cols=10, n_steps=32, n_neurons=6, seed=0, attrs=None):
    """A random but contract-shaped results Dataset, and a linear decoder matrix ``W``."""
    rng = np.random.default_rng(seed)
    half = n_steps // 2
    v = np.concatenate([np.linspace(16, -16, half), np.linspace(-16, 16, n_steps - half)])
    rr, cc = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    domain = ((rr + cc) // 4 % 2).astype(int)
    coer = 3 + 2 * rr / rows
    branch = np.where(np.arange(n_steps) < half, 1.0, -1.0)
    loop = np.tanh((v[None, None, :] + branch * coer[..., None]) / 2.0)
    piezo = 1e-4 * (1 - 0.5 * domain[..., None]) * loop + 1e-6 * rng.normal(size=(rows, cols, n_steps))
    piezo[0, 1, 3] = np.nan
    res = 1320 + 5 * np.abs(loop) + 0.2 * rng.normal(size=(rows, cols, n_steps))
    ds = make_dataset({"piezoresponse": piezo, "resonance": res}, v, attrs=attrs or {"source": "fake"})
    for ch, a in (("piezoresponse", np.nan_to_num(piezo)), ("resonance", res)):
        ds[f"{ch}_clean"] = (("row", "col", "step"), a + 0.0,
                             {"units": ds[ch].attrs["units"], "n_nonfinite": int(ch == "piezoresponse"),
                              "n_out_of_range": 2, "n_outliers": 3,
                              "norm_mean": float(a.mean()), "norm_std": float(a.std())})
        ds[f"reconstruction_{ch}"] = (("row", "col", "step"), a + 0.05 * a.std() * rng.normal(size=a.shape))
    ds["loop_fit"] = (("row", "col", "step"), 1e-4 * (1 - 0.5 * domain[..., None]) * loop)
    ds["loop_r2"] = (("row", "col"), 0.9 + 0.1 * rng.random((rows, cols)))
    ds["loop_height"] = (("row", "col"), 2e-4 * (1 - 0.5 * domain))
    ds["loop_coercive_pos"] = (("row", "col"), coer)
    ds["loop_converged"] = (("row", "col"), rng.random((rows, cols)) > 0.1)
    ds["pca_scores"] = (("row", "col", "pca_component"), rng.normal(size=(rows, cols, 4)))
    ds["pca_explained_variance"] = (("pca_component",), np.array([4.0, 2.0, 1.0, 0.5]))
    ds["cluster_divisive"] = (("row", "col"), domain * 2 + (rr > rows // 2))
    ds["truth_domain"] = (("row", "col"), domain.astype(float))
    ds["truth_coercive_pos"] = (("row", "col"), coer)
    Z = np.zeros((rows, cols, n_neurons))
    Z[..., 0] = coer + 0.1 * rng.random((rows, cols))
    Z[..., 2] = 2 * domain + rng.random((rows, cols))
    Z[..., 3] = rng.random((rows, cols))
    ds["embedding_piezoresponse"] = (("row", "col", "neuron"), Z)
    ds["embedding_resonance"] = (("row", "col", "neuron"), Z[..., ::-1].copy())
    ds["embedding_history_piezoresponse"] = (("checkpoint", "row", "col", "neuron"),
                                             np.stack([Z * f for f in (0.2, 0.6, 1.0)]))
    ds = ds.assign_coords(checkpoint_epoch=("checkpoint", np.array([1, 5, 20])))
    W = rng.normal(size=(n_neurons, n_steps))
    return ds, W


def make_run(outdir: Path, *, attrs=None, movies=False, rows=12, cols=10, figures=()) -> xr.Dataset:
    """Run interpret + report into ``outdir`` the way the pipeline does; write results.nc."""
    from unittest import mock

    ds, W = fake_results(rows=rows, cols=cols, attrs=attrs)
    ctx = RunContext(workdir=outdir)
    decoders = {"piezoresponse": lambda z: 1e-5 * (z @ W), "resonance": lambda z: 1320 + z @ W}
    ctx.summary["timings_s"] = {"clean": 0.5, "loops": 1.25}
    ctx.summary["dataset"] = {"source": "fake"}
    for name in figures:  # stand-ins for PNGs other stages write
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [1, 0])
        fig.savefig(ctx.figures / name)
        plt.close(fig)
    with mock.patch("switchscope.interpret.load_decoder", lambda ch, ds, ctx: decoders.get(ch)):
        ds = interpret_stage(ds, InterpretConfig(n_pixels=5, n_levels=4), ctx)
    ds.to_netcdf(outdir / "results.nc", engine="h5netcdf")
    (outdir / "summary.json").write_text(json.dumps(ctx.summary, default=str))
    ds = report_stage(ds, ReportConfig(movies=movies), ctx)
    return ds


def _decode(block):
    """The documented block format, decoded here independently of the library's decode_block."""
    import base64
    import zlib

    shuffled = zlib.decompress(base64.b64decode(block["b64"]))
    size = 2 if block["dtype"] == "i2" else 4
    n = len(shuffled) // size
    q = np.cumsum([int.from_bytes(bytes(shuffled[k * n + j] for k in range(size)), "little", signed=True)
                   for j in range(n)])
    out = block["offset"] + q * block["scale"]
    if "nan_b64" in block:
        bits = zlib.decompress(base64.b64decode(block["nan_b64"]))
        nan = [(bits[i // 8] >> (i % 8)) & 1 for i in range(block["n"])]
        out = np.where(nan, np.nan, out)
    assert out.size == block["n"]
    return out


def test_quantized_curves_round_trip_within_half_a_step():
    ds, _ = fake_results()
    payload = explorer_payload(ds, digits=4)
    assert payload["stride"] == 1 and payload["sub_grid"] == [12, 10]
    panels = {p["channel"]: p for p in payload["panels"]}
    assert [s["name"] for s in panels["piezoresponse"]["series"]] == ["raw", "clean", "fit", "reconstruction"]
    assert [s["name"] for s in panels["resonance"]["series"]] == ["raw", "clean", "reconstruction"]
    for p in payload["panels"]:
        for s in p["series"]:
            ref = ds[s["variable"]].values.reshape(-1)
            got = _decode(s)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
            ok = np.isfinite(ref)
            assert np.abs(got[ok] - ref[ok]).max() <= 0.5 * s["scale"] * (1 + 1e-9)
            # 4 digits of the half range: the resonance's 5 kHz swing on 1320 kHz survives
            assert s["scale"] <= (np.nanmax(ref) - np.nanmin(ref)) / 2 / 999
    only_res = explorer_payload(ds, channels=("resonance",))
    assert [p["channel"] for p in only_res["panels"]] == ["resonance"]
    names = [m["name"] for m in payload["maps"]]
    assert "embedding_piezoresponse[0]" in names and "embedding_piezoresponse[1]" not in names
    assert "cluster_divisive" in names and next(m for m in payload["maps"]
                                                 if m["name"] == "cluster_divisive")["categorical"]
    gen = payload["generated"]
    assert gen == []  # nothing generated yet in the raw fake results


def test_explorer_subsamples_large_grids():
    ds, _ = fake_results(rows=12, cols=10)
    payload = explorer_payload(ds, max_pixels=30)  # 120 pixels -> stride 2
    assert payload["stride"] == 2 and payload["sub_grid"] == [6, 5]
    assert payload["rows_idx"] == [0, 2, 4, 6, 8, 10] and payload["cols_idx"] == [0, 2, 4, 6, 8]
    s = payload["panels"][0]["series"][1]
    got = _decode(s).reshape(6, 5, -1)
    ref = ds[s["variable"]].values[::2, ::2]
    np.testing.assert_allclose(got, ref, atol=s["scale"])


def test_real_loops_round_trip_with_their_nans(real_raw_loops):
    loops, voltage = real_raw_loops
    ds = make_dataset({"piezoresponse": loops}, voltage)
    payload = explorer_payload(ds)
    (panel,) = payload["panels"]
    (series,) = panel["series"]  # nothing analysed: the raw curves only
    got = _decode(series)
    assert int(np.isnan(got).sum()) == int(np.isnan(loops).sum()) == 3
    ok = np.isfinite(loops.reshape(-1))
    assert np.abs(got[ok] - loops.reshape(-1)[ok]).max() <= 0.5 * series["scale"] * (1 + 1e-9)
    assert payload["voltage"][0] == pytest.approx(voltage[0])


def test_script_json_cannot_close_the_script_element():
    obj = {"name": "</script><!-- & <b>", "x": [1, 2]}
    text = _script_json(obj)
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == obj


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    make_run(out, attrs={"source": "fake", "title": PWN},
             figures=("loops_examples.png", "pca_components.png", "mystery.png"))
    return out


def test_report_page_sections_and_figures(run_dir):
    index = run_dir / "report" / "index.html"
    page = index.read_text(encoding="utf-8")
    for sid in ("summary", "cleaning", "loops", "decomposition", "reconstruction", "embedding", "generated",
                "cross", "mechanisms", "explorer", "timings", "other"):
        assert f'<section id="{sid}">' in page, sid
    assert '<section id="movies">' not in page  # movies were off in this run
    # every figure is inlined: the page alone shows it, byte for byte the PNG beside it
    import base64

    inlined = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="[^"]*" data-file="([^"]+)"', page)
    figs = {p.name for p in (index.parent / "figures").glob("*.png")}
    assert inlined and {name for _, name in inlined} == figs
    for data, name in inlined:
        assert base64.b64decode(data) == (index.parent / "figures" / name).read_bytes()
    assert page.index('<section id="explorer">') < page.index('<section id="cleaning">')  # explorer first
    # each drawn figure sits in the section of the stage that drew it ...
    for name, sid, nxt in (("clean.png", "cleaning", "loops"), ("clusters_divisive.png", "decomposition",
                                                                 "reconstruction"),
                           ("embedding_resonance.png", "embedding", "cross")):
        section = page[page.index(f'<section id="{sid}">'):page.index(f'<section id="{nxt}">')]
        assert f'data-file="{name}"' in section, name
    # ... and PNGs the report did not draw (a user's, or stand-ins here) under "Other figures"
    other = page[page.index('<section id="other">'):]
    for name in ("loops_examples.png", "pca_components.png", "mystery.png"):
        assert f'data-file="{name}"' in other, name
    # offline: nothing refers to the network
    assert not re.search(r'(src|href)="(https?:)?//', page) and "url(http" not in page
    assert "<th>1.25</th>" not in page and "<td>1.25</td>" in page  # timings table


def test_report_escapes_text_from_data(run_dir):
    page = (run_dir / "report" / "index.html").read_text(encoding="utf-8")
    assert PWN not in page
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in page
    data = page[page.index('id="ss-data">'):]
    data = data[len('id="ss-data">'):data.index("</script>")]
    assert "<" not in data
    payload = json.loads(data)
    assert [g["variable"] for g in payload["generated"]] == [
        "generated_piezoresponse", "generated_resonance", "generated_piezoresponse_from_resonance"]


def test_rebuild_from_results_nc_matches_and_is_fast(run_dir):
    ds = xr.load_dataset(run_dir / "results.nc")
    index = run_dir / "report" / "index.html"
    index.unlink()
    t0 = time.perf_counter()
    assert build_report(run_dir) == index
    assert time.perf_counter() - t0 < 30
    page = index.read_text(encoding="utf-8")
    data = page[page.index('id="ss-data">') + len('id="ss-data">'):]
    payload = json.loads(data[:data.index("</script>")])
    g = payload["generated"][0]
    curves = ds["generated_piezoresponse"].values[g["neurons"]].reshape(-1)
    np.testing.assert_allclose(_decode(g), curves, atol=g["scale"])
    assert '<section id="timings">' in page  # from summary.json


def test_minimal_dataset_builds_without_optional_sections(tmp_path):
    rng = np.random.default_rng(0)
    ds = make_dataset({"resonance": 1320 + rng.normal(size=(4, 3, 8))}, np.linspace(-1, 1, 8))
    ds.to_netcdf(tmp_path / "results.nc", engine="h5netcdf")
    page = build_report(tmp_path).read_text(encoding="utf-8")
    assert '<section id="summary">' in page and '<section id="explorer">' in page
    for sid in ("loops", "mechanisms", "movies", "generated", "timings", "numbers"):
        assert f'<section id="{sid}">' not in page
    assert 'id="ss-gen-level"' not in page


def test_build_report_errors(tmp_path):
    with pytest.raises(DataError, match="no results.nc in"):
        build_report(tmp_path)
    (tmp_path / "results.nc").write_bytes(b"not netcdf")
    with pytest.raises(DataError, match="results.nc.* is not in a format switchscope reads"):
        build_report(tmp_path)
    ds, _ = fake_results(rows=3, cols=2)
    ds.to_netcdf(tmp_path / "results.nc", engine="h5netcdf")
    (tmp_path / "summary.json").write_text("{oops")
    with pytest.raises(DataError, match="summary.json .* is not valid JSON"):
        build_report(tmp_path)


def test_report_config_validation():
    cfg = ReportConfig.from_dict({"max_explorer_pixels": 400, "explorer_channels": ["amplitude"]})
    assert cfg.max_explorer_pixels == 400 and cfg.explorer_channels == ("amplitude",)
    with pytest.raises(ConfigError, match=r"\[report\] explorer_channels must be a list of channel names"):
        ReportConfig(explorer_channels=("piezo",))
    with pytest.raises(ConfigError, match=r"\[report\] max_explorer_pixels must be an integer >= 1"):
        ReportConfig(max_explorer_pixels=0)
    with pytest.raises(ConfigError, match=r"\[report\] title must be a string"):
        ReportConfig(title=3)


def test_report_stage_records_summary(tmp_path):
    ds, _ = fake_results(rows=4, cols=4)
    ctx = RunContext(workdir=tmp_path)
    out = report_stage(ds, ReportConfig(), ctx)
    assert out is not ds and out.identical(ds)
    s = ctx.summary["report"]
    assert s["path"] == "report/index.html" and s["n_figures"] >= 3 and s["size_mb"] > 0


def test_tables_say_what_they_show(run_dir):
    page = (run_dir / "report" / "index.html").read_text(encoding="utf-8")
    mech = page[page.index('<section id="mechanisms">'):page.index("</section>", page.index('<section id="mechanisms">'))]
    # exactly the active neurons of the embedding (0, 2, 3 for piezoresponse; 2, 3, 5 for resonance)
    piezo = mech[:mech.index("resonance:")]
    assert re.findall(r"<td class=\"text\">neuron (\d+)</td>", piezo) == ["0", "2", "3"] * 2
    assert "The 3 active neurons" in piezo
    # eta² and F shaded each on its own scale: F (unbounded) cells are tinted too
    f_cells = re.findall(r"<td style=\"background: rgba\([^)]*\)\">([0-9.e+]+)</td></tr>", piezo)
    assert f_cells and any(float(v) > 1 for v in f_cells)
    # cleaning: how many points were replaced and why
    cleaning = page[page.index('<section id="cleaning">'):page.index('<section id="loops">')]
    assert "points farthest from a Savitzky-Golay fit" in cleaning and "3 x 120 pixels" in cleaning
    # captions in words, not file names
    assert "<figcaption>Raw (grey) and cleaned (blue) curve" in page
    assert "<figcaption>clean</figcaption>" not in page


def test_summary_min_max_are_finite_and_units_of_one_are_blank(tmp_path):
    ds, _ = fake_results(rows=3, cols=4)
    ds["piezoresponse"].values[0, 0, :2] = [np.inf, np.nan]
    ds["quality_factor"] = (("row", "col", "step"), np.full((3, 4, 32), 200.0), {"units": "1"})
    ds.to_netcdf(tmp_path / "results.nc", engine="h5netcdf")
    page = build_report(tmp_path).read_text(encoding="utf-8")
    row = re.search(r"<td class=\"text\">piezoresponse</td>(.*?)</tr>", page).group(1)
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", row)
    assert "NaN" not in cells and "inf" not in " ".join(cells).lower()
    q = re.search(r"<td class=\"text\">quality_factor</td><td class=\"text\">([^<]*)</td>", page)
    assert q and q.group(1) == ""


def test_empty_switching_maps_are_explained():
    from switchscope.report.html import _loops_table

    ds, _ = fake_results(rows=3, cols=4)
    nuc = np.ones((3, 4))
    nuc[0, :2] = np.nan
    ds["loop_nucleation_pos"] = (("row", "col"), nuc)
    text = _loops_table(ds)
    assert "loop_nucleation_pos" in text and "nucleation fraction inside the voltage range" in text
    assert "16.7%" in text


def test_one_colour_rule_per_quantity():
    """Embeddings on their full range (as in their figure), measures on 1-99 %, and each bar says which."""
    ds, _ = fake_results()
    maps = {m["name"]: m for m in explorer_payload(ds)["maps"]}
    emb = ds["embedding_piezoresponse"].values[..., 0]
    assert maps["embedding_piezoresponse[0]"]["vmin"] == pytest.approx(emb.min())
    assert maps["embedding_piezoresponse[0]"]["vmax"] == pytest.approx(emb.max())
    assert maps["embedding_piezoresponse[0]"]["range"] == "full range"
    r2 = ds["loop_r2"].values
    assert maps["loop_r2"]["vmax"] == pytest.approx(np.percentile(r2, 99))
    assert maps["loop_r2"]["range"] == "1-99 % range"
