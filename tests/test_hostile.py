"""One test per class of hostile or unlucky input: exit code 2 and one line that says what to do,
before any work, with nothing lost; or, where the input is usable, a clean success."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import xarray as xr

from switchscope.cli import build_parser
from switchscope.io import paper_voltage, save
from switchscope.pipeline import STAGES
from switchscope.synthetic import make_dataset

from cli_helpers import SMALL, one_line_error, run_cli


@pytest.fixture()
def nc(tmp_path) -> Path:
    path = tmp_path / "scan.nc"
    save(make_dataset(rows=3, cols=3, seed=1, artifacts=False), path)
    return path


def _set_attr(path: Path, name: str, value) -> None:
    with h5py.File(path, "r+") as f:
        f.attrs[name] = value


# -- NetCDF attributes that switchscope did not write ---------------------------------------------
@pytest.mark.parametrize("json_attrs, value", [
    ("not json", None),                                   # the list of JSON attributes is not JSON
    (json.dumps(["extra"]), "[" * 100_000),               # nested past any recursion limit
    (json.dumps(["extra"]), json.dumps({"__ndarray__": [1], "dtype": "<q17"})),  # unknown dtype
    (json.dumps(["extra"]), json.dumps({"__ndarray__": [1], "dtype": "|O"})),   # objects
    ("42", None),                                          # a number
])
def test_netcdf_attributes_not_ours(capsys, nc, json_attrs, value):
    _set_attr(nc, "switchscope_json_attrs", json_attrs)
    if value is not None:
        _set_attr(nc, "extra", value)
    code, out, err = run_cli(capsys, "info", nc)
    assert code == 0, err
    assert "Traceback" not in err
    assert "kept as stored text" in err


def test_netcdf_voltage_of_strings(capsys, nc, tmp_path):
    ds = xr.open_dataset(nc, engine="h5netcdf").load()
    ds = ds.assign_coords(voltage=("step", np.array([f"{v:.1f}" for v in ds["voltage"].values])))
    bad = tmp_path / "strings.nc"
    ds.to_netcdf(bad, engine="h5netcdf")
    one_line_error(*run_cli(capsys, "info", bad)[::2], "not numbers")


# -- files that declare more than they hold ----------------------------------------------------------
def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_npy_header_declaring_terabytes(capsys, tmp_path):
    hdr = "{'descr': '<f8', 'fortran_order': False, 'shape': (100000, 100000, 96), }"
    hdr = hdr.ljust(117) + "\n"
    p = tmp_path / "huge.npy"
    p.write_bytes(b"\x93NUMPY\x01\x00" + len(hdr).to_bytes(2, "little") + hdr.encode() + bytes(64))
    assert p.stat().st_size < 300
    before = _rss_mb()
    line = one_line_error(*run_cli(capsys, "info", p, "--voltage", "paper")[::2], "holds only")
    assert "TB" in line
    assert _rss_mb() - before < 200


def test_mat73_declaring_gigabytes(capsys, tmp_path):
    tmp = tmp_path / "x.h5"
    with h5py.File(tmp, "w", userblock_size=512) as f:
        d = f.create_dataset("Loopdata_mixed", shape=(96, 100_000, 100_000), dtype="f8", chunks=(1, 64, 64))
        d.attrs["MATLAB_class"] = np.bytes_(b"double")
    p = tmp_path / "small.mat"
    p.write_bytes(b"MATLAB 7.3 MAT-file".ljust(128, b" ") + tmp.read_bytes()[128:])
    assert p.stat().st_size < 10_000
    before = _rss_mb()
    line = one_line_error(*run_cli(capsys, "info", p)[::2], "memory available")
    assert "(96, 100000, 100000)" in line or "(100000, 100000, 96)" in line
    assert _rss_mb() - before < 200


def test_mat5_declaring_gigabytes(capsys, tmp_path):
    p = tmp_path / "v5.mat"
    scipy.io.savemat(p, {"Loopdata_mixed": np.zeros((2, 3, 5))})
    data = bytearray(p.read_bytes())
    dims = np.array([2, 3, 5], dtype="<i4").tobytes()
    at = bytes(data).index(dims)
    data[at:at + 12] = np.array([100_000, 100_000, 96], dtype="<i4").tobytes()
    p.write_bytes(bytes(data))
    line = one_line_error(*run_cli(capsys, "info", p)[::2], "memory available")
    assert "GB" in line or "TB" in line


def test_npz_member_declaring_more_than_it_holds(capsys, tmp_path):
    import zipfile

    p = tmp_path / "x.npz"
    hdr = "{'descr': '<f8', 'fortran_order': False, 'shape': (1000, 1000, 96), }".ljust(117) + "\n"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("piezoresponse.npy", b"\x93NUMPY\x01\x00" + len(hdr).to_bytes(2, "little") + hdr.encode())
    one_line_error(*run_cli(capsys, "info", p)[::2], "declares")


# -- options without bounds ---------------------------------------------------------------------------
@pytest.mark.parametrize("toml, match", [
    ("[autoencoder]\nhidden = 1000000\n", "[autoencoder] hidden must be an integer >= 1 and <= 1024"),
    ("[autoencoder]\nthreads = 100000\n", "[autoencoder] threads must be an integer >= 0 and <= 256"),
    ("[loops]\nmax_iter = 10000000000\n", "[loops] max_iter must be"),
    ("[decomposition]\nn_pca = 100000\n", "[decomposition] n_pca must be"),
    ("[interpret]\nn_pixels = 1e12\n", "[interpret] n_pixels must be"),
])
def test_unbounded_options(capsys, tmp_path, toml, match):
    cfg = tmp_path / "run.toml"
    cfg.write_text(toml)
    one_line_error(*run_cli(capsys, "run", "--config", cfg, "--out", tmp_path / "o", *SMALL)[::2], match)
    assert not (tmp_path / "o").exists()


def test_every_numeric_option_is_bounded():
    """Each stage option that is a number has an upper bound: a huge value is refused."""
    import dataclasses

    from switchscope.stages import STAGE_CONFIGS
    from switchscope._errors import ConfigError
    from switchscope.cli import _import_stage_modules

    _import_stage_modules()
    unbounded, checked = [], 0
    for section, cls in STAGE_CONFIGS.items():
        if section.startswith("_"):
            continue
        default = cls()
        for f in dataclasses.fields(cls):
            value = getattr(default, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            checked += 1
            try:
                cls(**{f.name: type(value)(10**15)})
            except ConfigError:
                continue
            unbounded.append(f"[{section}] {f.name}")
    assert checked > 40 and not unbounded, unbounded


# -- devices ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("device, match", [("tpu", "must be one of auto, cpu"), ("cuda:99", "cuda")])
def test_bad_device_before_any_stage(capsys, tmp_path, device, match):
    import torch

    if device.startswith("cuda") and torch.cuda.device_count() > 99:
        pytest.skip("a machine with 100 GPUs")
    code, out, err = run_cli(capsys, "run", "--device", device, "--stages", "clean", "--out", tmp_path / "o", *SMALL)
    one_line_error(code, err, match)
    assert "[1/1]" not in out
    assert not (tmp_path / "o").exists()


def test_cuda_without_cuda(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, out, err = run_cli(capsys, "run", "--device", "cuda", "--stages", "clean", "--out", tmp_path / "o", *SMALL)
    one_line_error(code, err, "no CUDA GPU")
    cfg = tmp_path / "run.toml"
    cfg.write_text('[autoencoder]\ndevice = "cuda"\n')
    code, out, err = run_cli(capsys, "run", "--config", cfg, "--stages", "clean,autoencoder", "--out",
                             tmp_path / "o", *SMALL)
    one_line_error(code, err, "[autoencoder] device")
    assert "[1/2]" not in out


# -- not regular files -------------------------------------------------------------------------------
def test_fifo_and_devices_are_refused_at_once(capsys, tmp_path):
    fifo = tmp_path / "scan.nc"
    os.mkfifo(fifo)

    def hang(signum, frame):
        raise TimeoutError("reading a FIFO hung")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(20)
    try:
        for target, match in ((fifo, "FIFO"), (Path("/dev/null"), "device"), (tmp_path, "folder")):
            code, _, err = run_cli(capsys, "run", "--data", target, "--stages", "clean", "--out",
                                   tmp_path / "o", "--no-progress")
            one_line_error(code, err, match)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# -- absurd values ----------------------------------------------------------------------------------
def test_values_near_1e300_are_refused_before_the_work(capsys, tmp_path):
    ds = make_dataset(rows=3, cols=3, seed=1, artifacts=False)
    p = tmp_path / "huge.npz"
    np.savez(p, piezoresponse=ds["piezoresponse"].values * 1e300, voltage=ds["voltage"].values)
    code, out, err = run_cli(capsys, "run", "--data", p, "--stages", "clean,loops", "--out", tmp_path / "o",
                             "--no-progress")
    line = one_line_error(code, err, "divide it by 1e")
    assert "warning" not in err  # refused before any numpy overflow
    assert "[1/2]" not in out
    assert "1e295" in line or "1e296" in line
    code, _, err = run_cli(capsys, "fit-loops", "--data", p, "--out", tmp_path / "fit.nc")
    one_line_error(code, err, "divide it by 1e")


def test_summary_json_is_always_valid_json(tmp_path):
    from switchscope._json import write_json

    p = tmp_path / "summary.json"
    write_json({"a": float("nan"), "b": np.float64("inf"), "c": [np.nan, 1.5], "d": np.array([np.inf, 2])}, p)

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    data = json.loads(p.read_text(), parse_constant=refuse)
    assert data == {"a": None, "b": None, "c": [None, 1.5], "d": [None, 2.0]}


def test_summary_of_a_run_is_strict_json(capsys, tmp_path):
    out = tmp_path / "o"
    assert run_cli(capsys, "run", "--stages", "clean,loops", "--out", out, *SMALL)[0] == 0

    def refuse(name):
        raise ValueError(f"{name} in summary.json")

    json.loads((out / "summary.json").read_text(), parse_constant=refuse)


# -- text from files reaches the terminal escaped ---------------------------------------------------
def test_info_escapes_control_characters(capsys, tmp_path):
    ds = make_dataset(rows=2, cols=2, seed=1, artifacts=False)
    ds.attrs["comment"] = "\x1b[2J\x1b[Hscreen wiped\nsecond line\u202e"
    ds["piezoresponse"].attrs["units"] = "\x1b[31mpm"
    p = tmp_path / "evil.nc"
    save(ds, p)
    code, out, err = run_cli(capsys, "info", p)
    assert code == 0, err
    assert "\x1b" not in out and "\u202e" not in out
    assert "\\x1b[2J" in out
    line = next(ln for ln in out.splitlines() if "comment" in ln)
    assert "second line" in line  # the newline is escaped, not printed


def test_file_name_with_a_newline_stays_one_line(capsys, tmp_path):
    p = tmp_path / "bad\nname\x1b[31m.mat"
    p.write_text("not a mat file" * 20)
    line = one_line_error(*run_cli(capsys, "info", p)[::2], "format")
    assert "\x1b" not in line


# -- checked before the work, in the user's words -------------------------------------------------------
def test_unknown_preset(capsys, tmp_path):
    one_line_error(*run_cli(capsys, "run", "--preset", "nope", "--out", tmp_path / "o", *SMALL)[::2],
                   "unknown --preset 'nope'; presets are: demo, fast, paper")


def test_messages_name_toml_keys(capsys, tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text("[loops]\nmax_iter = 0\n")
    line = one_line_error(*run_cli(capsys, "run", "--config", cfg, "--out", tmp_path / "o", *SMALL)[::2],
                          "[loops] max_iter must be")
    assert "LoopsConfig" not in line


def test_savgol_advice_can_be_followed(capsys, tmp_path):
    for n_steps, advice in ((2, "needs at least 3"), (6, "odd number from 3 to 5")):
        p = tmp_path / f"short{n_steps}.npz"
        rng = np.random.default_rng(0)
        np.savez(p, piezoresponse=rng.normal(size=(3, 3, n_steps)), voltage=np.linspace(-1, 1, n_steps))
        code, out, err = run_cli(capsys, "run", "--data", p, "--stages", "clean,loops", "--out",
                                 tmp_path / "o", "--no-progress")
        one_line_error(code, err, advice)
        assert "[1/2]" not in out


def test_loop_fit_warning_speaks_of_results_nc():
    from switchscope.loops import fit_loops

    v = paper_voltage(96)
    X = np.tile(np.sin(np.linspace(0, 6, 96)), (4, 1))
    X[0] = np.nan
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit_loops(X, v, max_iter=1)
    texts = [str(w.message) for w in caught]
    assert any("loop_status in results.nc" in t for t in texts), texts


def test_abbreviations_are_not_options(capsys, tmp_path):
    one_line_error(*run_cli(capsys, "run", "--dat", "x.mat", "--out", tmp_path / "o")[::2], "--dat")


def test_bare_command_prints_the_help(capsys):
    code, out, err = run_cli(capsys)
    assert code == 0 and "usage: switchscope" in out and "run" in out


def test_every_option_has_help_and_stages_are_listed():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        for action in p._actions:
            assert action.help, f"switchscope {name} {action.option_strings or action.dest} has no help"
    stages_help = next(a.help for a in sub.choices["run"]._actions if "--stages" in a.option_strings)
    for stage in STAGES:
        assert stage in stages_help


def test_run_without_data_says_so(capsys, tmp_path):
    code, out, err = run_cli(capsys, "run", "--stages", "clean", "--out", tmp_path / "o", *SMALL)
    assert code == 0, err
    assert sum("synthetic dataset" in ln for ln in out.splitlines()) == 1


def test_score_runs_only_where_there_is_truth(capsys, tmp_path, mat_path):
    code, out, err = run_cli(capsys, "run", "--data", mat_path, "--stages", "clean,score", "--out",
                             tmp_path / "o", "--no-progress")
    one_line_error(code, err, "ground truth")
    assert "[1/2]" not in out
    # a default run on real data leaves score out and says so
    from switchscope.pipeline import preflight
    from switchscope.io import load

    names = preflight(load(mat_path), list(STAGES), {}, explicit=False, log=lambda m: None)
    assert "score" not in names and "clean" in names


def test_small_film_runs_every_stage_with_default_options(capsys, tmp_path):
    """The default [interpret] n_pixels (50) on a 6 x 6 film: used to fail after training."""
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "run", "--rows", "6", "--cols", "6", "--out", out, "--no-progress")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    used = [c.get("n_pixels_used") for c in summary["interpret"]["channels"].values()]
    assert used and all(u == 9 for u in used if u is not None)


def test_training_bar_shows_the_time_budget(capsys):
    from switchscope.autoencoder import Autoencoder, AutoencoderConfig

    X = np.random.default_rng(0).normal(size=(20, 16))
    cfg = AutoencoderConfig(hidden=4, n_neurons=4, epochs=2, max_seconds=30.0, refine_epochs=0, batch_size=8)
    Autoencoder(cfg).fit(X, progress=True)
    assert "stops at 2 epochs or 30 s" in capsys.readouterr().err


def test_published_network_inference_shows_progress(capsys, tmp_path, keras_dir, monkeypatch):
    from switchscope.stages import RunContext
    from switchscope.autoencoder.stage import _pretrained

    monkeypatch.setenv("SWITCHSCOPE_PRETRAINED_DIR", str(keras_dir))
    X = np.random.default_rng(0).normal(size=(40, 96))
    ctx = RunContext(workdir=tmp_path, progress=True)
    _, Z, R, _, _ = _pretrained("piezoresponse", X, ctx)
    assert Z.shape[0] == 40 and R.shape == (40, 96)
    assert "published piezoresponse network" in capsys.readouterr().err


# -- same command, same answer ------------------------------------------------------------------------
def test_two_runs_give_identical_embeddings_even_on_a_busy_cpu(capsys, tmp_path):
    argv = ("run", "--stages", "clean,loops,decomposition,autoencoder", "--rows", "6", "--cols", "6",
            "--seed", "3", "--no-progress")
    assert run_cli(capsys, *argv, "--out", tmp_path / "a")[0] == 0
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
    try:
        assert run_cli(capsys, *argv, "--out", tmp_path / "b")[0] == 0
    finally:
        for p in busy:
            p.kill()
            p.wait()
    with xr.open_dataset(tmp_path / "a" / "results.nc", engine="h5netcdf") as a, \
            xr.open_dataset(tmp_path / "b" / "results.nc", engine="h5netcdf") as b:
        for name in ("embedding_piezoresponse", "embedding_resonance", "loop_params", "pca_scores"):
            if name in a:
                np.testing.assert_allclose(a[name].values, b[name].values, rtol=0, atol=1e-10, err_msg=name)
    sa = json.loads((tmp_path / "a" / "summary.json").read_text())
    sb = json.loads((tmp_path / "b" / "summary.json").read_text())
    for ch in ("piezoresponse", "resonance"):
        assert sa["autoencoder"][ch]["epochs"] == sb["autoencoder"][ch]["epochs"] == 40
        assert sa["autoencoder"][ch]["stop_reason"] == "epochs"
    assert math.isclose(sa["autoencoder"]["piezoresponse"]["mse_all"], sb["autoencoder"]["piezoresponse"]["mse_all"],
                        rel_tol=1e-9)


# -- MATLAB v5 structure, checked before scipy reads it --------------------------------------------
def test_mat5_complex_flag_without_imaginary_part(tmp_path):
    """scipy.io.loadmat crashes the process (segmentation fault) on this file; switchscope must
    refuse it with one line. Run in a child process so that a regression fails cleanly."""
    p = tmp_path / "complex.mat"
    scipy.io.savemat(p, {"Loopdata_mixed": np.ones((2, 2, 4))})
    data = bytearray(p.read_bytes())
    assert data[144] == 6 and data[145] == 0  # array flags of the first variable: class mxDOUBLE
    data[145] = 0x08  # the "complex" flag, with no imaginary part after the real one
    p.write_bytes(bytes(data))
    proc = subprocess.run([sys.executable, "-m", "switchscope.cli", "info", str(p)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    one_line_error(proc.returncode, proc.stderr, "damaged MATLAB v5 file")


@pytest.mark.parametrize("compress", [False, True])
def test_mat5_structure_check_accepts_what_scipy_writes(tmp_path, compress):
    import scipy.sparse

    from switchscope.io._mat5_check import check_mat5

    p = tmp_path / "all.mat"
    scipy.io.savemat(p, {
        "x": np.arange(6.0).reshape(2, 3), "c": np.array([1 + 2j, 3 - 1j]), "i8": np.int8(3),
        "u16": np.arange(5, dtype=np.uint16), "b": np.array([True, False]), "s": "hello",
        "st": {"a": 1.0, "b": np.ones(3)}, "sp": scipy.sparse.csc_matrix(np.eye(3)), "e": np.zeros((0, 3)),
        "f32": np.ones((2, 2, 2), np.float32)}, do_compression=compress)
    check_mat5(p, budget=10**9)  # no error
    data = bytearray(p.read_bytes())
    p.write_bytes(bytes(data[:-5]))  # cut inside the last element
    with pytest.raises(Exception, match="damaged MATLAB v5 file"):
        check_mat5(p, budget=10**9)


def test_voltage_in_millivolts_is_refused(capsys, tmp_path):
    ds = make_dataset(rows=3, cols=3, seed=1, artifacts=False)
    p = tmp_path / "mv.npz"
    np.savez(p, piezoresponse=ds["piezoresponse"].values, voltage=ds["voltage"].values * 1000)
    one_line_error(*run_cli(capsys, "info", p)[::2], "divide by 1000")


def test_voltage_file_of_text_is_refused(capsys, tmp_path):
    ds = make_dataset(rows=3, cols=3, seed=1, artifacts=False)
    data = tmp_path / "loops.npy"
    np.save(data, ds["piezoresponse"].values)
    v = tmp_path / "v.npy"
    np.save(v, np.array(["16 V"] * 96))
    one_line_error(*run_cli(capsys, "info", data, "--voltage", v)[::2], "not volts")


def test_mat5_cells_are_never_loaded(capsys, tmp_path, monkeypatch):
    """A cell may hide an array of any size that the variable headers do not show: only numeric
    variables are read."""
    import scipy.io as sio

    p = tmp_path / "cells.mat"
    cell = np.empty((1,), dtype=object)
    cell[0] = np.zeros((200, 200))
    sio.savemat(p, {"Loopdata_mixed": np.ones((2, 2, 8)), "Voltagedata_mixed": np.linspace(-1, 1, 8)[:, None],
                    "notes": cell}, do_compression=True)
    asked = []
    real = sio.loadmat

    def spy(path, *args, **kwargs):
        asked.append(kwargs.get("variable_names"))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(sio, "loadmat", spy)
    code, out, err = run_cli(capsys, "info", p)
    assert code == 0, err
    assert asked and sorted(asked[-1]) == ["Loopdata_mixed", "Voltagedata_mixed"]
