"""The sho and project stages in a run: raw USID spectra to the report in one command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from switchscope import ConfigError
from switchscope.io import load
from switchscope.io.usid_write import make_usid_example
from switchscope.pipeline import run
from switchscope.sho_stage import ProjectConfig, SHOConfig

from cli_helpers import one_line_error, run_cli


@pytest.fixture(scope="module")
def raw_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("raw") / "film.h5"
    truth = make_usid_example(path, rows=6, cols=6, n_steps=64, n_fields=2, n_cycles=1, n_freq=16, spectra=True,
                              seed=2)
    return path, truth


def test_raw_spectra_to_report_in_one_command(raw_file, tmp_path, capsys):
    path, truth = raw_file
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "run", "--data", path, "--select", "group=Raw_Data", "--stages",
                                "sho,project,clean,loops,report", "--out", out, "--no-progress")
    assert code == 0, err
    ds = load(out / "results.nc")
    want = truth.sel(field="out-of-field").isel(cycle=0)
    # the file's spectra are the SHO model of the truth: the fit gives it back
    np.testing.assert_allclose(ds["resonance"].values, want["resonance"].values, rtol=1e-5)
    np.testing.assert_allclose(ds["quality_factor"].values, want["quality_factor"].values, rtol=1e-3)
    np.testing.assert_allclose(ds["amplitude"].values, want["amplitude"].values, rtol=1e-3)
    dphi = (ds["phase"].values - want["phase"].values + 180) % 360 - 180
    assert np.abs(dphi).max() < 0.1
    assert ds["sho_r2"].min() > 0.999 and ds["projection_angle"].dims == ("row", "col")
    # BGlib's projection of a loop that lies on the real axis is the loop (up to its sign)
    corr = np.corrcoef(ds["piezoresponse"].values.ravel(), want["piezoresponse"].values.ravel())[0, 1]
    assert abs(corr) > 0.999
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sho"]["n_spectra"] == 6 * 6 * 64 and summary["sho"]["converged"] == 6 * 6 * 64
    assert "loop_r2" in ds and (out / "report" / "index.html").is_file()


def test_default_stages_keep_sho_and_project_only_for_raw_data(raw_file):
    from switchscope.pipeline import preflight
    from switchscope.select import apply_selection, parse_select
    from switchscope.stages import STAGES

    path, _ = raw_file
    raw = apply_selection(load(path, group="Raw_Data"), parse_select("group=Raw_Data"))
    names = preflight(raw, list(STAGES), {}, explicit=False)
    assert names[:3] == ["sho", "project", "clean"] and "loops" in names
    fitted = apply_selection(load(path))
    names = preflight(fitted, list(STAGES), {}, explicit=False)
    assert "sho" not in names and "project" not in names and "loops" in names


def test_cos_projection_is_the_papers(raw_file, tmp_path):
    path, _ = raw_file
    ds = run(path, tmp_path / "o", stages=["sho", "project"], progress=False, log=lambda m: None,
             load_options={"select": "group=Raw_Data"}, configs={"project": ProjectConfig.preset("paper")})
    want = ds["amplitude"].values * np.cos(np.deg2rad(ds["phase"].values))
    np.testing.assert_allclose(ds["piezoresponse"].values, want, rtol=1e-12)
    assert float(np.abs(ds["projection_angle"]).max()) == 0.0


def test_stage_misuse_is_one_line(raw_file, tmp_path, capsys):
    path, _ = raw_file
    code, _, err = run_cli(capsys, "run", "--data", path, "--stages", "sho,clean", "--out", tmp_path / "a",
                           "--no-progress")
    one_line_error(code, err, "stage sho fits raw band-excitation spectra")
    code, _, err = run_cli(capsys, "run", "--data", path, "--select", "group=Raw_Data", "--stages", "clean",
                           "--out", tmp_path / "b", "--no-progress")
    one_line_error(code, err, "raw spectra only")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("options, message", [
    ({"dtype": "float16"}, "[sho] dtype"),
    ({"q_min": 10.0, "q_max": 5.0}, "[sho] q_max"),
    ({"max_iter": 0}, "[sho] max_iter"),
])
def test_bad_sho_options(options, message):
    with pytest.raises(ConfigError) as info:
        SHOConfig(**options)
    assert message in str(info.value)


def test_raw_film_with_artifacts_runs(tmp_path, capsys):
    """NaN/Inf artifacts in some spectra: those steps are flagged, the loops keep their other steps."""
    path = tmp_path / "art.h5"
    code, _, err = run_cli(capsys, "synth", "--format", "usid", "--spectra", "--fields", "2", "--cycles", "2",
                           "--rows", "8", "--cols", "8", "--out", path)
    assert code == 0, err
    code, _, err = run_cli(capsys, "run", "--data", path, "--select", "group=Raw_Data", "--stages",
                           "sho,project,clean,loops", "--out", tmp_path / "o", "--no-progress")
    assert code == 0, err
    ds = load(tmp_path / "o" / "results.nc")
    assert np.isfinite(ds["piezoresponse_clean"].values).all()
    assert (ds["sho_status"].values >= 3).any()  # the artifacts were flagged, not hidden


def test_cpu_fits_never_import_torch(raw_file, tmp_path):
    """``switchscope run`` of sho -> loops on the CPU (numba kernels; every stage's options read),
    and fit_sho / fit_loops called directly, leave torch unloaded: a fresh process shows it (this
    one has torch loaded)."""
    import subprocess
    import sys

    path, _ = raw_file
    code = f"""
import sys, warnings
warnings.simplefilter("ignore")
from switchscope.cli import main
rc = main(["run", "--data", {str(path)!r}, "--select", "group=Raw_Data", "--stages",
           "sho,project,clean,loops", "--out", {str(tmp_path / 'out')!r}, "--no-progress"])
assert rc == 0, rc
import numpy as np
from switchscope.sho import fit_sho, sho_response
from switchscope.loops import fit_loops, paper13
f = np.linspace(1.30e6, 1.34e6, 32)
assert fit_sho(sho_response(f, [1.0], [1.32e6], [200.0], [0.3]), f).converged.all()
v = np.r_[np.linspace(16, -16, 49)[:-1], np.linspace(-16, 16, 49)[:-1]]
p = [-1, 1, 0.01, 2, 3, 3, 2, 5, 5, 0, 0, -5, 5]
assert fit_loops(paper13([p, p], v), v, n_clusters=0).r2.min() > 0.999
print("torch loaded:", "torch" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torch loaded: False" in done.stdout, done.stdout[-2000:]
