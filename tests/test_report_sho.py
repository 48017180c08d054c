"""The report's SHO fit section and the explorer's spectrum panel, from a raw USID run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from switchscope.report.explorer import decode_block, explorer_payload
from switchscope.sho import sho_response


@pytest.fixture(scope="module")
def sho_run(tmp_path_factory):
    from switchscope.io.usid_write import make_usid_example
    from switchscope.pipeline import run

    tmp = tmp_path_factory.mktemp("sho_report")
    raw, out = tmp / "raw.h5", tmp / "out"
    make_usid_example(raw, rows=6, cols=6, n_steps=32, n_fields=1, n_cycles=1, n_freq=16, spectra=True)
    run(raw, out, stages=["sho", "project", "clean", "loops", "report"], load_options={"select": "group=Raw_Data"},
        progress=False, log=lambda m: None)
    return out


@pytest.fixture(scope="module")
def results(sho_run):
    from switchscope.io import load

    return load(sho_run / "results.nc")  # as `switchscope report` reads it (attrs restored)


def _page(run: Path) -> str:
    return (run / "report" / "index.html").read_text(encoding="utf-8")


def _payload(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="ss-data">(.*?)</script>', page, re.S)
    return json.loads(m.group(1))


def test_sho_section_and_figures(sho_run):
    page = _page(sho_run)
    figs = {p.name for p in (sho_run / "report" / "figures").glob("sho*.png")}
    assert figs == {"sho_maps.png", "sho_r2.png", "sho_projection.png"}
    assert page.index('<section id="sho">') < page.index('<section id="cleaning">')
    sho = page[page.index('<section id="sho">'):page.index('<section id="cleaning">')]
    assert "<h2>SHO fit</h2>" in sho
    for name in figs:
        assert f'data-file="{name}"' in sho
    assert "nearest 0 V" in sho and "converged" in sho


def test_status_text_is_escaped(results, tmp_path):
    from switchscope.report.html import write_report

    summary = {"sho": {"status": "<script>alert(1)</script> 3 converged"}}
    index = write_report(results, tmp_path / "report", summary=summary)
    page = index.read_text(encoding="utf-8")
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page


def test_no_sho_results_no_section(results, tmp_path):
    from switchscope.report.html import write_report

    plain = results.drop_vars([v for v in ("spectrum", "amplitude", "resonance", "quality_factor", "phase",
                                           "sho_r2", "sho_status", "projection_angle", "projection_offset")
                               if v in results])
    page = write_report(plain, tmp_path / "report").read_text(encoding="utf-8")
    assert 'id="sho"' not in page and 'id="ss-sho-step"' not in page
    assert not list((tmp_path / "report" / "figures").glob("sho*.png"))
    assert _payload(page)["sho"] is None


def test_payload_decodes_to_the_measured_spectrum(sho_run, results):
    sho = _payload(_page(sho_run))["sho"]
    assert sho["every"] == 1 and sho["rows_idx"] == list(range(6))
    cube = results["spectrum"].transpose("row", "col", "step", "freq").values
    for part, truth in (("re", cube.real), ("im", cube.imag)):
        got = decode_block(sho[part]).reshape(cube.shape)
        span = float(truth.max() - truth.min())
        assert np.abs(got - truth).max() <= span / 2000 * 1.01  # 3 digits of the range
    np.testing.assert_allclose(sho["freq_khz"], results["freq"].values / 1e3)
    # the model drawn from the embedded parameters matches sho_response of the exact ones
    p = {v: decode_block(b).reshape(6, 6, 32) for v, b in sho["params"].items()}
    exact = sho_response(results["freq"].values / 1e3, results["amplitude"].values, results["resonance"].values,
                         results["quality_factor"].values, np.deg2rad(results["phase"].values))
    drawn = sho_response(sho["freq_khz"], p["amplitude"], p["resonance"], p["quality_factor"],
                         np.deg2rad(p["phase"]))
    assert np.abs(drawn - exact).max() <= 0.01 * np.abs(exact).max()


def test_large_grids_subsample_the_spectra(results):
    full = explorer_payload(results, digits=3)["sho"]
    small = explorer_payload(results, digits=3, max_spectrum_values=9 * 32 * 16)["sho"]
    assert small["every"] == 2 and small["sub_grid"] == [3, 3] and small["rows_idx"] == [0, 2, 4]
    assert small["re"]["n"] == 9 * 32 * 16 < full["re"]["n"]
