"""Several files, one dataset: [[data.files]] in TOML and repeated --data on the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from switchscope import ConfigError, DataError
from switchscope.io import DataConfig, load_data, paper_voltage

from cli_helpers import one_line_error, run_cli


def _npy(tmp_path, name, arr):
    path = tmp_path / name
    np.save(path, arr)
    return str(path)


@pytest.fixture
def pair(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(12, 96))
    b = rng.normal(size=(12, 96))
    return _npy(tmp_path, "loops.npy", a), _npy(tmp_path, "res.npy", b), a, b


def test_two_files_merge_by_grid_and_voltage(pair):
    pa, pb, a, b = pair
    cfg = DataConfig(files=[{"path": pa, "grid": [3, 4], "voltage": "paper"},
                            {"path": pb, "channel": "resonance", "grid": [3, 4], "voltage": "paper",
                             "normalized": True}])
    ds = load_data(cfg)
    np.testing.assert_array_equal(ds["piezoresponse"].values.reshape(12, 96), a)
    np.testing.assert_array_equal(ds["resonance"].values.reshape(12, 96), b)
    assert ds["resonance"].attrs["normalized"] == 1 and "normalized" not in ds["piezoresponse"].attrs
    assert ds.attrs["source"] == "loops.npy + res.npy"


@pytest.mark.parametrize("second, message", [
    ({"channel": "piezoresponse", "grid": [3, 4], "voltage": "paper"}, "channel piezoresponse is given twice"),
    ({"channel": "resonance", "grid": [4, 3], "voltage": "paper"}, "merged files must share one grid"),
    ({"channel": "resonance", "grid": [3, 4], "voltage": ",".join(str(x) for x in paper_voltage(96) * 1.01)},
     "differs by up to 0.16 V"),
])
def test_merge_errors(pair, second, message):
    pa, pb, _, _ = pair
    cfg = DataConfig(files=[{"path": pa, "grid": [3, 4], "voltage": "paper"}, {"path": pb, **second}])
    with pytest.raises(DataError, match=message):
        load_data(cfg)


def test_voltages_equal_to_a_nanovolt_merge(pair):
    pa, pb, _, _ = pair
    v = ",".join(repr(float(x)) for x in paper_voltage(96) + 1e-10)
    ds = load_data(DataConfig(files=[{"path": pa, "grid": [3, 4], "voltage": "paper"},
                                     {"path": pb, "channel": "resonance", "grid": [3, 4], "voltage": v}]))
    assert set(ds.data_vars) == {"piezoresponse", "resonance"}


@pytest.mark.parametrize("files, message", [
    ([{"grid": [3, 4]}], "needs a path"),
    ([{"path": "a.npy", "colour": 1}], "unknown option"),
    ("a.npy", "list of"),
])
def test_bad_files_tables(files, message):
    with pytest.raises(ConfigError, match=message):
        DataConfig(files=files)


def test_cli_repeats_data_and_rejects_a_channel_twice(pair, tmp_path, capsys):
    pa, pb, _, _ = pair
    out = tmp_path / "merged.nc"
    code, _, err = run_cli(capsys, "decompose", "--data", pa, "--data", f"resonance={pb}", "--grid", "3x4",
                           "--voltage", "paper", "--out", out)
    assert code == 0, err
    from switchscope.io import load

    ds = load(out)
    assert {"piezoresponse", "resonance"} <= set(ds.data_vars)
    assert any(str(v).startswith("pca") for v in ds.data_vars)
    code, _, err = run_cli(capsys, "decompose", "--data", pa, "--data", f"piezoresponse={pb}", "--grid", "3x4",
                           "--voltage", "paper", "--out", tmp_path / "x.nc")
    one_line_error(code, err, "given twice")
    assert not (tmp_path / "x.nc").exists()


def test_paper_pair_with_the_published_networks(tmp_path, mat_path, resonance_path, keras_dir, capsys):
    """The paper's two real channels from two files, both published networks, one command."""
    toml = tmp_path / "pair.toml"
    toml.write_text(f'''
[[data.files]]
path = "{mat_path}"
[[data.files]]
path = "{resonance_path}"
channel = "resonance"
grid = [60, 60]
voltage = "paper"
normalized = true
''')
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "run", "--config", toml, "--pretrained", "paper", "--pretrained-dir", keras_dir,
                           "--stages", "clean,autoencoder", "--out", out, "--no-progress")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"]["channels"] == ["piezoresponse", "resonance"]
    ae = summary["autoencoder"]
    assert ae["piezoresponse"]["active_neuron_index"] == [1, 7, 11, 12, 15]
    assert ae["resonance"]["active_neuron_index"] == [4, 6, 11, 15]


def test_array_options_apply_to_bare_arrays_only(pair, tmp_path, mat_path, capsys):
    """--normalized (and --grid/--voltage) with several --data touch the .npy, never the .mat."""
    _, pb, _, _ = pair
    big = tmp_path / "res60.npy"
    np.save(big, np.random.default_rng(0).normal(size=(3600, 96)))
    out = tmp_path / "d.nc"
    code, _, err = run_cli(capsys, "decompose", "--data", mat_path, "--data", f"resonance={big}", "--grid", "60x60",
                           "--voltage", "paper", "--normalized", "--out", out)
    assert code == 0, err
    from switchscope.io import load

    ds = load(out)
    assert "normalized" not in ds["piezoresponse"].attrs and ds["resonance"].attrs["normalized"] == 1


def test_toml_paths_are_relative_to_the_toml_and_cli_select_overrides_key_by_key(tmp_path, capsys, monkeypatch):
    from switchscope.io.usid_write import make_usid_example

    folder = tmp_path / "project"
    folder.mkdir()
    make_usid_example(folder / "film.h5", rows=4, cols=4, n_steps=32, n_fields=2, n_cycles=2, n_freq=4,
                      spectra=False)
    (folder / "sel.toml").write_text('[data]\npath = "film.h5"\nselect = { field = "in-field", cycle = 1 }\n')
    monkeypatch.chdir(tmp_path)  # not the TOML's folder
    code, _, err = run_cli(capsys, "run", "--config", folder / "sel.toml", "--select", "cycle=2", "--stages", "clean",
                           "--out", tmp_path / "o", "--no-progress")
    assert code == 0, err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["dataset"]["selection"] == "field=in-field, cycle=2 of 2"
    code, _, err = run_cli(capsys, "run", "--config", folder / "sel.toml", "--select", "cycle=0", "--stages",
                           "clean", "--out", tmp_path / "o2", "--no-progress")
    one_line_error(code, err, "--select cycle must be a cycle number")
