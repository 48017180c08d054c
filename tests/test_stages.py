"""The stage contract: a public registry, stages that compute only, a report that draws everything
from the results (so it can redraw it), and an import graph without cycles."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import xarray as xr

from switchscope.cli import main
from switchscope.stages import STAGES, Stage, get_stage

SRC = Path(__file__).resolve().parents[1] / "src" / "switchscope"
#: Modules that hold a stage's computation (they must never draw).
STAGE_MODULES = ("preprocess", "loops", "decomposition", "autoencoder", "interpret", "synthetic", "pipeline",
                 "stages")


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file (lazy imports included)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    return {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}


def test_no_stage_module_draws(graph):
    for path in SRC.rglob("*.py"):
        name = _module_name(path)
        if name.count(".") < 1 or name.split(".")[1] not in STAGE_MODULES:
            continue
        imported = _imports(path)
        assert not any(i == "matplotlib" or i.startswith("matplotlib.") for i in imported), name
        assert not any(i.startswith("switchscope.report") for i in imported), name


def test_import_graph_has_no_cycle(graph):
    """Between modules (a package and its own submodules aside), imports never go round."""
    def edges(m):
        # a package's __init__ gathers its submodules: that is not a dependency cycle
        return {d for d in graph[m] if not d.startswith(m + ".") and not m.startswith(d + ".")}

    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in edges(m):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_registry_is_the_one_source_of_stage_names():
    from switchscope.cli import build_parser
    from switchscope.pipeline import parse_stages

    assert parse_stages(None) == list(STAGES)
    assert all(isinstance(s, Stage) for s in STAGES.values())
    for s in STAGES.values():
        assert s.config_class.section == s.section  # its TOML section is registered
        assert callable(s.run)
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    help_text = next(a.help for a in sub.choices["run"]._actions if "--stages" in a.option_strings)
    assert help_text.endswith(", ".join(STAGES))
    with pytest.raises(Exception, match="stages are: sho, project, clean, loops"):
        get_stage("cleen")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "o"
    assert main(["run", "--rows", "5", "--cols", "5", "--out", str(out), "--no-progress"]) == 0
    return out


def _drawn(run: Path) -> set[str]:
    rep = run / "report"
    return {p.relative_to(rep).as_posix() for p in rep.rglob("*") if p.suffix in (".png", ".gif", ".mp4")}


def test_report_command_redraws_every_figure_and_movie(small_run):
    import shutil

    before = _drawn(small_run)
    assert {"figures/clean.png", "figures/loop_maps.png", "figures/pca.png", "figures/embedding_resonance.png",
            "figures/training_piezoresponse.png", "figures/generated_piezoresponse.png",
            "movies/generator_resonance.gif", "movies/training_piezoresponse.mp4"} <= before
    shutil.rmtree(small_run / "report")
    assert main(["report", str(small_run)]) == 0
    assert _drawn(small_run) == before
    marker = json.loads((small_run / ".switchscope-run").read_text())
    assert set(before) <= {f[len("report/"):] for f in marker["files"]}


def test_interpret_on_saved_results_finds_the_networks(small_run, tmp_path):
    out = tmp_path / "again"
    code = main(["run", "--data", str(small_run / "results.nc"), "--stages", "interpret", "--out", str(out),
                 "--no-progress"])
    assert code == 0
    with xr.open_dataset(out / "results.nc", engine="h5netcdf") as again, \
            xr.open_dataset(small_run / "results.nc", engine="h5netcdf") as first:
        for name in ("generated_piezoresponse", "generated_resonance"):
            assert name in again
            xr.testing.assert_allclose(again[name], first[name])
    # the networks it used travel with the new results
    assert (out / "models" / "piezoresponse" / "config.json").is_file()


def test_training_movie_frames_are_the_channels_own_checkpoints(small_run):
    import imageio.v3 as iio

    from switchscope.io import load

    ds = load(small_run / "results.nc")
    for ch in ("piezoresponse", "resonance"):
        own = list(ds[f"embedding_history_{ch}"].attrs["own_checkpoint_epochs"])
        frames = iio.imread(small_run / "report" / "movies" / f"training_{ch}.gif", index=None)
        assert frames.shape[0] == len(own)
