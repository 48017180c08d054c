"""The report page in a real browser (Debian's Chromium, driven by Playwright), offline.

Skipped when /usr/bin/chromium or playwright is missing, except with CI=true, where a missing
browser is a failure (so CI cannot skip these silently). Never run `playwright install`: the
system Chromium is used through ``executable_path``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from test_report import PWN, make_run

pytestmark = pytest.mark.browser

# SWITCHSCOPE_CHROMIUM only exists to check the skip/fail logic itself; CI uses the default.
CHROMIUM = Path(os.environ.get("SWITCHSCOPE_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def _need_browser():
    reason = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "playwright is not installed (pip install playwright; do not run `playwright install`)"
    if reason is None and not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (apt-get install chromium)"
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"browser tests cannot run in CI: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("browser_run")
    make_run(out, attrs={"source": PWN}, movies=True, figures=("loops_examples.png",))
    return out


@pytest.fixture(scope="module")
def results(run_dir):
    return xr.load_dataset(run_dir / "results.nc")


def _open(browser, index: Path):
    """A page at ``index`` with the network cut: only file:// and data: may load."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    seen, blocked, errors = [], [], []

    def route(r):
        url = r.request.url
        seen.append(url)
        if url.startswith(("file://", "data:")):
            r.continue_()
        else:
            blocked.append(url)
            r.abort()

    page.route("**/*", route)
    # a request the Content-Security-Policy stops never reaches the route: record those too
    page.add_init_script("window.__csp = []; document.addEventListener('securitypolicyviolation',"
                         " e => window.__csp.push(e.blockedURI));")
    page.on("requestfailed", lambda req: blocked.append(req.url) if not req.url.startswith(("file:", "data:")) else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(index.as_uri())
    page.wait_for_selector("body[data-explorer-ready='1']", timeout=20000)
    page.wait_for_load_state("load")
    blocked += page.evaluate("window.__csp")
    blocked += page.evaluate("performance.getEntriesByType('resource').map(e => e.name)"
                             ".filter(u => !u.startsWith('file:') && !u.startsWith('data:'))")
    return page, seen, blocked, errors


@pytest.fixture(scope="module")
def opened(browser, run_dir):
    page, seen, blocked, errors = _open(browser, run_dir / "report" / "index.html")
    yield page, seen, blocked, errors
    page.close()


def test_nothing_leaves_the_page_and_no_script_errors(opened, run_dir):
    page, seen, blocked, errors = opened
    assert blocked == [] and errors == []
    assert any(u.endswith(".mp4") for u in seen)  # the route did see the local movies
    assert all(u.startswith(("file://", "data:")) for u in seen)


def test_every_figure_renders(opened, run_dir):
    page = opened[0]
    imgs = page.evaluate("Array.from(document.images).map(i => [i.getAttribute('data-file'), i.complete, "
                         "i.naturalWidth, i.getAttribute('src').slice(0, 5)])")
    files = {p.name for p in (run_dir / "report" / "figures").glob("*.png")}
    assert {name for name, _, _, _ in imgs} == files
    assert all(done and width > 0 and src == "data:" for _, done, width, src in imgs), imgs
    assert page.locator("video").count() >= 1  # the MP4 movies are linked too


def test_the_page_alone_shows_every_figure(browser, run_dir, tmp_path):
    import shutil

    alone = tmp_path / "index.html"
    shutil.copy(run_dir / "report" / "index.html", alone)  # without figures/ and movies/ beside it
    page, _, blocked, errors = _open(browser, alone)
    try:
        imgs = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
        assert imgs and all(done and width > 0 for done, width in imgs)
        assert errors == [] and blocked == []
        assert "beside this page" in page.locator("#movies").inner_text()
    finally:
        page.close()


def _series(page, panel):
    out = {}
    for g in page.locator(f"#{panel} g.ss-series").all():
        vals = np.array([np.nan if v is None else v for v in json.loads(g.get_attribute("data-values"))], float)
        out[g.get_attribute("data-var")] = vals
    return out


def _click_pixel(page, map_name, r, c):
    canvas = page.locator(f'canvas.ss-map[data-name="{map_name}"]')
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    n_rows, n_cols = int(canvas.get_attribute("data-rows")), int(canvas.get_attribute("data-cols"))
    page.mouse.click(box["x"] + (c + 0.5) * box["width"] / n_cols, box["y"] + (r + 0.5) * box["height"] / n_rows)


def _hover_pixel(page, selector, r, c):
    canvas = page.locator(selector)
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    n_rows, n_cols = int(canvas.get_attribute("data-rows")), int(canvas.get_attribute("data-cols"))
    page.mouse.move(box["x"] + (c + 0.5) * box["width"] / n_cols, box["y"] + (r + 0.5) * box["height"] / n_rows)


@pytest.mark.parametrize("map_name,r,c", [("loop_height", 3, 7), ("embedding_piezoresponse[0]", 10, 0)])
def test_clicking_a_map_pixel_shows_its_curves(opened, results, map_name, r, c):
    page = opened[0]
    _click_pixel(page, map_name, r, c)
    assert page.get_attribute("#ss-pixel", "data-row") == str(r)
    assert page.get_attribute("#ss-pixel", "data-col") == str(c)
    piezo = _series(page, "ss-panel-0")
    assert set(piezo) == {"piezoresponse", "piezoresponse_clean", "loop_fit", "reconstruction_piezoresponse"}
    for var, got in piezo.items():
        ref = results[var].values[r, c]
        span = np.nanmax(results[var].values) - np.nanmin(results[var].values)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        np.testing.assert_allclose(got, ref, atol=1e-3 * span, equal_nan=True)
    res = _series(page, "ss-panel-1")
    np.testing.assert_allclose(res["resonance_clean"], results["resonance_clean"].values[r, c], atol=5e-3)


def test_slider_changes_the_generated_loop(opened, results):
    page = opened[0]
    page.select_option("#ss-gen-channel", index=0)
    neuron = int(page.get_attribute("#ss-gen-plot", "data-neuron"))
    var = page.get_attribute("#ss-gen-plot", "data-variable")
    assert var == "generated_piezoresponse"

    def current():
        return np.array(json.loads(page.locator('#ss-gen-plot g[data-series="current"]').get_attribute("data-values")))

    first = current()
    page.locator("#ss-gen-level").fill("3")  # fill() on a range input sets it and fires input/change
    assert page.get_attribute("#ss-gen-plot", "data-level") == "3"
    last = current()
    ref = results[var].values
    span = np.nanmax(ref) - np.nanmin(ref)
    np.testing.assert_allclose(first, ref[neuron, 0], atol=1e-3 * span)
    np.testing.assert_allclose(last, ref[neuron, 3], atol=1e-3 * span)
    assert np.abs(first - last).max() > 1e-2 * span
    assert "level 4/4" in page.inner_text("#ss-gen-value")


def test_screenshot_is_not_blank(opened, tmp_path):
    import imageio.v3 as iio

    page = opened[0]
    page.evaluate("window.scrollTo(0, 0)")
    shot = tmp_path / "top.png"
    page.screenshot(path=str(shot))
    img = iio.imread(shot).astype(float)
    assert img.std() > 10
    page.locator("#explorer").scroll_into_view_if_needed()
    img2 = iio.imread(page.locator("#explorer").screenshot()).astype(float)
    assert img2.std() > 10 and (img2[..., :3].max(axis=-1) - img2[..., :3].min(axis=-1)).max() > 100  # colour


def test_script_in_attrs_does_not_run(opened):
    page = opened[0]
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.inner_text("#ss-source") == PWN  # shown as text


def test_subsampled_grid_maps_clicks_to_original_pixels(browser, tmp_path):
    from switchscope.report import ReportConfig, build_report

    make_run(tmp_path, rows=12, cols=10)
    build_report(tmp_path, config=ReportConfig(max_explorer_pixels=30))  # stride 2
    page, _, blocked, errors = _open(browser, tmp_path / "report" / "index.html")
    try:
        assert blocked == [] and errors == []
        assert "one row and one column in 2 (6 x 5 pixels)" in page.inner_text("#ss-subsampled")
        _click_pixel(page, "loop_height", 4, 3)  # sub-grid (4, 3) is pixel (8, 6)
        assert page.get_attribute("#ss-pixel", "data-row") == "8"
        assert page.get_attribute("#ss-pixel", "data-col") == "6"
        ds = xr.load_dataset(tmp_path / "results.nc")
        got = _series(page, "ss-panel-0")["piezoresponse_clean"]
        span = float(np.ptp(ds["piezoresponse_clean"].values))
        np.testing.assert_allclose(got, ds["piezoresponse_clean"].values[8, 6], atol=1e-3 * span)
    finally:
        page.close()


def test_hover_shows_the_value_of_results_nc(opened, results):
    page = opened[0]
    _hover_pixel(page, 'canvas.ss-map[data-name="loop_coercive_pos"]', 5, 2)
    assert page.get_attribute("#ss-hover", "data-row") == "5" and page.get_attribute("#ss-hover", "data-col") == "2"
    got = float(page.get_attribute("#ss-hover", "data-value"))
    ref = results["loop_coercive_pos"].values
    assert abs(got - ref[5, 2]) <= 1e-3 * float(np.ptp(ref))
    assert "loop_coercive_pos at row 5, col 2" in page.inner_text("#ss-hover")


def test_clicking_draws_the_cross_hair(opened):
    page = opened[0]
    _click_pixel(page, "loop_height", 7, 4)
    name = 'canvas.ss-map[data-name="loop_height"]'
    assert page.get_attribute(name, "data-selected") == "7,4"
    # the vertical line of the cross-hair runs through column 4, at the top of the map: black
    rgb = page.evaluate(f"""(() => {{ const c = document.querySelector('{name}'), s = +c.dataset.scale;
        return Array.from(c.getContext('2d').getImageData(Math.floor(4.5 * s), 1, 1, 1).data.slice(0, 3)); }})()""")
    assert max(rgb) < 60, rgb
    # and both branches are drawn, the ascending one dashed
    assert page.locator('#ss-panel-0 polyline[data-branch="up"][stroke-dasharray]').count() > 0
    assert page.locator('#ss-panel-0 polyline[data-branch="down"]:not([stroke-dasharray])').count() > 0


def test_cube_slider_maps_the_chosen_step(opened, results):
    page = opened[0]
    page.select_option("#ss-cube-var", label="piezoresponse_clean")
    page.locator("#ss-cube-step").fill("10")
    assert page.get_attribute("#ss-cube", "data-step") == "10"
    assert page.get_attribute("#ss-cube", "data-variable") == "piezoresponse_clean"
    _hover_pixel(page, "#ss-cube", 3, 6)
    ref = results["piezoresponse_clean"].values
    got = float(page.get_attribute("#ss-hover", "data-value"))
    assert abs(got - ref[3, 6, 10]) <= 1e-3 * float(np.nanmax(ref) - np.nanmin(ref))
    before = page.evaluate("document.getElementById('ss-cube').toDataURL()")
    page.locator("#ss-cube-step").fill("25")
    assert page.evaluate("document.getElementById('ss-cube').toDataURL()") != before


def test_csv_export_matches_results_nc(opened, results, tmp_path):
    page = opened[0]
    _click_pixel(page, "loop_height", 2, 8)
    with page.expect_download() as info:
        page.click("#ss-csv")
    path = tmp_path / "pixel.csv"
    info.value.save_as(path)
    lines = path.read_text().splitlines()
    assert lines[0] == "# switchscope explorer: pixel row 2, col 8"
    header = lines[1].split(",")
    table = np.array([[float(x) if x else np.nan for x in ln.split(",")] for ln in lines[2:]])
    np.testing.assert_allclose(table[:, 0], results["voltage"].values)
    for j, var in enumerate(header[1:], start=1):
        ref = results[var].values[2, 8]
        span = float(np.nanmax(results[var].values) - np.nanmin(results[var].values))
        np.testing.assert_array_equal(np.isnan(table[:, j]), np.isnan(ref))
        np.testing.assert_allclose(table[:, j], ref, atol=1e-3 * span, equal_nan=True)


@pytest.fixture(scope="module")
def sho_run_dir(tmp_path_factory):
    from switchscope.io.usid_write import make_usid_example
    from switchscope.pipeline import run

    tmp = tmp_path_factory.mktemp("browser_sho")
    make_usid_example(tmp / "raw.h5", rows=6, cols=6, n_steps=32, n_fields=1, n_cycles=1, n_freq=16, spectra=True)
    run(tmp / "raw.h5", tmp / "out", stages=["sho", "project", "clean", "loops", "report"],
        load_options={"select": "group=Raw_Data"}, progress=False, log=lambda m: None)
    return tmp / "out"


def test_clicking_a_pixel_draws_its_sho_spectrum(browser, sho_run_dir):
    from switchscope.io import load
    from switchscope.sho import sho_response

    ds = load(sho_run_dir / "results.nc")
    page, _, blocked, errors = _open(browser, sho_run_dir / "report" / "index.html")
    try:
        _click_pixel(page, "projection_angle", 4, 1)
        step = page.locator("#ss-sho-step")
        step.evaluate("(e) => { e.value = 20; e.dispatchEvent(new Event('input')); }")
        holder = page.locator("#ss-sho")
        assert (holder.get_attribute("data-row"), holder.get_attribute("data-col"),
                holder.get_attribute("data-step")) == ("4", "1", "20")
        amp = _series(page, "ss-sho-amp")
        measured = np.abs(ds["spectrum"].values[4, 1, 20])
        assert np.abs(amp["spectrum"] - measured).max() <= 0.01 * measured.max()
        fit = amp["SHO fit"]
        exact = np.abs(sho_response(ds["freq"].values / 1e3, ds["amplitude"].values[4, 1, 20],
                                    ds["resonance"].values[4, 1, 20], ds["quality_factor"].values[4, 1, 20],
                                    np.deg2rad(ds["phase"].values[4, 1, 20])))
        assert fit.size > measured.size and np.isclose(fit.max(), exact.max(), rtol=0.02)
        assert set(_series(page, "ss-sho-phase")) == {"spectrum", "SHO fit"}
        # one step for both views: the SHO slider moved the data cube, and the cube's slider moves the spectrum
        assert page.locator("canvas.ss-cube").first.get_attribute("data-step") == "20"
        page.locator("#ss-cube-step").evaluate("(e) => { e.value = 7; e.dispatchEvent(new Event('input')); }")
        assert holder.get_attribute("data-step") == "7"
        assert page.locator("#ss-sho-step").input_value() == "7"
        assert errors == [] and blocked == []
    finally:
        page.close()
