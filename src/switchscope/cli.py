"""The ``switchscope`` command line: a thin layer over :mod:`switchscope.pipeline` and :mod:`switchscope.io`.

Options are parsed into the stage dataclasses; no analysis happens here. Every user error ends
with exit code 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

from ._config import STAGE_CONFIGS, StageConfig, configs_from_mapping, read_config_file
from ._errors import ConfigError, DataError, OutputError, SwitchscopeError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit code 2."""

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


def _configs(args: argparse.Namespace, overrides: dict[str, dict[str, Any]] | None = None
             ) -> dict[str, StageConfig]:
    """Stage configs from ``--preset``, then ``--config FILE``, then command-line overrides."""
    raw: dict[str, dict[str, Any]] = {}
    preset = getattr(args, "preset", None)
    if preset:
        _import_stage_modules()
        for section, cls in STAGE_CONFIGS.items():
            if preset in cls.presets:
                raw[section] = {"preset": preset}
    if getattr(args, "config", None):
        for section, values in read_config_file(args.config).items():
            if not isinstance(values, dict):
                raise ConfigError(f"config section [{section}] must be a table of options")
            raw.setdefault(section, {}).update(values)
    for section, values in (overrides or {}).items():
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            raw.setdefault(section, {}).update(values)
    _import_stage_modules()
    return configs_from_mapping(raw)


def _import_stage_modules() -> None:
    import importlib

    from .pipeline import STAGES

    for module, _ in STAGES.values():
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:  # a stage not installed in this build
            if not exc.name or not exc.name.startswith("switchscope"):
                raise
    importlib.import_module("switchscope.synthetic")


def _check_out_file(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise OutputError(f"output file {str(path)!r} already exists; pass --force to replace it")
    if not path.resolve().parent.is_dir():
        raise OutputError(f"the folder of {str(path)!r} does not exist; create it first")


def _synthetic_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"rows": args.rows, "cols": args.cols, "seed": args.seed, "noise": args.noise,
            "artifacts": False if args.no_artifacts else None}


# -- commands ----------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import parse_stages, run

    configs = _configs(args, {"synthetic": _synthetic_overrides(args)})
    run(
        args.data,
        args.out,
        configs=configs,
        stages=parse_stages(args.stages),
        force=args.force,
        seed=args.seed or 0,
        device=args.device,
        pretrained=args.pretrained,
        progress=not args.no_progress,
        load_options=_load_options(args),
    )
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .io import save
    from .synthetic import make_dataset

    out = Path(args.out)
    _check_out_file(out, args.force)
    configs = _configs(args, {"synthetic": _synthetic_overrides(args)})
    cfg = configs.get("synthetic") or STAGE_CONFIGS["synthetic"]()
    ds = make_dataset(**cfg.to_dict())
    save(ds, out, overwrite=args.force)
    print(f"wrote {out} ({ds.sizes['row']}x{ds.sizes['col']} pixels, {ds.sizes['step']} steps)")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .io import describe, load

    ds = load(args.path, **_load_options(args))
    print(describe(ds))
    return 0


def _one_stage_command(args: argparse.Namespace, section: str, apply, overrides=None) -> int:
    """Load ``--data``, apply one stage's function with its config, save to ``--out``."""
    from .io import load, save

    out = Path(args.out)
    _check_out_file(out, args.force)
    configs = _configs(args, {section: overrides or {}})
    ds = load(args.data, **_load_options(args))
    ds = apply(ds, configs.get(section) or STAGE_CONFIGS[section]())
    save(ds, out, overwrite=args.force)
    print(f"wrote {out}")
    return 0


def cmd_fit_loops(args: argparse.Namespace) -> int:
    from .loops import fit_loops_dataset

    return _one_stage_command(args, "loops", fit_loops_dataset, {"model": args.model})


def cmd_decompose(args: argparse.Namespace) -> int:
    from .decomposition import decompose_dataset

    return _one_stage_command(args, "decomposition", decompose_dataset)


def cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    out = Path(args.out)
    if not (out / "results.nc").is_file():
        raise DataError(f"{str(out / 'results.nc')!r} not found; give the folder written by `switchscope run`")
    page = build_report(out)
    print(f"wrote {page}")
    return 0


# -- parser ------------------------------------------------------------------------------------
def _add_data_options(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--data", required=required, metavar="FILE",
                   help="measurement file (.mat, .nc, .npy, .npz); default: the embedded synthetic dataset"
                   if not required else "measurement file (.mat, .nc, .npy, .npz)")
    _add_array_options(p)


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


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="switchscope", description="Ferroelectric switching spectroscopy (BEPS) analysis.")
    parser.add_argument("--version", action="version", version=f"switchscope {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("run", help="the whole pipeline: load, clean, fit loops, baselines, autoencoder, report")
    _add_data_options(p, required=False)
    p.add_argument("--out", default="switchscope-out", metavar="DIR", help="output folder (default switchscope-out)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    _add_config_options(p)
    p.add_argument("--stages", help="comma-separated stages to run (default: all)")
    p.add_argument("--pretrained", choices=["paper"], help="use the paper's published networks instead of training")
    p.add_argument("--pretrained-dir", metavar="DIR", help="folder of the published Keras networks")
    p.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda (default auto)")
    p.add_argument("--seed", type=int, default=None, help="one seed for everything (default 0)")
    _add_synthetic_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("synth", help="write the synthetic dataset to a NetCDF file")
    p.add_argument("--out", required=True, metavar="FILE.nc")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    _add_synthetic_options(p)
    p.add_argument("--force", action="store_true", help="replace an existing file")
    _add_config_options(p)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("info", help="what is in a file: channels, shapes, voltage range, NaN counts")
    p.add_argument("path")
    _add_array_options(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("fit-loops", help="fit every loop of a file and write the switching maps")
    _add_data_options(p, required=True)
    p.add_argument("--out", required=True, metavar="FILE.nc")
    p.add_argument("--model", choices=["paper13", "bglib9"], default=None)
    p.add_argument("--force", action="store_true")
    _add_config_options(p)
    p.set_defaults(func=cmd_fit_loops)

    p = sub.add_parser("decompose", help="PCA, NMF and clustering of a file")
    _add_data_options(p, required=True)
    p.add_argument("--out", required=True, metavar="FILE.nc")
    p.add_argument("--force", action="store_true")
    _add_config_options(p)
    p.set_defaults(func=cmd_decompose)

    p = sub.add_parser("report", help="rebuild OUT/report/index.html from OUT/results.nc without recomputing")
    p.add_argument("out", metavar="OUT")
    p.set_defaults(func=cmd_report)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"switchscope: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``switchscope`` command; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "pretrained_dir", None):
            os.environ["SWITCHSCOPE_PRETRAINED_DIR"] = args.pretrained_dir
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning
            return args.func(args)
    except SwitchscopeError as exc:
        print(f"switchscope: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into `head`
        return 0
    except OSError as exc:  # permissions, full disk: the user's to fix, not a bug
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"switchscope: error: {exc.strerror or exc}{where}; check the path and its permissions",
              file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("switchscope: interrupted; earlier results are untouched", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
