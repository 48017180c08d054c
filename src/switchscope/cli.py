"""The ``switchscope`` command line: a thin layer over :mod:`switchscope.pipeline` and :mod:`switchscope.io`.

Options are parsed into the stage dataclasses; no analysis happens here. Every user error ends
with exit code 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

from ._config import STAGE_CONFIGS, StageConfig, configs_from_mapping, read_config_file
from ._errors import ConfigError, DataError, SwitchscopeError
from ._output import check_output_file, check_output_place
from ._text import printable

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit code 2, and which takes no
    abbreviations (``--dat`` is not ``--data``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{message} (see `{self.prog} --help`)")


# -- option parsing helpers --------------------------------------------------------------------
def _load_options(args: argparse.Namespace) -> dict[str, Any]:
    from .io import parse_grid, parse_voltage

    opts: dict[str, Any] = {}
    if getattr(args, "channel", None):
        opts["channel"] = args.channel
    if getattr(args, "grid", None):
        opts["grid"] = parse_grid(args.grid)
    if getattr(args, "voltage", None):
        opts["voltage"] = parse_voltage(args.voltage)
    if getattr(args, "normalized", False):
        opts["normalized"] = True
    return opts


def _data_entry(text: str) -> tuple[str | None, str]:
    """``CHANNEL=PATH`` or ``PATH`` (a path may itself hold '=' when no channel prefixes it)."""
    from ._dataset import CHANNELS

    head, sep, tail = text.partition("=")
    if sep and head in CHANNELS:
        return head, tail
    return None, text


def _data_config(args: argparse.Namespace, configs: dict[str, StageConfig]) -> None:
    """``--data`` (repeatable, ``CHANNEL=PATH``) and ``--select`` into ``configs["data"]``."""
    from .io import DataConfig, find_reader
    from .select import parse_select

    given = getattr(args, "data", None) or []
    base = configs.get("data")
    select = getattr(base, "select", None)
    if getattr(args, "select", None):
        try:
            cli = parse_select(args.select)
        except ConfigError as exc:
            raise ConfigError(f"--{exc}") from None
        select = {**parse_select(select), **cli}  # the command line overrides the config key by key
    if not given:
        if select is not None:
            configs["data"] = (base or DataConfig()).replace(select=select)
        return
    array = {"voltage": args.voltage, "grid": args.grid, "normalized": bool(args.normalized) or False}
    entries = [_data_entry(text) for text in given]
    if len(entries) == 1:
        channel, path = entries[0]
        configs["data"] = DataConfig(path=path, channel=channel or args.channel, select=select, **array)
        return
    if args.channel:
        raise ConfigError("--channel names the channel of one file; with several --data give CHANNEL=PATH each")
    files = []
    for channel, path in entries:
        entry: dict[str, Any] = {"path": path}
        if channel:
            entry["channel"] = channel
        # the array options (--grid, --voltage, --normalized) are for the bare arrays, which need them
        if find_reader(path).name in ("npy", "npz"):
            entry.update({k: v for k, v in array.items() if v})
        files.append(entry)
    configs["data"] = DataConfig(files=files, select=select)


def _configs(args: argparse.Namespace, overrides: dict[str, dict[str, Any]] | None = None
             ) -> dict[str, StageConfig]:
    """Stage configs from ``--preset``, then ``--config FILE``, then command-line overrides."""
    raw: dict[str, dict[str, Any]] = {}
    preset = getattr(args, "preset", None)
    if preset is not None:
        _import_stage_modules()
        for section, cls in STAGE_CONFIGS.items():
            if preset in cls.presets:
                raw[section] = {"preset": preset}
        if not raw:
            known = sorted({p for cls in STAGE_CONFIGS.values() for p in cls.presets})
            raise ConfigError(f"unknown --preset {printable(repr(preset), 60)}; presets are: {', '.join(known)}")
    if getattr(args, "config", None):
        for section, values in read_config_file(args.config).items():
            if not isinstance(values, dict):
                raise ConfigError(f"config section [{section}] must be a table of options")
            if section == "data":
                values = _paths_from(Path(args.config).parent, values)
            raw.setdefault(section, {}).update(values)
    for section, values in (overrides or {}).items():
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            raw.setdefault(section, {}).update(values)
    _import_stage_modules()
    return configs_from_mapping(raw)


def _paths_from(folder: Path, values: dict[str, Any]) -> dict[str, Any]:
    """``[data]`` file paths of a TOML file are relative to the file's folder (as in every config
    format that names files), not to where the command runs."""
    def fix(entry: Any) -> Any:
        if not isinstance(entry, dict):
            return entry
        entry = dict(entry)
        for key in ("path", "voltage"):
            value = entry.get(key)
            if isinstance(value, str) and value != "paper" and "," not in value and not Path(value).is_absolute():
                candidate = folder / value
                if key == "path" or candidate.is_file():
                    entry[key] = str(candidate)
        return entry

    values = fix(values)
    if isinstance(values.get("files"), list):
        values["files"] = [fix(e) for e in values["files"]]
    return values


def _import_stage_modules() -> None:
    import importlib

    from .stages import STAGES

    for stage in STAGES.values():
        try:
            importlib.import_module(stage.module)
        except ModuleNotFoundError as exc:  # a stage not installed in this build
            if not exc.name or not exc.name.startswith("switchscope"):
                raise
    importlib.import_module("switchscope.synthetic")
    importlib.import_module("switchscope._scheduler")  # the [run] section


def _check_seed(args: argparse.Namespace) -> None:
    seed = getattr(args, "seed", None)
    if seed is not None and not 0 <= seed < 2**32:
        raise ConfigError(f"--seed must be an integer from 0 to {2**32 - 1}, got {seed}")


def _run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"scheduler": getattr(args, "scheduler", None), "format": getattr(args, "format", None),
            "chunk_pixels": getattr(args, "chunk_pixels", None)}


def _synthetic_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"rows": args.rows, "cols": args.cols, "seed": args.seed, "noise": args.noise,
            "artifacts": False if args.no_artifacts else None}


# -- commands ----------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from ._device import check_device
    from .pipeline import parse_stages, run

    _check_seed(args)
    stages = parse_stages(args.stages) if args.stages is not None else None
    check_device(args.device)
    from .io.config import data_paths

    configs = _configs(args, {"synthetic": _synthetic_overrides(args), "run": _run_overrides(args)})
    _data_config(args, configs)
    paths = data_paths(configs.get("data"))
    voltage_file = args.voltage if args.voltage and Path(args.voltage).is_file() else None
    check_output_place(args.out, [*paths, args.config, voltage_file])
    if not paths:
        print("no --data given: using the embedded synthetic dataset (see `switchscope run --help`)",
              flush=True)
    run(
        None,
        args.out,
        configs=configs,
        stages=stages,
        force=args.force,
        seed=args.seed or 0,
        device=args.device,
        pretrained=args.pretrained,
        progress=not args.no_progress,
    )
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .io import save
    from .synthetic import make_dataset

    out = check_output_file(args.out, args.force)
    _check_seed(args)
    configs = _configs(args, {"synthetic": _synthetic_overrides(args)})
    cfg = configs.get("synthetic") or STAGE_CONFIGS["synthetic"]()
    if args.spectra:
        cfg = cfg.replace(spectra=True)
    if args.format == "usid":
        from .io.usid_write import make_usid_example

        if not 1 <= args.cycles <= 100:
            raise ConfigError(f"--cycles must be an integer from 1 to 100, got {args.cycles}")
        ds = make_usid_example(out, rows=cfg.rows, cols=cfg.cols, n_steps=cfg.n_steps, n_fields=args.fields,
                               n_cycles=args.cycles, n_freq=cfg.n_freq, seed=cfg.seed, spectra=cfg.spectra,
                               artifacts=cfg.artifacts, overwrite=args.force)
        what = f"{args.fields} field(s), {args.cycles} cycle(s)" + (", raw spectra" if cfg.spectra else "")
    else:
        if args.fields != 1 or args.cycles != 1:
            raise ConfigError("--fields and --cycles apply to --format usid; drop them or add --format usid")
        ds = make_dataset(**cfg.to_dict())
        save(ds, out, overwrite=args.force)
        what = "NetCDF"
    print(f"wrote {out} ({ds.sizes['row']}x{ds.sizes['col']} pixels, {ds.sizes['step']} steps, {what})")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .io import describe, load
    from .select import parse_select

    select = parse_select(args.select)
    options = _load_options(args)
    if "group" in select:
        options["group"] = select["group"]
    ds = load(args.path, **options)
    print(describe(ds, run=True))
    return 0


def _one_stage_command(args: argparse.Namespace, section: str, apply, overrides=None, chunked=None) -> int:
    """Load ``--data``, apply one stage's function with its config, save to ``--out`` (a Zarr
    store when it ends in ``.zarr``). ``chunked(ds, config)``, where given, is used instead of
    ``apply`` on data read lazily or with ``--scheduler``."""
    from ._dataset import check_values
    from ._scheduler import check_reachable, parse_scheduler, scheduler
    from .io import save
    from .io.config import data_paths, load_data
    from .sho_stage import needs_sho

    configs = _configs(args, {section: overrides or {}, "run": _run_overrides(args)})
    _data_config(args, configs)
    zarr_out = str(args.out).rstrip("/").endswith(".zarr")
    inputs = data_paths(configs.get("data"))
    if zarr_out:
        from .io.zarr import check_output_store

        out = check_output_store(args.out, args.force, inputs=inputs)
    else:
        out = check_output_file(args.out, args.force, inputs=inputs)
    run_cfg = configs.get("run") or STAGE_CONFIGS["run"]()
    spec = parse_scheduler(run_cfg.scheduler)
    check_reachable(spec)
    ds = load_data(configs["data"])
    if needs_sho(ds):
        raise DataError(f"{printable(ds.attrs.get('source', 'the data'))} holds raw spectra only; fit them first: "
                        "switchscope run --data FILE --select group=Raw_Data --stages sho,project,clean,loops")
    check_values(ds)
    config = configs.get(section) or STAGE_CONFIGS[section]()
    with scheduler(spec):
        from .chunked import chunk_pixels, is_lazy, pixels_per_chunk

        if chunked is not None and (is_lazy(ds) or spec.distributed):
            ds = chunk_pixels(ds, pixels_per_chunk(ds, run_cfg.chunk_pixels))
            ds = chunked(ds, config)
        else:
            ds = apply(ds, config)
        if zarr_out:
            from .io.zarr import save_zarr

            save_zarr(ds, out, overwrite=args.force, progress=True)
        else:
            import dask

            with dask.config.set(scheduler="threads"):  # one process writes the HDF5 file
                save(ds, out, overwrite=args.force)
    print(f"wrote {out}")
    return 0


def cmd_fit_loops(args: argparse.Namespace) -> int:
    from .chunked import fit_loops_dataset_chunked
    from .loops import fit_loops_dataset

    return _one_stage_command(args, "loops", fit_loops_dataset, {"model": args.model},
                              chunked=fit_loops_dataset_chunked)


def cmd_decompose(args: argparse.Namespace) -> int:
    from .decomposition import decompose_dataset

    return _one_stage_command(args, "decomposition", decompose_dataset)


def cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    from ._output import MARKER, files_in, foreign_files, locked, read_marker, write_marker

    out = Path(args.out)
    if not (out / "results.nc").is_file() and not (out / "results.zarr").is_dir():
        raise DataError(f"{printable(repr(str(out / 'results.nc')))} not found; give the folder written by "
                        "`switchscope run`")
    marker = read_marker(out)
    if marker is None:
        raise DataError(f"{printable(repr(str(out)))} has no {MARKER} file, so switchscope did not write it and "
                        "will not write into it; give the folder written by `switchscope run`")
    with locked(out.resolve()):
        extra = foreign_files(out)
        if extra:
            more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
            raise DataError(f"{printable(repr(str(out)))} holds {printable(repr(extra[0]))}{more}, which switchscope did "
                            "not write (or a symbolic link); move it away before rebuilding the report")
        page = build_report(out)
        # the page and the figures drawn now belong to the run: --force may replace them later
        drawn = [f for f in files_in(out) if f.startswith("report/")]
        write_marker(out, run_id=marker["run_id"], state=marker.get("state", "complete"),
                     files=sorted(set(marker["files"]) | set(drawn)))
    print(f"wrote {page}")
    return 0


# -- parser ------------------------------------------------------------------------------------
def _add_data_options(p: argparse.ArgumentParser, required: bool) -> None:
    what = ("measurement file (.mat, .nc, .npy, .npz, USID/NSID .h5, a .zarr store, read lazily); repeat it to merge files, one channel "
            "each, as CHANNEL=FILE (e.g. --data loops.mat --data resonance=res.npy)")
    p.add_argument("--data", required=required, metavar="[CHANNEL=]FILE", action="append",
                   help=what + ("" if required else "; default: the embedded synthetic dataset"))
    _add_array_options(p)
    _add_select_option(p)


def _add_scheduler_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler", metavar="local:N|tcp://HOST:PORT",
                   help="run the per-pixel stages (sho, project, clean, loops) chunk by chunk on dask: local:N "
                   "starts N worker processes, tcp://HOST:PORT uses a running dask.distributed scheduler "
                   "([run] scheduler in TOML); default in this process (chunked when --data is a Zarr store)")
    p.add_argument("--chunk-pixels", type=int, default=None, metavar="N",
                   help="pixels per chunk of the chunked stages (default 16384, fewer for raw spectra)")


def _add_select_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--select", metavar="KEY=VALUE", action="append",
                   help="what the stages analyse: field=out-of-field|in-field, cycle=N|mean, group=NAME "
                   "(USID group); repeatable; default out-of-field and the mean over cycles")


def _add_array_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--channel", help="channel name of a .npy array (default piezoresponse)")
    p.add_argument("--grid", metavar="ROWSxCOLS", help="grid of (pixels, steps) arrays, e.g. 60x60")
    p.add_argument("--voltage", metavar="FILE|paper",
                   help="voltage per step for .npy/.npz data: a .npy/text file, or 'paper' (96-step waveform)")
    p.add_argument("--normalized", action="store_true", help="the .npy data is already normalized")


def _add_config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="TOML", help="stage options from a TOML file ([clean], [loops], ...)")
    p.add_argument("--preset", help="named preset for every stage that has it (e.g. 'paper')")


def _add_synthetic_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=int, default=None, help="synthetic dataset rows (default 60)")
    p.add_argument("--cols", type=int, default=None, help="synthetic dataset cols (default 60)")
    p.add_argument("--noise", type=float, default=None, help="synthetic noise level")
    p.add_argument("--no-artifacts", action="store_true", help="synthetic data without spikes and NaN/Inf")


def _stage_names() -> str:
    from .stages import STAGES

    return ", ".join(STAGES)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="switchscope", description="Ferroelectric switching spectroscopy (BEPS) analysis.")
    parser.add_argument("--version", action="version", version=f"switchscope {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    p = sub.add_parser("run", help="the whole pipeline: load, clean, fit loops, baselines, autoencoder, report")
    _add_data_options(p, required=False)
    _add_scheduler_options(p)
    p.add_argument("--format", choices=["netcdf", "zarr"], default=None,
                   help="format of OUT/results: netcdf (results.nc, default) or zarr (results.zarr, written "
                   "chunk by chunk; for large scans)")
    p.add_argument("--out", default="switchscope-out", metavar="DIR",
                   help="output folder, created by the run (default switchscope-out)")
    p.add_argument("--force", action="store_true",
                   help="replace an output folder that an earlier switchscope run wrote (never any other)")
    _add_config_options(p)
    p.add_argument("--stages", metavar="LIST",
                   help=f"comma-separated stages to run, in any order (default: all): {_stage_names()}")
    p.add_argument("--pretrained", choices=["paper"], help="use the paper's published networks instead of training")
    p.add_argument("--pretrained-dir", metavar="DIR", help="folder of the published Keras networks")
    p.add_argument("--device", default="auto",
                   help="torch device: auto, cpu, cuda, cuda:N, mps (default auto: a CUDA GPU if present)")
    p.add_argument("--seed", type=int, default=None, help="one seed for everything (default 0)")
    _add_synthetic_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("synth", help="write the synthetic dataset to a NetCDF or USID HDF5 file")
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write (.nc, or .h5 with --format usid)")
    p.add_argument("--format", choices=["netcdf", "usid"], default="netcdf",
                   help="netcdf (switchscope's own, default) or usid (the layout of pycroscopy/BGlib: SHO fit, "
                   "projected loops, raw spectra with --spectra, truth maps in /switchscope_truth)")
    p.add_argument("--spectra", action="store_true", help="add raw band-excitation spectra (SHO model)")
    p.add_argument("--fields", type=int, choices=[1, 2], default=1,
                   help="usid: 2 writes in-field and out-of-field loops (default 1: out-of-field)")
    p.add_argument("--cycles", type=int, default=1, help="usid: cycles of the waveform (default 1)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    _add_synthetic_options(p)
    p.add_argument("--force", action="store_true",
                   help="replace a file that switchscope wrote (never any other)")
    _add_config_options(p)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("info", help="what is in a file: channels, shapes, voltage range, NaN counts")
    p.add_argument("path", help="the data file")
    _add_array_options(p)
    _add_select_option(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("fit-loops", help="fit every loop of a file and write the switching maps")
    _add_data_options(p, required=True)
    _add_scheduler_options(p)
    p.add_argument("--out", required=True, metavar="FILE.nc|STORE.zarr",
                   help="the NetCDF file to write, or a Zarr store (a name ending in .zarr)")
    p.add_argument("--model", choices=["paper13", "bglib9"], default=None,
                   help="loop model (default paper13, or [loops] model of --config)")
    p.add_argument("--force", action="store_true",
                   help="replace a file that switchscope wrote (never any other)")
    _add_config_options(p)
    p.set_defaults(func=cmd_fit_loops)

    p = sub.add_parser("decompose", help="PCA, NMF and clustering of a file")
    _add_data_options(p, required=True)
    p.add_argument("--out", required=True, metavar="FILE.nc", help="the NetCDF file to write")
    p.add_argument("--force", action="store_true",
                   help="replace a file that switchscope wrote (never any other)")
    _add_config_options(p)
    p.set_defaults(func=cmd_decompose)

    p = sub.add_parser("report", help="rebuild OUT/report/index.html from OUT/results.nc without recomputing")
    p.add_argument("out", metavar="OUT", help="the folder written by `switchscope run`")
    p.set_defaults(func=cmd_report)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: stages stop, the temporary folder is removed."""


def _on_sigterm(signum, frame) -> None:  # noqa: ARG001
    raise Terminated()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"switchscope: warning: {printable(message)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``switchscope`` command; returns the exit code."""
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        return _main(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: Sequence[str] | None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        if getattr(args, "pretrained_dir", None):
            os.environ["SWITCHSCOPE_PRETRAINED_DIR"] = args.pretrained_dir
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning
            return args.func(args)
    except SwitchscopeError as exc:
        print(f"switchscope: error: {printable(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into `head`
        return 0
    except OSError as exc:  # permissions, full disk: the user's to fix, not a bug
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"switchscope: error: {printable(exc.strerror or exc)}{printable(where)}; check the path "
              "and its permissions", file=sys.stderr)
        return EXIT_USAGE
    except Terminated:
        print("switchscope: terminated; earlier results are untouched", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("switchscope: interrupted; earlier results are untouched", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
