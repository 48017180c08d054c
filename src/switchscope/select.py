"""Which part of a measurement the stages analyse: one field, one cycle (or their mean), one group.

Files from the pycroscopy stack hold loops measured with the DC bias on (``in-field``) and off
(``out-of-field``), and often several cycles of the waveform. The stages analyse one curve per
pixel, so a run first reduces those dims with a *selection*, given as ``--select KEY=VALUE``
(repeatable) or ``[data] select = {field = "out-of-field", cycle = 2}`` in TOML:

``field``
    ``out-of-field`` (default where the file has both: the remanent response, without the
    electrostatic contribution of the applied bias) or ``in-field``.
``cycle``
    A cycle number from 1, or ``mean`` (default: the average over cycles, which lowers the noise;
    select single cycles to see wake-up or fatigue from cycle to cycle).
``group``
    For USID files: the measurement or result group to read (``Measurement_001``,
    ``Raw_Data-SHO_Fit_000``, ``Fit-Loop_Fit_001``, ``Raw_Data``); default the newest.

The selection made is recorded in ``ds.attrs["selection"]`` (and so in ``summary.json`` and the
report).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import xarray as xr

from ._errors import ConfigError, DataError
from ._text import printable

KEYS = ("field", "cycle", "group")
FIELDS = ("in-field", "out-of-field")
DEFAULT_FIELD = "out-of-field"
DEFAULT_CYCLE = "mean"


def parse_select(spec: Any) -> dict[str, Any]:
    """``"field=out-of-field,cycle=2"``, a list of such texts, or a mapping -> ``{key: value}``.

    Values are checked here (before any work): ``field`` is one of :data:`FIELDS` (``in`` and
    ``out`` accepted), ``cycle`` a positive integer or ``mean``, ``group`` a group name.
    """
    if spec is None:
        return {}
    items: list[tuple[str, Any]] = []
    if isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        texts = [spec] if isinstance(spec, str) else list(spec)
        for text in texts:
            if not isinstance(text, str):
                raise ConfigError(f"select must be KEY=VALUE text, got {printable(repr(text), 60)}")
            for part in filter(None, (p.strip() for p in text.split(","))):
                if "=" not in part:
                    raise ConfigError(f"select {printable(repr(part), 60)} is not KEY=VALUE; e.g. "
                                      "--select field=out-of-field --select cycle=2")
                key, value = (s.strip() for s in part.split("=", 1))
                items.append((key, value))
    out: dict[str, Any] = {}
    for key, value in items:
        if key not in KEYS:
            raise ConfigError(f"select key {printable(repr(key), 40)} is unknown; keys are: {', '.join(KEYS)}")
        if key in out:
            raise ConfigError(f"select names {key} twice; give it once")
        out[key] = _check_value(key, value)
    return out


def _check_value(key: str, value: Any) -> Any:
    if key == "field":
        text = re.sub(r"[\s_]+", "-", str(value).strip().lower())
        text = {"in": "in-field", "out": "out-of-field", "on": "in-field", "off": "out-of-field"}.get(text, text)
        if text not in FIELDS:
            raise ConfigError(f"select field must be in-field or out-of-field, got {printable(repr(value), 40)}")
        return text
    if key == "cycle":
        if isinstance(value, str) and value.strip().lower() == "mean":
            return "mean"
        try:
            n = None if isinstance(value, bool) else int(str(value).strip())
        except ValueError:
            n = None
        if n is None or n < 1 or str(n) != str(value).strip():
            raise ConfigError(f"select cycle must be a cycle number from 1 or 'mean', got {printable(repr(value), 40)}")
        return n
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise ConfigError(f"select group must be a group name such as Measurement_000, got {printable(repr(value), 40)}")
    return value.strip()


@dataclass(frozen=True)
class Choice:
    """What a selection takes from data with these fields and cycles (see :func:`resolve`)."""

    field: str | None  # the field kept (None: no field dim)
    cycle: int | str | None  # a cycle number from 1, "mean", or None (no cycle dim)
    text: list[str]  # the parts of ``attrs["selection"]``


def resolve(select: Mapping[str, Any], fields: list[str] | None, n_cycles: int | None, *,
            single_field: str | None = None, source: str = "the data") -> Choice:
    """Decide what ``select`` takes from data holding ``fields`` (None: no field dim; the one
    field measured is ``single_field``) and ``n_cycles`` (None: no cycle dim), with the defaults
    where it is silent; a selection naming a field or cycle the data lacks is a :class:`DataError`."""
    src = printable(source, 80)
    made: list[str] = []
    field = cycle = None
    if fields is not None:
        field = select.get("field") or (DEFAULT_FIELD if DEFAULT_FIELD in fields else fields[0])
        if field not in fields:
            raise DataError(f"select field={field} but {src} holds only {', '.join(fields)}; select one of those")
        made.append(f"field={field}" + ("" if "field" in select else " (default)"))
    elif "field" in select:
        if single_field is None:
            raise DataError(f"select field={select['field']} but {src} has no field dimension; drop the selection")
        if single_field != select["field"]:
            raise DataError(f"select field={select['field']} but {src} was measured {single_field} only; "
                            "drop the selection")
    if n_cycles is not None:
        cycle = select.get("cycle", DEFAULT_CYCLE)
        if cycle != "mean" and cycle > n_cycles:
            raise DataError(f"select cycle={cycle} but {src} has {n_cycles} cycle(s); select 1..{n_cycles} or mean")
        made.append(f"cycle={cycle}" + ("" if "cycle" in select else " (default)") + f" of {n_cycles}")
    elif select.get("cycle") not in (None, "mean", 1):
        raise DataError(f"select cycle={select['cycle']} but {src} has one cycle; drop the selection")
    if "group" in select:
        made.insert(0, f"group={select['group']}")
    return Choice(field=field, cycle=cycle, text=made)


def apply_selection(ds: xr.Dataset, select: Any = None) -> xr.Dataset:
    """Reduce the ``field`` and ``cycle`` dims of ``ds`` as ``select`` says (defaults where silent).

    ``select`` is anything :func:`parse_select` takes (``"cycle=2"``, a list, a mapping), checked
    by it. Returns the Dataset with dims ``(row, col, step[, freq])`` and ``attrs["selection"]``
    saying what was taken; a selection that names a field or cycle the data lacks is a
    :class:`DataError` listing what it has. Data a reader has already reduced (``load(...,
    select=...)``) keeps the selection it records.
    """
    select = parse_select(select)
    ds = split_step_cycles(ds.copy())  # shallow copy: the caller's attrs stay as they were
    fields = [str(v) for v in ds["field"].values] if "field" in ds.dims else None
    n_cycles = int(ds.sizes["cycle"]) if "cycle" in ds.dims else None
    if fields is None and n_cycles is None and ds.attrs.get("selection"):
        return ds  # selected while reading
    choice = resolve(select, fields, n_cycles, single_field=ds.attrs.get("field"),
                     source=str(ds.attrs.get("source", "the data")))
    if choice.field is not None:
        ds = ds.sel(field=choice.field, drop=True)
        ds.attrs["fields_available"] = ", ".join(fields or [])
    if choice.cycle == "mean":
        ds = _mean_cycles(ds)
    elif choice.cycle is not None:
        ds = ds.isel(cycle=int(choice.cycle) - 1, drop=True)
    ds.attrs["selection"] = ", ".join(choice.text) if choice.text else "all (one field, one cycle)"
    return ds


def split_step_cycles(ds: xr.Dataset) -> xr.Dataset:
    """A step axis that holds several whole cycles back to back (one voltage array of e.g. 3 x 64
    steps) as a ``cycle`` dim of its own, so that cycles are selected like those of USID files."""
    from .waveform import describe_waveform, split_cycles

    if "cycle" in ds.dims or "voltage" not in ds.coords or "step" not in ds.dims:
        return ds
    v = np.asarray(ds["voltage"].values, dtype=float)
    try:
        w = describe_waveform(v)
    except DataError:
        return ds  # the preflight says what is wrong with this voltage
    if not w.is_bipolar or w.n_cycles < 2:
        return ds
    index = split_cycles(v)
    n_cycles, per = index.shape
    out = ds.drop_vars(["voltage", "step"]).isel(step=xr.DataArray(index, dims=("cycle", "step")))
    out = out.assign_coords(step=np.arange(per), cycle=np.arange(1, n_cycles + 1),
                            voltage=("step", v[index[0]], dict(ds["voltage"].attrs)))
    for name, da in out.data_vars.items():  # (row, col, cycle, step[, freq]), as files with cycles have them
        if "cycle" in da.dims:
            order = [d for d in ("row", "col", "cycle", "field", "step") if d in da.dims]
            out[name] = da.transpose(*order, ...)
    return out


def _mean_cycles(ds: xr.Dataset) -> xr.Dataset:
    """Each variable with a ``cycle`` dim averaged over it (NaN in one cycle: the others' mean)."""
    out = ds.copy()
    for name, da in ds.data_vars.items():
        if "cycle" in da.dims:
            out[name] = da.mean("cycle", skipna=True, keep_attrs=True)
    return out.drop_vars("cycle")


def describe_selection(ds: xr.Dataset) -> str:
    """What a run would select from ``ds`` by default, in one line."""
    parts = []
    if "field" in ds.dims:
        have = [str(v) for v in ds["field"].values]
        parts.append(f"fields {', '.join(have)} -> {DEFAULT_FIELD if DEFAULT_FIELD in have else have[0]}")
    elif ds.attrs.get("field"):
        parts.append(f"field {ds.attrs['field']} only")
    if "cycle" in ds.dims:
        parts.append(f"{ds.sizes['cycle']} cycles -> {DEFAULT_CYCLE}")
    return "; ".join(parts) or "one field, one cycle: nothing to select"


__all__ = ["Choice", "resolve", "DEFAULT_CYCLE", "DEFAULT_FIELD", "FIELDS", "KEYS", "apply_selection", "describe_selection",
           "parse_select"]
