"""What a pipeline stage gets besides the Dataset and its config."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable


@dataclasses.dataclass
class RunContext:
    """Shared state of one ``switchscope run``.

    Attributes
    ----------
    workdir : Path
        The run's output folder while it is being written (a temporary name that is renamed to
        the final folder when every stage has finished).
    summary : dict
        Key numbers for ``summary.json``; each stage adds a section under its own name.
    seed : int
        One seed for everything.
    device : str
        ``"auto"``, ``"cpu"`` or a torch device string.
    pretrained : str or None
        ``"paper"`` to use the published networks instead of training.
    progress : bool
        Show progress bars.
    """

    workdir: Path
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    pretrained: str | None = None
    progress: bool = True
    #: Folder of the input file, where saved results keep their ``models/`` (``--stages interpret``
    #: on a ``results.nc`` finds its networks there); None for in-memory or synthetic data.
    input_dir: Path | None = None
    #: Chunked runs (:mod:`switchscope.chunked`): writes a Dataset of lazy results chunk by chunk
    #: into the run's store and returns them re-opened lazily from it; None computes in memory.
    persist: Callable[[Any], Any] | None = None

    def models_dirs(self) -> list[Path]:
        """Where saved networks are looked for: the run's ``models/``, then the input's."""
        dirs = [Path(self.workdir) / "models"]
        if self.input_dir is not None:
            dirs.append(Path(self.input_dir) / "models")
        return dirs

    @property
    def figures(self) -> Path:
        p = self.workdir / "report" / "figures"
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def movies(self) -> Path:
        p = self.workdir / "report" / "movies"
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def models(self) -> Path:
        p = self.workdir / "models"
        p.mkdir(parents=True, exist_ok=True)
        return p
