"""The ``switchscope run`` pipeline: stages in order, each a function from Dataset to Dataset.

A stage is ``stage(ds, config, ctx) -> ds``; its configuration is the dataclass registered under
the stage's section name (see :mod:`switchscope._config`). The run writes into a temporary folder
beside the output and renames it into place only when every stage has finished, so a failed or
interrupted run never destroys earlier results and never leaves a half-written file behind.
"""

from __future__ import annotations

import importlib
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import xarray as xr

from ._config import STAGE_CONFIGS, StageConfig
from ._context import RunContext
from .stages import STAGES, StageFn, get_stage
from ._dataset import channels_in
from ._errors import ConfigError
from ._text import printable
from ._json import json_safe, write_json  # noqa: F401 (re-exported)
from ._output import (
    OutputChanged,
    begin,
    check_output_folder,
    check_output_place,
    commit,
    discard,
    locked,
    recover,
)

def stage_function(name: str) -> StageFn:
    """The function of stage ``name`` (imported on first use)."""
    return get_stage(name).run


def stage_config(name: str, configs: Mapping[str, StageConfig]) -> StageConfig:
    """The configuration of stage ``name``: the one given, else the stage's defaults."""
    stage = get_stage(name)
    if stage.section in configs:
        return configs[stage.section]
    return stage.default_config()


def parse_stages(spec: str | None) -> list[str]:
    """``"clean,loops"`` -> ``["clean", "loops"]`` in run order; None -> every stage."""
    if spec is None:
        return list(STAGES)
    names = [s.strip() for s in str(spec).split(",") if s.strip()]
    if not names:
        raise ConfigError(f"--stages names no stage; give some of: {', '.join(STAGES)}")
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {printable(', '.join(unknown), 80)} in --stages; "
                          f"stages are: {', '.join(STAGES)}")
    return [n for n in STAGES if n in names]


def versions() -> dict[str, str]:
    """Versions of Python and of the libraries whose numbers a result depends on."""
    from importlib.metadata import version

    import h5py
    import numpy
    import scipy
    import sklearn

    from . import __version__

    return {
        "switchscope": __version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "xarray": xr.__version__,
        "h5py": h5py.__version__,
        "scikit-learn": sklearn.__version__,
        "torch": version("torch"),  # without importing it (a run may never need it)
        "platform": platform.platform(),
    }


def _write_results(ds: xr.Dataset, ctx: RunContext, names: list[str],
                   configs: Mapping[str, StageConfig], t_all: float, write_data: bool = True) -> None:
    from .io import save

    ctx.summary["configs"] = {n: stage_config(n, configs).to_dict() for n in names}
    if write_data:
        run_cfg = configs.get("run")
        fmt = getattr(run_cfg, "format", "netcdf")
        if ctx.persist is not None:
            _write_chunked(ds, ctx, fmt)
        elif fmt == "zarr":
            from .io.zarr import save_zarr

            save_zarr(ds, ctx.workdir / "results.zarr", progress=ctx.progress)
        else:
            save(ds, ctx.workdir / "results.nc")
    ctx.summary["timings_s"]["total"] = round(time.perf_counter() - t_all, 3)
    write_json(ctx.summary, ctx.workdir / "summary.json")


#: The store a chunked run writes its results into as the stages go (``results.zarr`` itself
#: with ``--format zarr``; with NetCDF output, this scratch store, removed once it is copied).
_SCRATCH_STORE = ".chunks.zarr"


def _store_path(ctx: RunContext, fmt: str) -> Path:
    return ctx.workdir / ("results.zarr" if fmt == "zarr" else _SCRATCH_STORE)


def _persist_into(store: Path, progress: bool) -> Callable[[xr.Dataset], xr.Dataset]:
    """``ctx.persist`` of a chunked run: write lazy results chunk by chunk into ``store`` (on the
    active dask scheduler) and give them back lazily, read from it."""
    from .io.zarr import open_store, write_zarr

    def persist(lazy: xr.Dataset) -> xr.Dataset:
        write_zarr(lazy, store, append=store.exists(), progress=progress)
        return open_store(store)[list(lazy.data_vars)]

    return persist


