"""Chunked stages on dask (threaded and on a 2-process cluster), Zarr in and out, --scheduler errors.

The chunked results are compared with the in-process ones value by value (exact equality: the
chunks get the whole film's priors and statistics, and every per-pixel computation is the same).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

from switchscope import ConfigError
from switchscope._scheduler import parse_scheduler, scheduler
from switchscope.chunked import chunk_pixels, fit_loops_chunked, loop_priors
from switchscope.io import load, save_zarr
from switchscope.io.config import DataConfig
from switchscope.loops import fit_loops
from switchscope.pipeline import run
from switchscope.preprocess import clean
from switchscope.synthetic import make_dataset

from cli_helpers import one_line_error, run_cli

STAGES = ["sho", "project", "clean", "loops"]


@pytest.fixture(scope="module")
def cluster():
    """One local cluster of 2 worker processes for the module; yields its tcp:// address."""
    with scheduler("local:2") as client:
        yield client.scheduler.address


@pytest.fixture(scope="module")
def loops_film():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return clean(make_dataset(rows=14, cols=10, seed=5), channel="piezoresponse")


@pytest.fixture(scope="module")
def loops_reference(loops_film):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_loops(loops_film, channel="piezoresponse_clean").to_dataset(like=loops_film)


def spectra_film(rows=8, cols=6, seed=2) -> xr.Dataset:
    """Raw complex spectra only (the sho and project stages then run)."""
    ds = make_dataset(rows=rows, cols=cols, seed=seed, spectra=True, n_freq=16)
    spec = (ds["spectrum_real"] + 1j * ds["spectrum_imag"]).astype(np.complex64)
    return xr.Dataset({"spectrum": spec.assign_attrs(units="a.u.")},
                      coords={"voltage": ds["voltage"], "freq": ds["freq"]}, attrs={"source": "film"})


#: Loop metrics integrated by matrix-vector products over the pixels (switchscope.loops._metrics):
#: BLAS rounds each row by its position in the block, so these agree to a few ulp, not bit for bit.
ULP_METRICS = ("loop_area", "loop_centroid_voltage", "loop_centroid_response")


def assert_same(ref: xr.Dataset, got: xr.Dataset, names=None) -> None:
    """Every variable equal value by value (NaN where NaN), attributes equal; the integrated
    loop metrics to 1e-13 relative."""
    names = list(names or ref.data_vars)
    assert names
    for name in names:
        a, b = ref[name].values, got[name].values
        assert a.shape == b.shape, name
        if name in ULP_METRICS:
            np.testing.assert_allclose(b, a, rtol=1e-13, atol=0, err_msg=name)
            assert np.array_equal(np.isnan(a), np.isnan(b)), name
        elif a.dtype.kind in "fc":
            np.testing.assert_array_equal(a, b, err_msg=name)  # NaN == NaN here
        else:
            assert np.array_equal(a, b), name
        assert ref[name].attrs == got[name].attrs, name


def loop_names(ds):
    return [v for v in ds.data_vars if str(v).startswith("loop_")]


# -- the scheduler spec ----------------------------------------------------------------------------
@pytest.mark.parametrize("spec, kind", [(None, "process"), ("local:3", "local"), ("tcp://127.0.0.1:8786", "tcp"),
                                        ("tcp://[::1]:8786", "tcp")])
def test_parse_scheduler(spec, kind):
    assert parse_scheduler(spec).kind == kind


@pytest.mark.parametrize("spec, match", [("local:0", "from 1 to"), ("local:x", "local:N"), ("dask", "local:N"),
                                         ("tcp://host", "tcp://HOST:PORT"), ("tcp://h:70000", "port"), (3, "local:N")])
