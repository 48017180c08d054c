"""Mapping the files' weight arrays onto the layers, by layer and weight name."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import torch
from torch import nn

from ..._errors import ConfigError, FormatError
from ._hdf5 import DTypeLike, _all_datasets, _text
from ._layers import _BatchNormLayer, _DenseLayer, _DropoutLayer, _LSTMLayer, _RepeatLayer

# ---------------------------------------------------------------------------------------------
# Weight mapping
# ---------------------------------------------------------------------------------------------

def _fmt_shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


class _WeightReader:
    """Reads each weight array of a Keras file by layer name, recording what was consumed."""

    def __init__(self, root: h5py.Group, path: Path) -> None:
        self.root = root
        self.path = path
        self.layer_names = [_text(n) for n in root.attrs["layer_names"]]
        self.consumed: list[str] = []

    def layer(self, name: str) -> dict[str, h5py.Dataset]:
        """``{weight name: dataset}`` of a layer (empty for layers without weights)."""
        if name not in self.layer_names:
            raise FormatError(
                f"the weights file {self.path.name} has no layer {name!r} that the architecture needs "
                f"(it has: {', '.join(self.layer_names)}); pass the weights and architecture of the same model"
            )
        group = self.root[name] if name in self.root else None
        names = [_text(w) for w in group.attrs.get("weight_names", [])] if group is not None else []
        return {w: group[w] for w in names}

    def read(self, layer: str, label: str, dset: h5py.Dataset, expected: tuple[int, ...]) -> np.ndarray:
        if tuple(dset.shape) != tuple(expected):
            raise FormatError(
                f"layer {layer!r} weight {label} has shape {_fmt_shape(dset.shape)} in {self.path.name} but the "
                f"architecture needs {_fmt_shape(expected)}; the weights belong to another architecture, "
                "pass the matching architecture= file"
            )
        self.consumed.append(dset.name)
        return np.asarray(dset[()])

    def check_all_consumed(self) -> None:
        counts = Counter(self.consumed)
        twice = [n for n, c in counts.items() if c > 1]
        if twice:  # would be a bug in the mapping, not a user error
            raise RuntimeError(f"weight arrays read more than once: {twice}")
        unused = sorted(_all_datasets(self.root) - set(counts))
        if unused:
            raise FormatError(
                f"the weights file {self.path.name} holds {len(unused)} arrays the architecture does not use "
                f"(first: {unused[0]}); the weights belong to another architecture, pass the matching architecture="
            )


def _split_roles(layer: str, weights: dict[str, h5py.Dataset], allowed: set[str],
                 path: Path) -> dict[tuple[str, str], h5py.Dataset]:
    """``{(direction, role): dataset}``; direction is 'forward', 'backward' or ''."""
    out: dict[tuple[str, str], h5py.Dataset] = {}
    for wname, dset in weights.items():
        parts = wname.split("/")
        role = parts[-1].split(":")[0]
        direction = ""
        for part in parts[:-1]:
            if part.startswith("forward"):
                direction = "forward"
            elif part.startswith("backward"):
                direction = "backward"
        if role not in allowed:
            raise FormatError(
                f"layer {layer!r} in {path.name} has a weight {wname!r} the architecture does not have; "
                "the weights belong to another architecture, pass the matching architecture="
            )
        out[(direction, role)] = dset
    return out


def _need(found: dict, key: tuple[str, str], layer: str, path: Path) -> h5py.Dataset:
    if key not in found:
        label = " ".join(k for k in key if k)
        raise FormatError(
            f"layer {layer!r} in {path.name} lacks its {label} weights; the file is incomplete or of "
            "another architecture"
        )
    return found[key]


def _build_layers(specs: list[dict], reader: _WeightReader, n_features: int,
                  dtype: torch.dtype) -> tuple[list[nn.Module], int]:
    """Modules for ``specs`` filled from ``reader``; returns them and the output feature size."""
    layers: list[nn.Module] = []
    dim = n_features
    path = reader.path
    for spec in specs:
        name = spec["name"]
        kind = spec["type"]
        weights = reader.layer(name)
        if kind == "lstm":
            u = spec["units"]
            allowed = {"kernel", "recurrent_kernel"} | ({"bias"} if spec["use_bias"] else set())
            found = _split_roles(name, weights, allowed, path)
            dirs = ("forward", "backward") if spec["bidirectional"] else ("",)
            shapes = {"kernel": (dim, 4 * u), "recurrent_kernel": (u, 4 * u), "bias": (4 * u,)}
            arrays: dict[str, list[np.ndarray]] = {"kernel": [], "recurrent_kernel": [], "bias": []}
            for d in dirs:
                for role in ("kernel", "recurrent_kernel", "bias"):
                    if role == "bias" and not spec["use_bias"]:
                        arrays[role].append(np.zeros(4 * u, dtype=np.float32))
                        continue
                    label = f"{d} {role}".strip()
                    arrays[role].append(reader.read(name, label, _need(found, (d, role), name, path),
                                                    shapes[role]))
            layers.append(_LSTMLayer(spec, np.stack(arrays["kernel"]), np.stack(arrays["recurrent_kernel"]),
                                     np.stack(arrays["bias"]), dtype))
            if spec["bidirectional"] and spec["merge_mode"] == "concat":
                dim = 2 * u
            else:
                dim = u
        elif kind == "batchnorm":
            roles = ["moving_mean", "moving_variance"]
            roles += ["gamma"] if spec["scale"] else []
            roles += ["beta"] if spec["center"] else []
            found = _split_roles(name, weights, set(roles), path)
            arrays_bn = {r: reader.read(name, r, _need(found, ("", r), name, path), (dim,)) for r in roles}
            layers.append(_BatchNormLayer(spec, arrays_bn, dtype))
        elif kind == "dense":
            roles = ["kernel"] + (["bias"] if spec["use_bias"] else [])
            found = _split_roles(name, weights, set(roles), path)
            shapes = {"kernel": (dim, spec["units"]), "bias": (spec["units"],)}
            arrays_d = {r: reader.read(name, r, _need(found, ("", r), name, path), shapes[r]) for r in roles}
            layers.append(_DenseLayer(spec, arrays_d, dtype))
            dim = spec["units"]
        else:
            if weights:
                raise FormatError(
                    f"layer {name!r} in {path.name} holds weights but is a {kind} layer in the architecture; "
                    "the weights belong to another architecture"
                )
            layers.append(_RepeatLayer(spec) if kind == "repeat" else _DropoutLayer(spec))
    return layers, dim


def _resolve_dtype(dtype: DTypeLike) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in (torch.float32, torch.float64):
        return dtype
    if dtype in ("float32", "float64"):
        return getattr(torch, dtype)
    raise ConfigError(f"dtype must be 'float32' or 'float64', got {dtype!r}")


def _epoch_from_name(path: Path) -> int | None:
    match = re.search(r"\.(\d+)\.hdf5?$", path.name)
    return int(match.group(1)) if match else None