def _write_chunked(ds: xr.Dataset, ctx: RunContext, fmt: str) -> None:
    """The results of a chunked run: the variables not yet in its store are added (inputs and
    what the in-memory stages computed, chunk by chunk), attributes brought up to date, and, for
    NetCDF output, the store copied chunk by chunk into ``results.nc`` and removed."""
    import dask
    import shutil

    from .io import save
    from .io.zarr import open_store, update_attrs, write_zarr

    store = _store_path(ctx, fmt)
    have = set(xr.open_zarr(store, chunks=None, consolidated=False).data_vars) if store.exists() else set()
    todo = [v for v in ds.data_vars if v not in have]
    if todo:
        write_zarr(ds[todo], store, append=store.exists(), progress=ctx.progress)
    update_attrs(store, ds)
    if fmt == "zarr":
        from .io.zarr import consolidate

        consolidate(store)
        return
    stored = open_store(store)
    stored.attrs = dict(ds.attrs)
    # one process writes the HDF5 file, reading the store chunk by chunk (threads, no cluster)
    with dask.config.set(scheduler="threads"):
        save(stored[list(ds.data_vars)], ctx.workdir / "results.nc")
    shutil.rmtree(store)


def load_data(data: xr.Dataset | str | Path | None, configs: Mapping[str, StageConfig],
              load_options: Mapping[str, Any] | None = None) -> xr.Dataset:
    """The run's input: a Dataset as given, a file read by :func:`switchscope.io.load`, the
    file(s) of the ``[data]`` section, or, with ``data=None`` and no ``[data]`` file, the embedded
    synthetic dataset configured by the ``[synthetic]`` section.

    Fields and cycles are reduced by the selection (``[data] select``, or ``select`` in
    ``load_options``; see :mod:`switchscope.select`) before any stage."""
    from .select import apply_selection, parse_select

    options = dict(load_options or {})
    data_cfg = configs.get("data")
    select = parse_select(options.pop("select", None) or getattr(data_cfg, "select", None))
    if isinstance(data, xr.Dataset):
        return apply_selection(data, select)
    if data is None and data_cfg is not None and (data_cfg.path or data_cfg.files):
        from .io import load_data as load_from_config

        return load_from_config(data_cfg.replace(select=select or None))
    if data is None:
        from .synthetic import make_dataset

        return apply_selection(make_dataset(**stage_config_synthetic(configs).to_dict()), select)
    from .io import load

    if "group" in select:
        options["group"] = select["group"]
    return apply_selection(load(data, select=select, **options), select)


def stage_config_synthetic(configs: Mapping[str, StageConfig]) -> StageConfig:
    if "synthetic" in configs:
        return configs["synthetic"]
    importlib.import_module("switchscope.synthetic")
    return STAGE_CONFIGS["synthetic"]()


