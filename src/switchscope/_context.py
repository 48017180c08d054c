"""What a pipeline stage gets besides the Dataset and its config."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any


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
    #: In-memory objects handed from one stage to a later one (e.g. ``decoder_<channel>``, a
    #: callable ``(n, n_neurons) -> (n, n_steps)`` in the units of ``<channel>_clean``).
    artifacts: dict[str, Any] = dataclasses.field(default_factory=dict)

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