def test_parse_scheduler_refuses(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_scheduler(spec)


# -- loops: chunks equal the whole film --------------------------------------------------------------
def test_loop_priors_are_the_whole_films(loops_film):
    km = loop_priors(loops_film["piezoresponse_clean"].chunk({"row": 3}), n_clusters=4)
    km2 = loop_priors(loops_film["piezoresponse_clean"], n_clusters=4)
    np.testing.assert_array_equal(km.cluster_centers_, km2.cluster_centers_)
    assert km.cluster_centers_.shape == (4, loops_film.sizes["step"])
    assert loop_priors(loops_film["piezoresponse_clean"], n_clusters=0) is None


def test_chunked_loops_equal_in_process_threads(loops_film, loops_reference):
    lazy = chunk_pixels(loops_film[["piezoresponse_clean"]], 30)  # 3 rows a chunk: 5 chunks
    assert len(lazy.chunks["row"]) == 5
    out = fit_loops_chunked(lazy, "piezoresponse_clean")
    assert out["loop_params"].chunks is not None  # lazy until computed
    got = out.compute(scheduler="threads")
    assert_same(loops_reference, got, loop_names(loops_reference))


def test_chunked_loops_differ_without_the_whole_films_priors(loops_film, loops_reference):
    """The check above can fail: fitting each chunk on its own (its own k-means) changes results."""
    part = loops_film.isel(row=slice(0, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alone = fit_loops(part, channel="piezoresponse_clean")
    whole = loops_reference["loop_params"].isel(row=slice(0, 3)).values.reshape(-1, 13)
    assert not np.array_equal(alone.params, whole, equal_nan=True)


def test_chunked_loops_equal_in_process_on_cluster(cluster, loops_film, loops_reference):
    from distributed import Client

    with Client(cluster) as client:
        lazy = chunk_pixels(loops_film[["piezoresponse_clean"]], 40)
        got = client.compute(fit_loops_chunked(lazy, "piezoresponse_clean")).result()
    assert_same(loops_reference, got, loop_names(loops_reference))


def test_pixel_dim_loops(loops_film, loops_reference):
    X = loops_film["piezoresponse_clean"].stack(pixel=("row", "col")).transpose("pixel", "step")
    X = X.drop_vars(["pixel", "row", "col"])
    ds = xr.Dataset({"y": X}).chunk({"pixel": 50})
    got = fit_loops_chunked(ds, "y").compute()
    ref = loops_reference["loop_r2"].values.ravel()
    np.testing.assert_array_equal(got["loop_r2"].values, ref)


# -- zarr ---------------------------------------------------------------------------------------------
def test_zarr_round_trip_is_lazy_and_exact(tmp_path, loops_reference):
    path = save_zarr(loops_reference.chunk({"row": 4}), tmp_path / "r.zarr")
    back = load(path)
    assert back["piezoresponse"].chunks is not None
    assert back.attrs["format"] == "zarr"
    assert_same(loops_reference, back)


def test_save_zarr_never_replaces_a_foreign_folder(tmp_path, loops_reference):
    foreign = tmp_path / "mine.zarr"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    from switchscope import OutputError

    with pytest.raises(OutputError, match="not written by switchscope"):
        save_zarr(loops_reference, foreign, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "keep me"
    ours = save_zarr(loops_reference.isel(row=slice(0, 2)), tmp_path / "ours.zarr")
    save_zarr(loops_reference.isel(row=slice(0, 3)), ours, overwrite=True)
    assert load(ours).sizes["row"] == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporaries left


# -- the pipeline on chunks ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spectra_runs(tmp_path_factory, cluster):
    """The same spectra through sho, project, clean, loops: in memory, from a Zarr store with
    dask's threads (NetCDF out), and on the cluster (tcp://, Zarr out)."""
    tmp = tmp_path_factory.mktemp("runs")
    ds = spectra_film()
    store = save_zarr(ds.chunk({"row": 3}), tmp / "scan.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run(ds, tmp / "mem", stages=STAGES, progress=False, log=lambda m: None)
        run(None, tmp / "lazy", stages=STAGES, progress=False, log=lambda m: None,
            configs={"data": DataConfig(path=str(store)), "run": _run_config(chunk_pixels=12)})
        run(None, tmp / "tcp", stages=STAGES, progress=False, log=lambda m: None,
            configs={"data": DataConfig(path=str(store)),
                     "run": _run_config(chunk_pixels=18, scheduler=cluster, format="zarr")})
    return tmp


def _run_config(**kw):
    from switchscope._scheduler import RunConfig

    return RunConfig(**kw)


def test_pipeline_chunked_equals_in_memory(spectra_runs):
    ref = load(spectra_runs / "mem" / "results.nc")
    assert {"amplitude", "piezoresponse", "piezoresponse_clean", "resonance_clean", "loop_params"} <= set(ref.data_vars)
    lazy = load(spectra_runs / "lazy" / "results.nc")
    assert_same(ref, lazy)
    on_cluster = load(spectra_runs / "tcp" / "results.zarr")
    assert on_cluster["loop_params"].chunks is not None
    assert_same(ref, on_cluster)
    assert set(on_cluster.data_vars) == set(ref.data_vars)
    assert not (spectra_runs / "lazy" / ".chunks.zarr").exists()  # the scratch store is gone


def test_pipeline_chunked_summary(spectra_runs):
    import json

    ref = json.loads((spectra_runs / "mem" / "summary.json").read_text())
    got = json.loads((spectra_runs / "tcp" / "summary.json").read_text())
    for section, keys in {"sho": ("n_spectra", "median_r2", "converged", "status"),
                          "loops": ("n_converged", "median_r2", "status_counts"),
                          "clean": ("resonance",)}.items():
        for key in keys:
            assert got[section][key] == ref[section][key], (section, key)
    assert got["sho"]["chunks"] > 1


def test_cluster_workers_fit_without_torch(spectra_runs, cluster):
    """sho, project, clean and loops on the CPU never load torch in a worker (~180 MB and ~1 s
    per process): only the autoencoder's chunks need it (they run later in this module)."""
    import sys

    from distributed import Client

    with Client(cluster) as client:
        loaded = client.run(lambda: "torch" in sys.modules)
    assert loaded and not any(loaded.values()), loaded


def test_report_reads_a_zarr_run(spectra_runs, capsys):
    code, out, err = run_cli(capsys, "info", spectra_runs / "tcp" / "results.zarr")
    assert code == 0, err
    assert "loop" in out


# -- the command line -------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, match", [("local:0", "local:N needs N"), ("somewhere", "scheduler must be"),
                                         ("tcp://127.0.0.1:1", "no dask scheduler answers")])
def test_cli_bad_scheduler(capsys, tmp_path, spec, match):
    code, _, err = run_cli(capsys, "run", "--rows", "4", "--cols", "4", "--no-progress", "--stages", "clean",
                           "--scheduler", spec, "--out", tmp_path / "o")
    one_line_error(code, err, match)
    assert not (tmp_path / "o").exists()


def test_cli_bad_run_section(capsys, tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('[run]\nscheduler = "local:-1"\n')
    code, _, err = run_cli(capsys, "run", "--config", toml, "--out", tmp_path / "o", "--no-progress")
    one_line_error(code, err, "[run] scheduler")
    toml.write_text('[run]\nformat = "hdf4"\n')
    code, _, err = run_cli(capsys, "run", "--config", toml, "--out", tmp_path / "o", "--no-progress")
    one_line_error(code, err, "format")


def test_cli_fit_loops_zarr(capsys, tmp_path, loops_film, loops_reference):
    store = save_zarr(loops_film[["piezoresponse_clean"]].rename(piezoresponse_clean="piezoresponse")
                      .chunk({"row": 5}), tmp_path / "loops.zarr")
    out = tmp_path / "fit.zarr"
    code, _, err = run_cli(capsys, "fit-loops", "--data", store, "--out", out)
    assert code == 0, err
    got = load(out)
    np.testing.assert_array_equal(got["loop_params"].values, loops_reference["loop_params"].values)
    code, _, err = run_cli(capsys, "fit-loops", "--data", store, "--out", out)
    one_line_error(code, err, "already exists")
    foreign = tmp_path / "foreign.zarr"
    foreign.mkdir()
    (foreign / "zarr.json").write_text("{}")
    code, _, err = run_cli(capsys, "fit-loops", "--data", store, "--out", foreign, "--force")
    one_line_error(code, err, "not one")
    assert (foreign / "zarr.json").read_text() == "{}"


def test_cli_run_on_a_zarr_store(capsys, tmp_path, loops_film):
    """A chunked run through the command line: no stray warnings from dask or zarr, Zarr out."""
    store = save_zarr(make_dataset(rows=6, cols=5, seed=1).chunk({"row": 2}), tmp_path / "scan.zarr")
    code, out, err = run_cli(capsys, "run", "--data", store, "--stages", "clean", "--format", "zarr",
                             "--out", tmp_path / "o", "--no-progress")
    assert code == 0, err
    assert "results.zarr" in out
    assert "consolidated" not in err and "Zarr V3" not in err, err
    got = load(tmp_path / "o" / "results.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = clean(make_dataset(rows=6, cols=5, seed=1))
    assert_same(ref, got, ["piezoresponse_clean", "resonance_clean"])


# -- autoencoder inference on chunks ------------------------------------------------------------------
#: The network runs in float32; its inference is per loop (eval-mode batch norm, no cross-pixel
#: term), so chunks should give the in-process values exactly (they do here, on threads and on
#: the cluster); 1e-6 leaves room for float32 rounding in BLAS kernels chosen by batch size.
AE_ATOL = 1e-6


def _tiny_ae(**kw):
    from switchscope.autoencoder import AutoencoderConfig

    base = dict(hidden=8, depth=1, n_neurons=8, epochs=2, batch_size=16, max_seconds=None, refine_epochs=0,
                seed=0, threads=1, channels=("piezoresponse",))
    base.update(kw)
    return AutoencoderConfig(**base)


@pytest.fixture(scope="module")
def ae_film():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = clean(make_dataset(rows=8, cols=6, seed=3))
    return ds[["piezoresponse_clean", "resonance_clean", "piezoresponse", "resonance"]]


def _ae_stage(ds, tmp, cfg, pretrained=None):
    from switchscope._context import RunContext
    from switchscope.autoencoder.stage import stage

    tmp.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return stage(ds, cfg, RunContext(workdir=tmp, progress=False, pretrained=pretrained))


def assert_ae_same(ref, got, prefix=("embedding_", "reconstruction_")):
    names = [v for v in ref.data_vars if str(v).startswith(prefix)]
    assert names and set(names) <= set(got.data_vars)
    for name in names:
        a, b = ref[name].values, got[name].values
        assert a.shape == b.shape, name
        np.testing.assert_allclose(b, a, rtol=0, atol=AE_ATOL, err_msg=name)
        ra, rb = dict(ref[name].attrs), dict(got[name].attrs)
        # the summary's MSE is taken from the reconstruction read back from the store (units of
        # the input, normalized again): equal to rounding
        np.testing.assert_allclose(rb.pop("mse_normalized", 0.0), ra.pop("mse_normalized", 0.0), rtol=1e-12)
        assert ra == rb, name


def test_chunked_autoencoder_equals_in_process_threads(ae_film, tmp_path):
    """Per-channel and joint networks: trained in memory, inferred chunk by chunk (4 chunks)."""
    cfg = _tiny_ae(channels=("piezoresponse", "resonance"), joint=True)
    ref = _ae_stage(ae_film, tmp_path / "mem", cfg)
    lazy = chunk_pixels(ae_film, 12)
    assert len(lazy.chunks["row"]) == 4
    calls = []
    import switchscope.autoencoder.stage as ae_stage

    real = ae_stage._infer_chunk

    def counting(block, **kw):
        calls.append(block.sizes["row"])
        return real(block, **kw)

    ae_stage._infer_chunk = counting
    try:
        import dask

        with dask.config.set(scheduler="threads"):  # this process's threads (they see the counter)
            got = _ae_stage(lazy, tmp_path / "chunks", cfg)
    finally:
        ae_stage._infer_chunk = real
    assert sorted(calls) == [1] * 3 + [2] * 12  # per network: the template's first pixel, then 4 chunks
    assert_ae_same(ref, got)
    assert {"embedding_joint", "reconstruction_joint_resonance"} <= set(got.data_vars)
    # the check can fail: chunks put back in the wrong order differ from the whole film's result
    emb = ref["embedding_piezoresponse"].values
    swapped = np.concatenate([emb[2:4], emb[0:2], emb[4:]])
    assert np.abs(swapped - emb).max() > 100 * AE_ATOL


def test_chunked_autoencoder_published_networks(ae_film, tmp_path, keras_dir, monkeypatch):
    """--pretrained paper routes the published network through the same chunks."""
    monkeypatch.setenv("SWITCHSCOPE_PRETRAINED_DIR", str(keras_dir))
    cfg = _tiny_ae(channels=("piezoresponse",))
    ref = _ae_stage(ae_film, tmp_path / "mem", cfg, pretrained="paper")
    got = _ae_stage(chunk_pixels(ae_film, 18), tmp_path / "chunks", cfg, pretrained="paper")
    assert ref["embedding_piezoresponse"].attrs["source"] == "paper"
    assert_ae_same(ref, got)


@pytest.fixture(scope="module")
def ae_runs(tmp_path_factory, cluster, ae_film):
    """The autoencoder stage in memory, from a Zarr store on threads (NetCDF out) and on the
    cluster (Zarr out)."""
    tmp = tmp_path_factory.mktemp("ae")
    store = save_zarr(ae_film.chunk({"row": 2}), tmp / "scan.zarr")
    cfg = _tiny_ae()
    kw = dict(stages=["autoencoder"], progress=False, log=lambda m: None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run(ae_film, tmp / "mem", configs={"autoencoder": cfg}, **kw)
        run(None, tmp / "lazy", configs={"data": DataConfig(path=str(store)), "autoencoder": cfg,
                                         "run": _run_config(chunk_pixels=12)}, **kw)
        run(None, tmp / "tcp", configs={"data": DataConfig(path=str(store)), "autoencoder": cfg,
                                        "run": _run_config(chunk_pixels=18, scheduler=cluster, format="zarr")}, **kw)
    return tmp


def test_pipeline_chunked_autoencoder_equals_in_memory(ae_runs):
    import json

    ref = load(ae_runs / "mem" / "results.nc")
    assert_ae_same(ref, load(ae_runs / "lazy" / "results.nc"))
    on_cluster = load(ae_runs / "tcp" / "results.zarr")
    assert on_cluster["embedding_piezoresponse"].chunks is not None
    assert len(on_cluster["embedding_piezoresponse"].chunks[0]) > 1  # written chunk by chunk
    assert_ae_same(ref, on_cluster)
    assert set(on_cluster.data_vars) == set(ref.data_vars)
    a = json.loads((ae_runs / "mem" / "summary.json").read_text())["autoencoder"]["piezoresponse"]
    b = json.loads((ae_runs / "tcp" / "summary.json").read_text())["autoencoder"]["piezoresponse"]
    for key in ("active_neurons", "active_neuron_index", "epochs", "best_epoch"):
        assert a[key] == b[key], key
    for key in ("mse_all", "mse_train", "mse_val"):
        assert b[key] == pytest.approx(a[key], rel=1e-12), key
