"""The command line: every bad input ends with exit code 2 and one line on stderr, nothing lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from switchscope import pipeline
from switchscope.cli import main
from switchscope.io import paper_voltage, save
from switchscope.synthetic import make_dataset


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def assert_one_line_error(code: int, err: str, match: str) -> None:
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("switchscope: warning:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("switchscope: error:")
    assert match.lower() in lines[0].lower(), lines[0]


@pytest.fixture()
def loops_npz(tmp_path) -> Path:
    ds = make_dataset(rows=6, cols=5, seed=1, artifacts=False)
    path = tmp_path / "loops.npz"
    np.savez(path, piezoresponse=ds["piezoresponse"].values, voltage=ds["voltage"].values)
    return path


# -- bad input, each through the CLI ------------------------------------------------------------
def test_missing_file(capsys, tmp_path):
    code, _, err = run_cli(capsys, "info", tmp_path / "nope.mat")
    assert_one_line_error(code, err, "does not exist")


def test_directory(capsys, tmp_path):
    code, _, err = run_cli(capsys, "info", tmp_path)
    assert_one_line_error(code, err, "directory")


def test_empty_file(capsys, tmp_path):
    p = tmp_path / "empty.mat"
    p.write_bytes(b"")
    code, _, err = run_cli(capsys, "info", p)
    assert_one_line_error(code, err, "empty")


def test_truncated_mat(capsys, tmp_path, mat_path):
    p = tmp_path / "cut.mat"
    p.write_bytes(mat_path.read_bytes()[: 300_000])
    code, _, err = run_cli(capsys, "info", p)
    assert_one_line_error(code, err, "cut.mat")


def test_corrupt_hdf5(capsys, tmp_path):
    p = tmp_path / "bad.h5"
    p.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00garbage" * 200)
    code, _, err = run_cli(capsys, "info", p)
    assert_one_line_error(code, err, "bad.h5")


def test_text_renamed_mat(capsys, tmp_path):
    p = tmp_path / "notes.mat"
    p.write_text("these are my lab notes, not a MATLAB file\n" * 20)
    code, _, err = run_cli(capsys, "info", p)
    assert_one_line_error(code, err, "notes.mat")


def test_2d_array_without_grid(capsys, tmp_path):
    p = tmp_path / "flat.npy"
    np.save(p, np.zeros((12, 96)))
    code, _, err = run_cli(capsys, "info", p, "--voltage", "paper")
    assert_one_line_error(code, err, "grid")


def test_voltage_length_mismatch(capsys, tmp_path):
    p = tmp_path / "v.npz"
    np.savez(p, piezoresponse=np.zeros((3, 4, 96)), voltage=np.linspace(-1, 1, 50))
    code, _, err = run_cli(capsys, "info", p)
    assert_one_line_error(code, err, "voltage")


def test_all_nan_pixels(capsys, tmp_path, loops_npz):
    with np.load(loops_npz) as z:
        loops, v = z["piezoresponse"].copy(), z["voltage"]
    loops[2, 3] = np.nan
    p = tmp_path / "nanpix.npz"
    np.savez(p, piezoresponse=loops, voltage=v)
    code, _, err = run_cli(capsys, "run", "--data", p, "--out", tmp_path / "o", "--stages", "clean",
                           "--no-progress")
    assert_one_line_error(code, err, "no finite value")
    assert not (tmp_path / "o").exists()


def test_inf_values(capsys, tmp_path, loops_npz):
    with np.load(loops_npz) as z:
        loops, v = z["piezoresponse"].copy(), z["voltage"]
    loops[1, 1, 5] = np.inf
    p = tmp_path / "inf.npz"
    np.savez(p, piezoresponse=loops, voltage=v)
    code, _, err = run_cli(capsys, "fit-loops", "--data", p, "--out", tmp_path / "fit.nc")
    assert_one_line_error(code, err, "inf")
    assert not (tmp_path / "fit.nc").exists()


def test_inf_voltage(capsys, tmp_path):
    p = tmp_path / "vinf.npz"
    v = paper_voltage(96)
    v[4] = np.inf
    np.savez(p, piezoresponse=np.zeros((2, 2, 96)), voltage=v)
    code, _, err = run_cli(capsys, "info", p)
    assert_one_line_error(code, err, "voltage")


def test_unknown_channel(capsys, tmp_path):
    p = tmp_path / "x.npy"
    np.save(p, np.zeros((2, 2, 96)))
    code, _, err = run_cli(capsys, "info", p, "--channel", "polarisation", "--voltage", "paper")
    assert_one_line_error(code, err, "polarisation")


@pytest.mark.parametrize("option, match", [
    ("savgol_window = -7", "savgol_window"),
    ("savgol_window = 6", "odd"),
])
def test_out_of_range_option(capsys, tmp_path, option, match):
    cfg = tmp_path / "run.toml"
    cfg.write_text(f"[clean]\n{option}\n")
    code, _, err = run_cli(capsys, "run", "--config", cfg, "--out", tmp_path / "o", "--stages", "clean")
    assert_one_line_error(code, err, match)


def test_unknown_config_section(capsys, tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text("[cleaning]\nsavgol_window = 7\n")
    code, _, err = run_cli(capsys, "run", "--config", cfg, "--out", tmp_path / "o", "--stages", "clean")
    assert_one_line_error(code, err, "[cleaning]")


def test_unknown_stage(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", "--out", tmp_path / "o", "--stages", "clean,bake")
    assert_one_line_error(code, err, "bake")


def test_bad_grid_option(capsys, tmp_path):
    p = tmp_path / "flat.npy"
    np.save(p, np.zeros((12, 96)))
    code, _, err = run_cli(capsys, "info", p, "--grid", "3by4")
    assert_one_line_error(code, err, "ROWSxCOLS")


def test_existing_output_folder_without_force(capsys, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, "run", "--out", out, "--stages", "clean", "--rows", "4", "--cols", "4")
    assert_one_line_error(code, err, "--force")
    assert (out / "keep.txt").read_text() == "mine"


def test_existing_output_file_without_force(capsys, tmp_path):
    out = tmp_path / "s.nc"
    out.write_text("precious")
    code, _, err = run_cli(capsys, "synth", "--out", out, "--rows", "4", "--cols", "4")
    assert_one_line_error(code, err, "--force")
    assert out.read_text() == "precious"


def test_exit_code_from_a_real_process(tmp_path):
    """The installed entry point really exits with 2 and prints one line, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "switchscope.cli", "info", str(tmp_path / "missing.nc")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


