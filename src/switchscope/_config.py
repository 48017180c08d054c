"""Stage configuration: one keyword-only dataclass per stage, validated on construction.

A stage's dataclass subclasses :class:`StageConfig` and registers under a section name, which is
also its table in a TOML file::

    [clean]
    savgol_window = 9

    [loops]
    model = "bglib9"

Presets are named dictionaries of field values (``"paper"`` carries the paper's constants).
All checks raise :class:`~switchscope.ConfigError` with one message shape:
``<Owner>.<field> must be <allowed>, got <value>``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import tomllib
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from ._errors import ConfigError
from ._text import printable

T = TypeVar("T", bound="StageConfig")

STAGE_CONFIGS: dict[str, type[StageConfig]] = {}


def register(section: str):
    """Class decorator: register a :class:`StageConfig` subclass under a TOML section name."""

    def deco(cls: type[T]) -> type[T]:
        cls.section = section
        STAGE_CONFIGS[section] = cls
        return cls

    return deco


@dataclasses.dataclass(frozen=True, kw_only=True)
class StageConfig:
    """Base of every stage configuration."""

    section: ClassVar[str] = ""
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:  # overridden by stages
        """Check every field; raise :class:`ConfigError` on the first bad one."""

    # -- checks ---------------------------------------------------------------------------------
    def _fail(self, name: str, allowed: str, value: Any) -> None:
        owner = f"[{self.section}] " if self.section else f"{type(self).__name__}."
        raise ConfigError(f"{owner}{name} must be {allowed}, got {printable(repr(value), 80)}")

    def check_number(self, name: str, *, lo: float | None = None, hi: float | None = None,
                     integer: bool = False, odd: bool = False, lo_open: bool = False,
                     optional: bool = False) -> None:
        value = getattr(self, name)
        if value is None and optional:
            return
        kind = "an odd integer" if odd else ("an integer" if integer else "a number")
        bounds = []
        if lo is not None:
            bounds.append(f"{'>' if lo_open else '>='} {lo}")
        if hi is not None:
            bounds.append(f"<= {hi}")
        allowed = kind + (" " + " and ".join(bounds) if bounds else "")
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            self._fail(name, allowed, value)
        if integer and not float(value).is_integer():
            self._fail(name, allowed, value)
        if not math.isfinite(value):
            self._fail(name, allowed, value)
        if odd and int(value) % 2 == 0:
            self._fail(name, allowed, value)
        if lo is not None and (value <= lo if lo_open else value < lo):
            self._fail(name, allowed, value)
        if hi is not None and value > hi:
            self._fail(name, allowed, value)

    def check_choice(self, name: str, choices: tuple | list) -> None:
        value = getattr(self, name)
        if value not in choices:
            self._fail(name, "one of " + ", ".join(repr(c) for c in choices), value)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls: type[T], values: dict[str, Any] | None = None) -> T:
        """Build from a mapping; a ``preset`` key starts from that preset."""
        values = dict(values or {})
        base: dict[str, Any] = {}
        preset = values.pop("preset", None)
        if preset is not None:
            base = dict(cls._preset_values(preset))
        names = cls.field_names()
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ConfigError(
                f"unknown option(s) {', '.join(unknown)} for [{cls.section or cls.__name__}]; "
                f"valid options are: {', '.join(names)}"
            )
        base.update(values)
        try:
            return cls(**base)
        except TypeError as exc:  # wrong keyword set
            raise ConfigError(f"[{cls.section}]: {exc}") from None

    @classmethod
    def _preset_values(cls, name: str) -> dict[str, Any]:
        if name not in cls.presets:
            raise ConfigError(
                f"unknown preset {name!r} for [{cls.section or cls.__name__}]; "
                f"known presets: {', '.join(sorted(cls.presets)) or 'none'}"
            )
        return cls.presets[name]

    @classmethod
    def preset(cls: type[T], name: str, **overrides: Any) -> T:
        """The named preset, with ``overrides`` applied."""
        return cls.from_dict({"preset": name, **overrides})

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: str | Path) -> dict[str, StageConfig]:
    """Read a TOML file into ``{section: StageConfig}`` for every section it names."""
    return configs_from_mapping(read_config_file(path))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw tables of a TOML config file."""
    path = Path(path)
    where = printable(repr(str(path)))
    if not path.exists():
        raise ConfigError(f"config file {where} does not exist; give the path of a TOML file")
    if not path.is_file():
        raise ConfigError(f"config file {where} is not a regular file; give the path of a TOML file")
    if path.stat().st_size > 1_000_000:
        raise ConfigError(f"config file {where} is {path.stat().st_size} bytes, far more than a TOML file of "
                          "options; give the right file")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML ({exc}); fix its syntax") from None
    return raw


def configs_from_mapping(raw: dict[str, Any]) -> dict[str, StageConfig]:
    out: dict[str, StageConfig] = {}
    for section, values in raw.items():
        if section not in STAGE_CONFIGS:
            raise ConfigError(
                f"unknown config section [{section}]; known sections: {', '.join(sorted(STAGE_CONFIGS))}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"config section [{section}] must be a table of options")
        out[section] = STAGE_CONFIGS[section].from_dict(values)
    return out