def run(
    data: xr.Dataset | str | Path | None,
    out: str | Path,
    *,
    configs: Mapping[str, StageConfig] | None = None,
    stages: list[str] | None = None,
    force: bool = False,
    seed: int = 0,
    device: str = "auto",
    pretrained: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    load_options: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Run the stages over ``ds`` and write ``OUT/results.nc``, ``OUT/summary.json`` and the report.

    Parameters
    ----------
    data : xarray.Dataset, path or None
        A measurement (dims ``row, col, step``), a file to load, or None for the embedded
        synthetic dataset.
    out : path
        Output folder. Must not exist (or be empty) unless ``force``.
    configs : mapping of section name to StageConfig, optional
        Per-stage configuration; missing stages use their defaults.
    stages : list of str, optional
        Stages to run (default: all, in order).

    Returns
    -------
    xarray.Dataset
        The input with every stage's results added.
    """
    configs = dict(configs or {})
    names = list(STAGES) if stages is None else parse_stages(",".join(stages))
    for name in names:
        stage_config(name, configs)  # every stage's options, before any work
    log = log or (lambda msg: print(msg, flush=True))
    out = Path(out)
    inputs = [data] if isinstance(data, (str, Path)) else []
    if data is None:
        from .io.config import data_paths

        inputs.extend(data_paths(configs.get("data")))
    if _torchrun_rank() != 0:
        return _run_other_rank(data, configs, names, explicit=stages is not None, seed=seed, device=device,
                               pretrained=pretrained, load_options=load_options, inputs=inputs)
    resolved = check_output_place(out, inputs)
    with locked(resolved):
        recover(resolved)  # what killed runs left here, before judging what is there
        check_output_folder(out, force, inputs)
        spec = _scheduler_spec(configs)
        t0 = time.perf_counter()
        ds = load_data(data, configs, load_options)
        load_seconds = time.perf_counter() - t0
        names = preflight(ds, names, configs, explicit=stages is not None, device=device,
                          pretrained=pretrained, log=log)
        input_dir = Path(inputs[0]).resolve().parent if inputs else None
        with _scheduler(spec, log=log):
            ds = _chunked_input(ds, spec, configs)
            work, run_id = begin(resolved)
            try:
                ds = _run_stages(ds, names, configs, work, seed=seed, device=device, pretrained=pretrained,
                                 progress=progress, log=log, load_seconds=load_seconds, input_dir=input_dir)
                commit(work, resolved, run_id, force=force)
            except BaseException as exc:
                if not isinstance(exc, OutputChanged):  # that one keeps the new results for the user
                    discard(work)
                raise
    results = "results.zarr" if getattr(configs.get("run"), "format", "netcdf") == "zarr" else "results.nc"
    log(f"results written to {out}/ ({results}, summary.json"
        + (", report/index.html)" if "report" in names else ")"))
    return ds


def _scheduler_spec(configs: Mapping[str, StageConfig]):
    """The run's ``[run] scheduler``, parsed, and a ``tcp://`` one reached (before any work)."""
    from ._scheduler import check_reachable, parse_scheduler

    spec = parse_scheduler(getattr(configs.get("run"), "scheduler", None))
    check_reachable(spec)
    return spec


def _scheduler(spec, log):
    from ._scheduler import scheduler

    return scheduler(spec, log=log)


def _chunked_input(ds: xr.Dataset, spec, configs: Mapping[str, StageConfig]) -> xr.Dataset:
    """The data in chunks of pixels when the run is chunked: data read lazily (a Zarr store), or
    any data when a dask cluster runs the stages. Otherwise the data as it is (in memory)."""
    from .chunked import chunk_pixels, is_lazy, pixels_per_chunk

    if not (is_lazy(ds) or spec.distributed):
        return ds
    from ._scheduler import DEFAULT_CHUNK_PIXELS

    pixels = int(getattr(configs.get("run"), "chunk_pixels", DEFAULT_CHUNK_PIXELS))
    return chunk_pixels(ds, pixels_per_chunk(ds, pixels))


def _torchrun_rank() -> int:
    """This process's rank when started by torchrun (``WORLD_SIZE`` > 1), else 0."""
    if "WORLD_SIZE" not in os.environ:
        return 0
    from .autoencoder._distributed import world_rank

    return world_rank()[0]


def _run_other_rank(data: xr.Dataset | str | Path | None, configs: Mapping[str, StageConfig], names: list[str], *,
                    explicit: bool, seed: int, device: str, pretrained: str | None,
                    load_options: Mapping[str, Any] | None, inputs: list) -> xr.Dataset:
    """A torchrun rank other than 0: only the autoencoder's training is distributed, so this rank
    runs the stages up to the autoencoder (the same input to its fit as rank 0's), silently, in a
    scratch folder that it deletes, and writes nothing to the output (rank 0 alone does, as in a
    one-process run). Returns its dataset, which the caller should not save."""
    ds = load_data(data, configs, load_options)
    names = preflight(ds, names, configs, explicit=explicit, device=device, pretrained=pretrained)
    if "autoencoder" not in names:
        return ds
    names = names[:names.index("autoencoder") + 1]
    input_dir = Path(inputs[0]).resolve().parent if inputs else None
    with tempfile.TemporaryDirectory(prefix="switchscope-rank-") as scratch:
        return _run_stages(ds, names, configs, Path(scratch), seed=seed, device=device, pretrained=pretrained,
                           progress=False, log=lambda msg: None, load_seconds=0.0, input_dir=input_dir)


def preflight(ds: xr.Dataset, names: list[str], configs: Mapping[str, StageConfig], *, explicit: bool,
              device: str = "auto", pretrained: str | None = None,
              log: Callable[[str], None] | None = None) -> list[str]:
    """Check, before the first stage, what would otherwise fail in the middle of a run; return
    the stages to run (``score`` is dropped from a default run on data without ground truth)."""
    from ._dataset import check_values
    from ._device import check_device

    check_values(ds)
    if device != "auto":
        check_device(device)
    names = list(names)
    if "score" in names and not any(str(v).startswith("truth_") for v in ds.data_vars):
        if explicit:
            raise ConfigError("stage score compares with ground truth (truth_* variables), which only the "
                              "synthetic dataset has; drop score from --stages")
        names.remove("score")
        if log:
            log("stage score skipped: the data holds no ground truth")
    names = _raw_stages(ds, names, explicit, log)
    if "loops" in names and getattr(stage_config("loops", configs), "channel", None) is None:
        from .loops._options import default_loop_variable
        from .loops._stage import missing_piezoresponse

        if default_loop_variable(ds) is None and not ({"sho", "project"} & set(names)):
            if explicit:
                raise ConfigError(f"stage loops: {missing_piezoresponse(ds)}, or drop loops from --stages")
            names.remove("loops")
            if log:
                log("stage loops skipped: the data holds no piezoresponse (loop fitting applies to it only)")
    if "clean" in names:
        from .preprocess import check_steps

        cfg = stage_config("clean", configs)
        for channel in channels_in(ds):
            if cfg.channels is None or channel in cfg.channels:
                check_steps(int(ds.sizes["step"]), cfg, channel)
    from .waveform import check_dataset_voltage

    check_dataset_voltage(ds, max_cycles=1 if "loops" in names else None)  # a bipolar triangle, any start
    if "autoencoder" in names:
        cfg = stage_config("autoencoder", configs)
        check_device(cfg.device, "[autoencoder] device")
        if pretrained == "paper":
            from .autoencoder.keras import pretrained_directory
            from .paper import PAPER_STEPS

            pretrained_directory()
            if int(ds.sizes["step"]) != PAPER_STEPS:
                raise ConfigError(f"--pretrained paper takes loops of {PAPER_STEPS} steps, the data has "
                                  f"{ds.sizes['step']}; train instead (drop --pretrained paper)")
            if "voltage" in ds.variables:
                from .waveform import check_paper_order

                check_paper_order(ds["voltage"].values)
    return names


def _raw_stages(ds: xr.Dataset, names: list[str], explicit: bool,
                log: Callable[[str], None] | None) -> list[str]:
    """Keep ``sho`` only for raw spectra and ``project`` only where loops are still to be made."""
    from .sho_stage import check_spectra, needs_projection, needs_sho

    sho = needs_sho(ds)
    if "sho" in names:
        if sho:
            check_spectra(ds)
        elif explicit:
            raise ConfigError("stage sho fits raw band-excitation spectra, which the data does not hold (or holds "
                              "with their SHO fit); drop sho from --stages")
        else:
            names.remove("sho")
    elif sho:
        raise ConfigError("the data holds raw spectra only; add sho (and project) to --stages, or read the "
                          "file's SHO fit")
    if "project" in names and not needs_projection(ds, after_sho="sho" in names):
        if explicit:
            raise ConfigError("stage project makes piezoresponse from amplitude and phase, and the data has "
                              "piezoresponse already (or no amplitude and phase); drop project from --stages")
        names.remove("project")
    return names


def _run_stages(ds: xr.Dataset, names: list[str], configs: Mapping[str, StageConfig], work: Path, *,
                seed: int, device: str, pretrained: str | None, progress: bool,
                log: Callable[[str], None], load_seconds: float, input_dir: Path | None = None) -> xr.Dataset:
    ctx = RunContext(workdir=work, seed=seed, device=device, pretrained=pretrained, progress=progress,
                     input_dir=input_dir)
    from .chunked import CHUNKED_STAGES, is_lazy

    chunked = is_lazy(ds)
    if chunked:
        fmt = getattr(configs.get("run"), "format", "netcdf")
        ctx.persist = _persist_into(_store_path(ctx, fmt), progress)
    ctx.summary["dataset"] = {
        "source": str(ds.attrs.get("source", "synthetic")),
        "grid": [int(ds.sizes.get("row", 0)), int(ds.sizes.get("col", 0))],
        "n_steps": int(ds.sizes.get("step", 0)),
        "channels": channels_in(ds),
        "selection": str(ds.attrs.get("selection", "")),
    }
    timings: dict[str, float] = {"load": round(load_seconds, 3)}
    ctx.summary["timings_s"] = timings
    ctx.summary["versions"] = versions()
    t_all = time.perf_counter()
    for i, name in enumerate(names, 1):
        fn = stage_function(name)
        if chunked and name in CHUNKED_STAGES:
            from . import chunked as chunked_stages

            fn = getattr(chunked_stages, f"{name}_stage")
        cfg = stage_config(name, configs)
        log(f"[{i}/{len(names)}] {name} ...")
        t0 = time.perf_counter()
        if name == "report":
            # The page is built from the written results, so they go to disk first.
            _write_results(ds, ctx, names, configs, t_all)
        ds = fn(ds, cfg, ctx)
        timings[name] = round(time.perf_counter() - t0, 3)
        log(f"[{i}/{len(names)}] {name} done in {timings[name]:.1f} s")
    _write_results(ds, ctx, names, configs, t_all, write_data="report" not in names)
    return ds