# -- what works --------------------------------------------------------------------------------
def test_info_real_mat(capsys, mat_path):
    code, out, _ = run_cli(capsys, "info", mat_path)
    assert code == 0
    assert "piezoresponse" in out and "(60, 60, 96)" in out
    assert "-16" in out and "16" in out
    assert "NaN 3" in out or "NaN: 3" in out or "nan=3" in out.lower()


def test_info_resonance_npy(capsys, resonance_path):
    code, out, _ = run_cli(capsys, "info", resonance_path, "--grid", "60x60", "--channel", "resonance",
                           "--voltage", "paper", "--normalized")
    assert code == 0
    assert "resonance" in out and "(60, 60, 96)" in out


def test_run_clean_writes_outputs(capsys, tmp_path):
    import json

    import xarray as xr

    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "run", "--out", out, "--stages", "clean", "--rows", "6", "--cols", "5",
                           "--no-progress")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert "clean" in summary["timings_s"] and "load" in summary["timings_s"]
    assert summary["versions"]["torch"].startswith("2.")
    with xr.open_dataset(out / "results.nc", engine="h5netcdf") as ds:
        assert ds["piezoresponse_clean"].shape == (6, 5, 96)
        assert np.isfinite(ds["piezoresponse_clean"].values).all()
        assert "truth_domain" in ds
    assert [p.name for p in tmp_path.iterdir()] == ["o"]  # no temporary folders left


def test_failed_stage_keeps_earlier_results(capsys, tmp_path, monkeypatch):
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "run", "--out", out, "--stages", "clean", "--rows", "5", "--cols", "5",
                           "--no-progress")
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    from switchscope._errors import DataError

    def broken(ds, config, ctx):
        (ctx.workdir / "results.nc").write_bytes(b"half a file")
        raise DataError("stage failed on purpose")

    real = pipeline.stage_function
    monkeypatch.setattr(pipeline, "stage_function",
                        lambda name: broken if name == "loops" else real(name))
    code, _, err = run_cli(capsys, "run", "--out", out, "--stages", "clean,loops", "--force",
                           "--rows", "5", "--cols", "5", "--no-progress")
    assert_one_line_error(code, err, "on purpose")
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_synth_round_trip(capsys, tmp_path):
    import xarray as xr

    out = tmp_path / "s.nc"
    code, _, err = run_cli(capsys, "synth", "--out", out, "--rows", "7", "--cols", "6", "--seed", "3")
    assert code == 0, err
    ref = make_dataset(rows=7, cols=6, seed=3)
    with xr.open_dataset(out, engine="h5netcdf") as ds:
        np.testing.assert_array_equal(ds["piezoresponse"].values, ref["piezoresponse"].values)


def test_config_file_reaches_the_stage(capsys, tmp_path):
    import xarray as xr

    cfg = tmp_path / "run.toml"
    cfg.write_text("[synthetic]\nrows = 4\ncols = 3\n")
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "run", "--config", cfg, "--out", out, "--stages", "clean", "--no-progress")
    assert code == 0, err
    with xr.open_dataset(out / "results.nc", engine="h5netcdf") as ds:
        assert (ds.sizes["row"], ds.sizes["col"]) == (4, 3)


def test_fit_loops_and_decompose_commands(capsys, tmp_path, loops_npz):
    import xarray as xr

    code, _, err = run_cli(capsys, "fit-loops", "--data", loops_npz, "--out", tmp_path / "fit.nc",
                           "--model", "bglib9")
    assert code == 0, err
    with xr.open_dataset(tmp_path / "fit.nc", engine="h5netcdf") as ds:
        assert ds["loop_params"].shape[:2] == (6, 5) and ds.sizes["param"] == 9
        assert float(np.nanmedian(ds["loop_r2"].values)) > 0.9
    code, _, err = run_cli(capsys, "decompose", "--data", loops_npz, "--out", tmp_path / "dec.nc")
    assert code == 0, err
    with xr.open_dataset(tmp_path / "dec.nc", engine="h5netcdf") as ds:
        assert ds["cluster_divisive"].shape == (6, 5)
        assert "pca_scores" in ds and "piezoresponse" in ds  # inputs kept
    code, _, err = run_cli(capsys, "decompose", "--data", loops_npz, "--out", tmp_path / "dec.nc")
    assert_one_line_error(code, err, "--force")
