"""Every figure and movie of the report, drawn from the results (``results.nc`` and ``models/``).

One module per stage (``sho``, ``clean``, ``loops``, ``decomposition``, ``autoencoder``, ``interpret``,
``mechanisms``),
each with ``draw(ds, figdir, *, run_dir=None, moviedir=None, fps=4.0)`` returning the files it
wrote as ``(section, path)`` pairs (the page section each belongs to), registered in
:data:`DRAWERS` under the stage's name. Stages compute; only this package draws, so
``switchscope report OUT`` redraws every figure and movie without recomputing anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import xarray as xr

from . import autoencoder, clean, decomposition, interpret, loops, mechanisms, sho
from ._common import plot_maps
from .movies import write_movie

Drawer = Callable[..., list[tuple[str, Path]]]

#: Stage name -> drawer, in the order of a run (and of the page).
DRAWERS: dict[str, Drawer] = {
    "sho": sho.draw,
    "clean": clean.draw,
    "loops": loops.draw,
    "decomposition": decomposition.draw,
    "autoencoder": autoencoder.draw,
    "interpret": interpret.draw,
    "mechanisms": mechanisms.draw,
}


def draw_figures(ds: xr.Dataset, report_dir: str | Path, *, run_dir: str | Path | None = None,
                 movies: bool = True, fps: float = 4.0, skip: tuple[str, ...] = ()
                 ) -> dict[str, list[tuple[str, Path]]]:
    """Draw every figure (and, with ``movies``, every movie) that the results in ``ds`` allow.

    Figures go to ``report_dir/figures``, movies to ``report_dir/movies`` (files of the same name
    are replaced; no other file is touched). ``run_dir`` is the run's folder (for ``models/``).
    ``skip`` names stages whose figures are not wanted. Returns ``(section, path)`` pairs by stage.
    """
    report_dir = Path(report_dir)
    figdir, moviedir = report_dir / "figures", report_dir / "movies"
    figdir.mkdir(parents=True, exist_ok=True)
    if movies:
        moviedir.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[tuple[str, Path]]] = {}
    for stage, draw in DRAWERS.items():
        if stage in skip:
            continue
        out[stage] = draw(ds, figdir, run_dir=Path(run_dir) if run_dir else None,
                          moviedir=moviedir if movies else None, fps=fps)
    if movies and not any(moviedir.iterdir()):
        moviedir.rmdir()
    return out


__all__ = ["DRAWERS", "draw_figures", "plot_maps", "write_movie"]
