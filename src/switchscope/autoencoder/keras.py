"""The paper's published Keras 2.1.5 networks as exact PyTorch inference twins.

Agar et al. (Nat. Commun. 2019) published their trained autoencoders as Keras HDF5 files:

* ``<channel>_autoencoder_start_seed_042.h5``: a full model save whose ``model_config`` attribute
  holds the architecture (its weights are the untrained initial ones);
* ``<channel>_autoencoder_weights.<epoch>.hdf5``: the trained weights of the full autoencoder;
* ``<channel>_decoder_weights.<epoch>.hdf5``: the refined decoder (BatchNormalization(16),
  RepeatVector(96), 4 x Bidirectional LSTM(64), TimeDistributed Dense(1)), retrained without
  dropout on fixed embeddings. Its file holds no architecture; it is inferred from the weights.

The arrays are read with h5py only (no TensorFlow, no pickle) and mapped by layer name from the
``layer_names`` / ``weight_names`` attributes. Inference reproduces Keras exactly: LSTM gate order
``[i, f, c, o]``, ``hard_sigmoid`` recurrent activation, ``Bidirectional`` concatenation of the
forward and (re-reversed) backward outputs, BatchNormalization with its stored moving statistics
and the epsilon of the saved config (1e-3), no dropout.

Speed: the hard_sigmoid recurrence is a Python loop over the 96 steps, run for all pixels of a
batch and both directions at once (``batch_size`` pixels per pass, 256 by default, which keeps each
step's arrays in cache). All 3600 loops of the paper's scan pass in tens of CPU seconds; on a
busy shared CPU ``torch.set_num_threads(1)`` is much faster than more threads.

Examples
--------
>>> net = load_pretrained("resonance")                       # doctest: +SKIP
>>> Z = net.transform(X)           # (n_pixels, 16) embeddings   # doctest: +SKIP
>>> X_hat = net.reconstruct(X)     # through the refined decoder  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Literal, Sequence, cast

import h5py
import numpy as np
import torch
from torch import nn

from .._errors import ConfigError, DataError, FormatError
# the paper's batch-norm epsilon and sequence length (RepeatVector(96)), used when a file holds no config
from ..paper import KERAS_BN_EPSILON, PAPER_STEPS
from ._hardlstm import activation, lstm_stack, prepare_weights

__all__ = [
    "KerasAutoencoder",
    "KerasDecoder",
    "KerasNetwork",
    "PretrainedNetwork",
    "load_keras",
    "load_keras_decoder",
    "load_pretrained",
    "parse_keras_architecture",
]

PretrainedChannel = Literal["piezoresponse", "resonance"]
DecoderChoice = Literal["refined", "autoencoder"]
DTypeLike = Literal["float32", "float64"] | torch.dtype

#: Environment variable naming the directory of the published networks.
PRETRAINED_ENV = "SWITCHSCOPE_PRETRAINED_DIR"


# ---------------------------------------------------------------------------------------------
# HDF5 access
# ---------------------------------------------------------------------------------------------

def _open_h5(path: str | os.PathLike) -> h5py.File:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Keras file {path} does not exist; check the path (or pass --pretrained-dir)")
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise FormatError(
            f"cannot read {path} as HDF5 ({reason}); the file is corrupt or not a Keras file, "
            "download it again"
        ) from None


def _text(value: Any) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _weights_root(f: h5py.File, path: Path) -> h5py.Group:
    """The group holding ``layer_names`` (top level of save_weights, ``model_weights`` of save)."""
    if "layer_names" in f.attrs:
        return f
    if "model_weights" in f and "layer_names" in f["model_weights"].attrs:
        return f["model_weights"]
    raise FormatError(
        f"{path} is HDF5 but has no Keras 'layer_names' attribute; give a Keras weights file "
        "(*_weights.*.hdf5) or a full Keras model save"
    )


def _all_datasets(group: h5py.Group) -> set[str]:
    names: set[str] = set()

    def visit(_: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            names.add(obj.name)

    group.visititems(visit)
    return names


# ---------------------------------------------------------------------------------------------
# Architecture: a list of plain, JSON-serialisable layer specs
# ---------------------------------------------------------------------------------------------

def _lstm_spec(cfg: dict, name: str) -> dict:
    if cfg.get("go_backwards", False) or cfg.get("stateful", False):
        raise FormatError(f"layer {name!r}: go_backwards/stateful LSTMs are not supported by the twin")
    return {
        "units": int(cfg["units"]),
        "return_sequences": bool(cfg.get("return_sequences", False)),
        "activation": cfg.get("activation", "tanh"),
        "recurrent_activation": cfg.get("recurrent_activation", "hard_sigmoid"),
        "use_bias": bool(cfg.get("use_bias", True)),
        "dropout": float(cfg.get("dropout", 0.0)),
        "recurrent_dropout": float(cfg.get("recurrent_dropout", 0.0)),
    }


def _regularizer(reg: dict | None) -> dict:
    if not reg:
        return {"l1": 0.0, "l2": 0.0}
    cfg = reg.get("config", {})
    return {"l1": float(cfg.get("l1", 0.0)), "l2": float(cfg.get("l2", 0.0))}


def _layer_spec(layer: dict) -> dict:
    kind = layer.get("class_name")
    cfg = layer.get("config", {})
    name = cfg.get("name", "?")
    if kind == "Bidirectional":
        inner = cfg.get("layer", {})
        if inner.get("class_name") != "LSTM":
            raise FormatError(f"layer {name!r}: Bidirectional({inner.get('class_name')}) is not supported; "
                              "only Bidirectional(LSTM)")
        spec = {"type": "lstm", "name": name, "bidirectional": True,
                "merge_mode": cfg.get("merge_mode", "concat"), **_lstm_spec(inner["config"], name)}
        if spec["merge_mode"] not in ("concat", "sum", "mul", "ave"):
            raise FormatError(f"layer {name!r}: merge_mode {spec['merge_mode']!r} is not supported")
    elif kind == "LSTM":
        spec = {"type": "lstm", "name": name, "bidirectional": False, "merge_mode": None,
                **_lstm_spec(cfg, name)}
    elif kind == "Dropout":
        spec = {"type": "dropout", "name": name, "rate": float(cfg.get("rate", 0.0))}
    elif kind == "BatchNormalization":
        axis = cfg.get("axis", -1)
        if axis not in (-1, [-1]):
            raise FormatError(f"layer {name!r}: BatchNormalization over axis {axis} is not supported")
        spec = {"type": "batchnorm", "name": name, "epsilon": float(cfg.get("epsilon", KERAS_BN_EPSILON)),
                "center": bool(cfg.get("center", True)), "scale": bool(cfg.get("scale", True))}
    elif kind == "Dense":
        spec = {"type": "dense", "name": name, "units": int(cfg["units"]),
                "activation": cfg.get("activation", "linear"), "use_bias": bool(cfg.get("use_bias", True)),
                "time_distributed": False,
                "activity_regularizer": _regularizer(cfg.get("activity_regularizer"))}
    elif kind == "TimeDistributed":
        inner = cfg.get("layer", {})
        if inner.get("class_name") != "Dense":
            raise FormatError(f"layer {name!r}: TimeDistributed({inner.get('class_name')}) is not supported")
        icfg = inner["config"]
        spec = {"type": "dense", "name": name, "units": int(icfg["units"]),
                "activation": icfg.get("activation", "linear"), "use_bias": bool(icfg.get("use_bias", True)),
                "time_distributed": True,
                "activity_regularizer": _regularizer(icfg.get("activity_regularizer"))}
    elif kind == "RepeatVector":
        spec = {"type": "repeat", "name": name, "n": int(cfg["n"])}
    else:
        raise FormatError(
            f"layer {name!r} of type {kind!r} is not supported by the Keras twin; supported: Bidirectional(LSTM), "
            "LSTM, Dropout, BatchNormalization, Dense, TimeDistributed(Dense), RepeatVector"
        )
    if "batch_input_shape" in cfg:
        spec["batch_input_shape"] = list(cfg["batch_input_shape"])
    return spec


def parse_keras_architecture(model_config: str | dict) -> list[dict]:
    """Layer specs of a Keras ``Sequential`` model from its ``model_config`` JSON.

    Parameters
    ----------
    model_config : str or dict
        The ``model_config`` attribute of a Keras HDF5 model save (JSON text or parsed).

    Returns
    -------
    list of dict
        One JSON-serialisable dict per layer with ``type`` (``lstm``, ``dropout``, ``batchnorm``,
        ``dense``, ``repeat``), ``name`` and the options the twin needs (units, return_sequences,
        merge_mode, activations, epsilon, dropout rate, activity regularizer, RepeatVector n).
    """
    if isinstance(model_config, (str, bytes)):
        try:
            model_config = json.loads(model_config)
        except json.JSONDecodeError as exc:
            raise FormatError(f"the Keras model_config is not valid JSON ({exc.msg}); the file is corrupt") from None
    if not isinstance(model_config, dict) or model_config.get("class_name") != "Sequential":
        kind = model_config.get("class_name") if isinstance(model_config, dict) else type(model_config).__name__
        raise FormatError(f"the Keras model is a {kind!r}, the twin reads Sequential models only")
    layers = model_config.get("config")
    if isinstance(layers, dict):  # Keras >= 2.2 wraps the list as {"name": ..., "layers": [...]}
        layers = layers.get("layers")
    if not isinstance(layers, list) or not layers:
        raise FormatError("the Keras model_config lists no layers; the file is corrupt")
    return [_layer_spec(layer) for layer in layers]


def _read_architecture(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    with _open_h5(path) as f:
        if "model_config" not in f.attrs:
            raise FormatError(
                f"{path} has no 'model_config' attribute; give a full Keras model save "
                "(e.g. *_start_seed_042.h5) as architecture="
            )
        return parse_keras_architecture(_text(f.attrs["model_config"]))


def _infer_architecture(root: h5py.Group, path: Path, n_steps: int) -> list[dict]:
    """Layer specs from layer and weight names and shapes alone (for files with no config).

    Assumes the paper's choices where the weights are silent: LSTM activation tanh with
    hard_sigmoid gates, concat merge, BatchNormalization epsilon 1e-3, ReLU for a plain Dense
    layer, a linear TimeDistributed Dense, and RepeatVector(``n_steps``).
    """
    specs: list[dict] = []
    for raw in root.attrs["layer_names"]:
        name = _text(raw)
        base = re.sub(r"_\d+$", "", name)
        weight_names = [_text(w) for w in root[name].attrs.get("weight_names", [])] if name in root else []
        roles = {w.rsplit("/", 1)[-1].split(":")[0] for w in weight_names}
        if base == "dropout":
            specs.append({"type": "dropout", "name": name, "rate": 0.0})
        elif base == "repeat_vector":
            specs.append({"type": "repeat", "name": name, "n": int(n_steps)})
        elif "recurrent_kernel" in roles:
            bidir = any("backward" in w for w in weight_names)
            rec = root[name][next(w for w in weight_names if w.endswith("recurrent_kernel:0"))]
            specs.append({"type": "lstm", "name": name, "bidirectional": bidir,
                          "merge_mode": "concat" if bidir else None, "units": int(rec.shape[0]),
                          "return_sequences": True, "activation": "tanh",
                          "recurrent_activation": "hard_sigmoid", "use_bias": "bias" in roles,
                          "dropout": 0.0, "recurrent_dropout": 0.0})
        elif "moving_variance" in roles:
            specs.append({"type": "batchnorm", "name": name, "epsilon": KERAS_BN_EPSILON,
                          "center": "beta" in roles, "scale": "gamma" in roles})
        elif "kernel" in roles:
            kernel = root[name][next(w for w in weight_names if w.endswith("kernel:0"))]
            td = base == "time_distributed"
            specs.append({"type": "dense", "name": name, "units": int(kernel.shape[-1]),
                          "activation": "linear" if td else "relu", "use_bias": "bias" in roles,
                          "time_distributed": td, "activity_regularizer": {"l1": 0.0, "l2": 0.0}})
        else:
            raise FormatError(
                f"cannot infer the type of layer {name!r} in {path} from its weights; "
                "pass architecture= (a Keras model save with model_config)"
            )
    # An LSTM feeding a per-pixel Dense layer returns its last state only.
    for k, spec in enumerate(specs):
        if spec["type"] == "lstm":
            following = [s for s in specs[k + 1:] if s["type"] in ("lstm", "dense", "repeat")]
            if following and following[0]["type"] == "dense" and not following[0]["time_distributed"]:
                spec["return_sequences"] = False
    return specs


# ---------------------------------------------------------------------------------------------
# Layers (inference only)
# ---------------------------------------------------------------------------------------------

def _frozen(array: np.ndarray, dtype: torch.dtype) -> nn.Parameter:
    return nn.Parameter(torch.as_tensor(np.asarray(array), dtype=dtype), requires_grad=False)


class _LSTMLayer(nn.Module):
    """A Keras (Bidirectional) LSTM; directions are stacked on a leading axis."""

    def __init__(self, spec: dict, kernel: np.ndarray, recurrent: np.ndarray, bias: np.ndarray,
                 dtype: torch.dtype) -> None:
        super().__init__()
        self.spec = spec
        self.kernel = _frozen(kernel, dtype)            # (d, n_in, 4 units)
        self.recurrent_kernel = _frozen(recurrent, dtype)  # (d, units, 4 units)
        self.bias = _frozen(bias, dtype)                # (d, 4 units)
        self._act = activation(spec["activation"])
        rec = spec["recurrent_activation"]
        self._rec_act = None if rec == "hard_sigmoid" else activation(rec)
        # Rearranged copies for the fast loop; not saved, but moved by .to() with the weights.
        W, U, b = prepare_weights(self.kernel.detach(), self.recurrent_kernel.detach(), self.bias.detach(), rec)
        self.register_buffer("_W", W, persistent=False)
        self.register_buffer("_U", U, persistent=False)
        self.register_buffer("_b", b, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self.spec["return_sequences"]
        if self.spec["bidirectional"]:
            xs = torch.stack([x, torch.flip(x, dims=[1])])
        else:
            xs = x.unsqueeze(0)
        out = lstm_stack(xs, self._W, self._U, self._b, act=self._act,
                         recurrent_act=self._rec_act, return_sequences=seq)
        if not self.spec["bidirectional"]:
            return out[0]
        fwd, bwd = out[0], out[1]
        if seq:
            # Keras re-reverses the backward outputs so that step t lines up with step t.
            bwd = torch.flip(bwd, dims=[1])
        mode = self.spec["merge_mode"]
        if mode == "concat":
            return torch.cat([fwd, bwd], dim=-1)
        if mode == "sum":
            return fwd + bwd
        if mode == "mul":
            return fwd * bwd
        return 0.5 * (fwd + bwd)

    def extra_repr(self) -> str:
        s = self.spec
        return (f"{s['name']}: {'bidirectional ' if s['bidirectional'] else ''}units={s['units']}, "
                f"return_sequences={s['return_sequences']}, recurrent_activation={s['recurrent_activation']}")


class _BatchNormLayer(nn.Module):
    def __init__(self, spec: dict, weights: dict[str, np.ndarray], dtype: torch.dtype) -> None:
        super().__init__()
        self.spec = spec
        self.moving_mean = _frozen(weights["moving_mean"], dtype)
        self.moving_variance = _frozen(weights["moving_variance"], dtype)
        self.gamma = _frozen(weights["gamma"], dtype) if "gamma" in weights else None
        self.beta = _frozen(weights["beta"], dtype) if "beta" in weights else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The moving variances of the paper's last batch norm are ~1e-6, so epsilon dominates:
        # it must be exactly the configured one.
        y = (x - self.moving_mean) * torch.rsqrt(self.moving_variance + self.spec["epsilon"])
        if self.gamma is not None:
            y = y * self.gamma
        if self.beta is not None:
            y = y + self.beta
        return y

    def extra_repr(self) -> str:
        return f"{self.spec['name']}: epsilon={self.spec['epsilon']}"


class _DenseLayer(nn.Module):
    def __init__(self, spec: dict, weights: dict[str, np.ndarray], dtype: torch.dtype) -> None:
        super().__init__()
        self.spec = spec
        self.kernel = _frozen(weights["kernel"], dtype)
        self.bias = _frozen(weights["bias"], dtype) if "bias" in weights else None
        self._act = activation(spec["activation"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(x, self.kernel)
        if self.bias is not None:
            y = y + self.bias
        return self._act(y)

    def extra_repr(self) -> str:
        s = self.spec
        return f"{s['name']}: units={s['units']}, activation={s['activation']}"


class _RepeatLayer(nn.Module):
    def __init__(self, spec: dict) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1).expand(-1, self.spec["n"], -1)

    def extra_repr(self) -> str:
        return f"{self.spec['name']}: n={self.spec['n']}"


class _DropoutLayer(nn.Module):
    """Identity: the twin is inference-only, so Keras dropout is off."""

    def __init__(self, spec: dict) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return f"{self.spec['name']}: rate={self.spec['rate']} (inactive at inference)"


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


# ---------------------------------------------------------------------------------------------
# Public models
# ---------------------------------------------------------------------------------------------

class KerasNetwork(nn.Module):
    """A Keras ``Sequential`` network rebuilt for inference (base of the twins).

    Attributes
    ----------
    architecture : list of dict
        The layer specs (see :func:`parse_keras_architecture`).
    weights_path : pathlib.Path
        The file the weights came from.
    epoch : int or None
        The checkpoint's epoch, from the file name (Keras ModelCheckpoint counts from 1).
    consumed_weights : tuple of str
        HDF5 paths of every weight array read, in reading order; each array of the file once.
    n_steps : int
        Sequence length the network takes or produces.
    """

    def __init__(self, layers: list[nn.Module], architecture: list[dict], weights_path: Path,
                 consumed: list[str], n_steps: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.architecture = architecture
        self.weights_path = weights_path
        self.epoch = _epoch_from_name(weights_path)
        self.consumed_weights = tuple(consumed)
        self.n_steps = int(n_steps)
        self.architecture_path: Path | None = None
        self.eval()

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def train(self, mode: bool = True) -> "KerasNetwork":
        # Inference twin: dropout and batch statistics never switch on.
        return super().train(False)

    def _run(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for layer in self.layers[start:stop]:
            x = layer(x)
        return x

    def _as_tensor(self, values: Any, what: str, width: int | None, steps: bool) -> torch.Tensor:
        """Validated input ``(n, steps, n_features)`` (``steps``) or ``(n, width)``."""
        if isinstance(values, torch.Tensor):
            values = values.detach().cpu().numpy()
        try:
            arr = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise DataError(f"{what} must be a numeric array, got {type(values).__name__}") from None
        if steps:
            n_feat = self.layers[0].kernel.shape[1] if isinstance(self.layers[0], _LSTMLayer) else 1
            if arr.ndim == 2 and n_feat == 1:
                arr = arr[:, :, None]
            if arr.ndim != 3 or arr.shape[2] != n_feat:
                raise DataError(
                    f"{what} must have shape (n_pixels, n_steps) or (n_pixels, n_steps, {n_feat}), got {arr.shape}"
                )
            if arr.shape[1] != self.n_steps:
                raise DataError(
                    f"{what} has {arr.shape[1]} steps but the network takes sequences of {self.n_steps} steps "
                    f"(RepeatVector({self.n_steps}) in its architecture); resample the loops to {self.n_steps} "
                    "steps or train a new network"
                )
        elif arr.ndim != 2 or arr.shape[1] != width:
            raise DataError(f"{what} must have shape (n_pixels, {width}), got {arr.shape}")
        if arr.shape[0] == 0:
            raise DataError(f"{what} holds no pixels; give at least one")
        bad = ~np.isfinite(arr)
        if bad.any():
            idx = np.argwhere(bad)[0]
            where = f"pixel {idx[0]}" + (f", step {idx[1]}" if steps else f", column {idx[1]}")
            raise DataError(
                f"{what} holds {int(bad.sum())} NaN/Inf values (first at {where}); clean the loops first "
                "(switchscope.preprocess.clean interpolates them) or drop those pixels"
            )
        return torch.as_tensor(arr, dtype=self.dtype, device=self.device)

    def _batched(self, x: torch.Tensor, start: int, stop: int, batch_size: int | None) -> np.ndarray:
        n = x.shape[0]
        size = n if batch_size is None else int(batch_size)
        if size < 1:
            raise ConfigError(f"batch_size must be a positive integer or None, got {batch_size!r}")
        with torch.inference_mode():
            parts = [self._run(x[i:i + size], start, stop) for i in range(0, n, size)]
        return torch.cat(parts).cpu().numpy()

    def count_weights(self) -> int:
        """Number of weight values (trainable and moving statistics), as Keras ``count_params``."""
        return sum(p.numel() for p in self.parameters())


class KerasAutoencoder(KerasNetwork):
    """Inference twin of a Keras autoencoder (encoder, dense embedding, decoder).

    Built by :func:`load_keras`. Always in eval mode: dropout is off, batch norms use their moving
    statistics, so every output is deterministic.

    Attributes
    ----------
    embedding_index : int
        Index in ``layers`` of the dense embedding layer (the one before the RepeatVector).
    n_embedding : int
        Number of embedding neurons (16 for the paper).
    l1_penalty : float
        The L1 activity penalty on the embedding in the Keras config (0 if none or inferred).
    """

    def __init__(self, layers: list[nn.Module], architecture: list[dict], weights_path: Path,
                 consumed: list[str], n_steps: int) -> None:
        super().__init__(layers, architecture, weights_path, consumed, n_steps)
        repeats = [k for k, s in enumerate(architecture) if s["type"] == "repeat"]
        dense = [k for k, s in enumerate(architecture[: repeats[0]]) if s["type"] == "dense"] if repeats else []
        if not dense:
            raise FormatError(
                f"the architecture of {weights_path.name} has no dense embedding layer before a RepeatVector; "
                "it is not an autoencoder (for a decoder alone use load_keras_decoder)"
            )
        self.embedding_index = dense[-1]
        emb = architecture[self.embedding_index]
        self.n_embedding = int(emb["units"])
        self.l1_penalty = float(emb["activity_regularizer"]["l1"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``x`` (n, steps, n_features) -> (n, steps, n_out), as tensors."""
        return self._run(x, 0, len(self.layers))

    def transform(self, X: Any, *, batch_size: int | None = 256) -> np.ndarray:
        """Embeddings: the dense ReLU layer's output (before the batch norm that follows it).

        Parameters
        ----------
        X : array of shape (n_pixels, n_steps) or (n_pixels, n_steps, 1)
            Loops normalized as for training (global mean 0, std 1).
        batch_size : int or None
            Pixels per forward pass (memory bound); None runs all at once.

        Returns
        -------
        ndarray of shape (n_pixels, n_embedding)
        """
        x = self._as_tensor(X, "X", None, steps=True)
        return self._batched(x, 0, self.embedding_index + 1, batch_size)

    def decode(self, Z: Any, *, batch_size: int | None = 256) -> np.ndarray:
        """Loops generated from embeddings by the autoencoder's own decoder.

        Parameters
        ----------
        Z : array of shape (n_pixels, n_embedding)

        Returns
        -------
        ndarray of shape (n_pixels, n_steps)
        """
        z = self._as_tensor(Z, "Z", self.n_embedding, steps=False)
        out = self._batched(z, self.embedding_index + 1, len(self.layers), batch_size)
        return out[..., 0] if out.shape[-1] == 1 else out

    def reconstruct(self, X: Any, *, batch_size: int | None = 256) -> np.ndarray:
        """``decode(transform(X))`` in one pass: (n_pixels, n_steps) -> (n_pixels, n_steps)."""
        x = self._as_tensor(X, "X", None, steps=True)
        out = self._batched(x, 0, len(self.layers), batch_size)
        return out[..., 0] if out.shape[-1] == 1 else out


class KerasDecoder(KerasNetwork):
    """Inference twin of a Keras decoder (embedding -> loop), e.g. the paper's refined decoder.

    Built by :func:`load_keras_decoder`.
    """

    @property
    def n_embedding(self) -> int:
        first = self.layers[0]
        if isinstance(first, _BatchNormLayer):
            return int(first.moving_mean.shape[0])
        if isinstance(first, _DenseLayer):
            return int(first.kernel.shape[0])
        return int(self.layers[1].kernel.shape[1])  # RepeatVector first: the LSTM's input size

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Loops (n, steps, n_out) from embeddings (n, n_embedding), as tensors."""
        return self._run(z, 0, len(self.layers))

    def decode(self, Z: Any, *, batch_size: int | None = 256) -> np.ndarray:
        """Loops from embeddings.

        Parameters
        ----------
        Z : array of shape (n_pixels, n_embedding)
            Embeddings as returned by :meth:`KerasAutoencoder.transform` (the ReLU outputs).

        Returns
        -------
        ndarray of shape (n_pixels, n_steps)
        """
        z = self._as_tensor(Z, "Z", self.n_embedding, steps=False)
        out = self._batched(z, 0, len(self.layers), batch_size)
        return out[..., 0] if out.shape[-1] == 1 else out


def _default_architecture(weights: Path) -> Path | None:
    """The ``*_start_seed_042.h5`` model save beside the weights, if there is one."""
    prefix = weights.name.split("_weights")[0]
    candidate = weights.with_name(f"{prefix}_start_seed_042.h5")
    if candidate.is_file():
        return candidate
    others = sorted(weights.parent.glob("*_start_seed_042.h5"))
    return others[0] if len(others) == 1 else None


def _load(weights: str | os.PathLike, architecture: str | os.PathLike | dict | list | None,
          dtype: DTypeLike, device: str | torch.device | None, n_steps: int | None,
          cls: type[KerasNetwork]) -> KerasNetwork:
    tdtype = _resolve_dtype(dtype)
    path = Path(weights)
    arch_path: Path | None = None
    specs: list[dict] | None
    if isinstance(architecture, list):
        specs = [dict(s) for s in architecture]
    elif isinstance(architecture, dict):
        specs = parse_keras_architecture(architecture)
    elif architecture is not None:
        arch_path = Path(architecture)
        specs = _read_architecture(arch_path)
    else:
        specs = None
    with _open_h5(path) as f:
        root = _weights_root(f, path)
        if specs is None and "model_config" in f.attrs:
            specs = parse_keras_architecture(_text(f.attrs["model_config"]))
        if specs is None and cls is KerasAutoencoder:
            arch_path = _default_architecture(path)
            if arch_path is not None:
                specs = _read_architecture(arch_path)
        if specs is None:
            specs = _infer_architecture(root, path, n_steps or PAPER_STEPS)
        elif n_steps is not None:
            for s in specs:
                if s["type"] == "repeat":
                    s["n"] = int(n_steps)
        first = specs[0]
        n_features = 1
        if first.get("batch_input_shape") and len(first["batch_input_shape"]) == 3:
            n_features = int(first["batch_input_shape"][2] or 1)
        elif first["type"] == "lstm":
            wn = [_text(w) for w in root[first["name"]].attrs.get("weight_names", [])] if first["name"] in root else []
            kern = [w for w in wn if w.endswith("/kernel:0")]
            if kern:
                n_features = int(root[first["name"]][kern[0]].shape[0])
        elif first["type"] in ("batchnorm", "dense", "repeat"):
            n_features = _decoder_input_size(root, specs, path)
        reader = _WeightReader(root, path)
        layers, _ = _build_layers(specs, reader, n_features, tdtype)
        reader.check_all_consumed()
    repeats = [s["n"] for s in specs if s["type"] == "repeat"]
    shape = first.get("batch_input_shape")
    steps_in = int(shape[1]) if shape and len(shape) == 3 and shape[1] else None
    if repeats and steps_in is not None and repeats[0] != steps_in:
        raise FormatError(
            f"the architecture takes {steps_in} steps but repeats its embedding to {repeats[0]} steps; "
            "the config is inconsistent"
        )
    steps = repeats[0] if repeats else (steps_in or PAPER_STEPS)
    model = cls(layers, specs, path, reader.consumed, steps)
    model.architecture_path = arch_path
    if device is not None:
        model.to(device)
    return model


def _decoder_input_size(root: h5py.Group, specs: list[dict], path: Path) -> int:
    """Embedding size of a decoder from its first layer that holds weights."""
    for spec in specs:
        name = spec["name"]
        if name not in root:
            continue
        names = [_text(w) for w in root[name].attrs.get("weight_names", [])]
        for w in names:
            role = w.rsplit("/", 1)[-1].split(":")[0]
            if role in ("moving_mean", "kernel"):
                return int(root[name][w].shape[0])
    raise FormatError(f"cannot tell the embedding size of the decoder in {path.name}; the file holds no weights")


def load_keras(weights: str | os.PathLike, architecture: str | os.PathLike | dict | list | None = None, *,
               dtype: DTypeLike = "float32", device: str | torch.device | None = None) -> KerasAutoencoder:
    """Load a published Keras autoencoder into an exact PyTorch inference twin.

    Parameters
    ----------
    weights : path
        A Keras weights file (``*_autoencoder_weights.<epoch>.hdf5``) or a full model save.
    architecture : path, dict or list, optional
        A Keras model save with a ``model_config`` attribute (or that JSON parsed, or layer specs
        from :func:`parse_keras_architecture`). By default the ``*_start_seed_042.h5`` beside the
        weights; without one, the architecture is inferred from the weight names and shapes with
        the paper's settings (tanh / hard_sigmoid LSTMs, epsilon 1e-3, RepeatVector(96)).
    dtype : {'float32', 'float64'} or torch.dtype
        Precision of the twin (Keras ran in float32; float64 gives a reference).
    device : str or torch.device, optional
        Where to place the weights (default CPU).

    Returns
    -------
    KerasAutoencoder
        In eval mode; ``transform``, ``reconstruct`` and ``decode`` take and return numpy arrays.

    Raises
    ------
    FormatError
        The file is corrupt, lacks a layer of the architecture, or holds weights of another shape
        or arrays the architecture does not use.
    """
    return cast(KerasAutoencoder, _load(weights, architecture, dtype, device, None, KerasAutoencoder))


def load_keras_decoder(path: str | os.PathLike, n_steps: int | None = None, *,
                       architecture: str | os.PathLike | dict | list | None = None,
                       dtype: DTypeLike = "float32",
                       device: str | torch.device | None = None) -> KerasDecoder:
    """Load a Keras decoder (e.g. the paper's refined ``*_decoder_weights.<epoch>.hdf5``).

    The refined decoders' files hold no architecture: it is inferred from the weights
    (BatchNormalization with Keras' default epsilon 1e-3, RepeatVector, Bidirectional LSTMs with
    hard_sigmoid gates, a linear TimeDistributed Dense).

    Parameters
    ----------
    path : path
        The decoder's weights file.
    n_steps : int, optional
        Length of the generated loops (the RepeatVector size); default 96 (the paper's), or the
        file's own config when it has one. The LSTMs take any length; only the training data fixed 96.
    architecture : path, dict or list, optional
        Layer specs to use instead of inferring them.
    dtype : {'float32', 'float64'} or torch.dtype
    device : str or torch.device, optional

    Returns
    -------
    KerasDecoder
    """
    if n_steps is not None and (isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer))
                                or n_steps < 1):
        raise ConfigError(f"n_steps must be a positive integer or None, got {n_steps!r}")
    model = cast(KerasDecoder, _load(path, architecture, dtype, device, n_steps, KerasDecoder))
    if model.architecture[0]["type"] not in ("batchnorm", "dense", "repeat"):
        raise FormatError(
            f"{Path(path).name} is not a decoder: its first layer {model.architecture[0]['name']!r} takes "
            "sequences, not embeddings; load a whole autoencoder with load_keras"
        )
    return model


# ---------------------------------------------------------------------------------------------
# The paper's published networks
# ---------------------------------------------------------------------------------------------

def pretrained_directory(directory: str | os.PathLike | None = None) -> Path:
    """Where the published networks lie.

    ``directory`` if given, else the environment variable ``SWITCHSCOPE_PRETRAINED_DIR``, else
    ``../shared/data/pretrained_keras`` or ``shared/data/pretrained_keras`` under the working directory.
    """
    if directory is not None:
        candidates = [Path(directory)]
    elif os.environ.get(PRETRAINED_ENV):
        candidates = [Path(os.environ[PRETRAINED_ENV])]
    else:
        cwd = Path.cwd()
        candidates = [cwd / ".." / "shared" / "data" / "pretrained_keras", cwd / "shared" / "data" / "pretrained_keras"]
    for cand in candidates:
        if cand.is_dir():
            return cand.resolve()
    looked = ", ".join(str(c) for c in candidates)
    raise DataError(
        f"no directory of pretrained networks found (looked in: {looked}); pass --pretrained-dir DIR "
        f"(directory= in Python) or set {PRETRAINED_ENV}"
    )


def _latest(directory: Path, pattern: str) -> Path:
    files = sorted(directory.glob(pattern), key=lambda p: (_epoch_from_name(p) or -1, p.name))
    if not files:
        raise DataError(
            f"no file matching {pattern} in {directory}; pass --pretrained-dir pointing to the paper's "
            "'Trained Models' files"
        )
    return files[-1]


class PretrainedNetwork(nn.Module):
    """A published network of the paper: its autoencoder (encoder) and its refined decoder.

    Built by :func:`load_pretrained`.

    Attributes
    ----------
    channel : {'piezoresponse', 'resonance'}
    autoencoder : KerasAutoencoder
        The full autoencoder; its encoder gives the embeddings.
    decoder : KerasDecoder
        The refined decoder the paper used for generation (retrained without dropout on the
        autoencoder's fixed embeddings).
    """

    def __init__(self, channel: str, autoencoder: KerasAutoencoder, decoder: KerasDecoder) -> None:
        super().__init__()
        if decoder.n_embedding != autoencoder.n_embedding:
            raise FormatError(
                f"the refined decoder takes {decoder.n_embedding} embedding neurons but the autoencoder has "
                f"{autoencoder.n_embedding}; give files of the same network"
            )
        self.channel = channel
        self.autoencoder = autoencoder
        self.decoder = decoder
        self.eval()

    @property
    def n_embedding(self) -> int:
        return self.autoencoder.n_embedding

    @property
    def l1_penalty(self) -> float:
        return self.autoencoder.l1_penalty

    def train(self, mode: bool = True) -> "PretrainedNetwork":
        return super().train(False)

    def transform(self, X: Any, *, batch_size: int | None = 256) -> np.ndarray:
        """Embeddings (n_pixels, n_embedding) of loops (n_pixels, n_steps[, 1])."""
        return self.autoencoder.transform(X, batch_size=batch_size)

    def decode(self, Z: Any, *, decoder: DecoderChoice = "refined", batch_size: int | None = 256) -> np.ndarray:
        """Loops (n_pixels, n_steps) from embeddings (n_pixels, n_embedding).

        ``decoder='refined'`` (default) uses the refined decoder, as the paper did for generation;
        ``'autoencoder'`` uses the autoencoder's own decoder.
        """
        return self._decoder(decoder).decode(Z, batch_size=batch_size)

    def reconstruct(self, X: Any, *, decoder: DecoderChoice = "refined",
                    batch_size: int | None = 256) -> np.ndarray:
        """Loops (n_pixels, n_steps) reconstructed as ``decode(transform(X), decoder=decoder)``.

        With ``decoder='refined'`` (default) the embedding goes through the refined decoder;
        with ``'autoencoder'`` this is the autoencoder's own reconstruction (what its training log
        measured).
        """
        net = self._decoder(decoder)
        if net is self.autoencoder:
            return self.autoencoder.reconstruct(X, batch_size=batch_size)
        return net.decode(self.transform(X, batch_size=batch_size), batch_size=batch_size)

    def _decoder(self, decoder: str) -> KerasAutoencoder | KerasDecoder:
        if decoder == "refined":
            return self.decoder
        if decoder == "autoencoder":
            return self.autoencoder
        raise ConfigError(f"decoder must be 'refined' or 'autoencoder', got {decoder!r}")


def load_pretrained(channel: PretrainedChannel, directory: str | os.PathLike | None = None, *,
                    dtype: DTypeLike = "float32", device: str | torch.device | None = None) -> PretrainedNetwork:
    """The paper's published network for a channel, with its refined decoder.

    Parameters
    ----------
    channel : {'piezoresponse', 'resonance'}
    directory : path, optional
        Folder holding the paper's ``Trained Models`` files; default: see :func:`pretrained_directory`.
        When several checkpoints are present, the one with the highest epoch is taken.
    dtype : {'float32', 'float64'} or torch.dtype
    device : str or torch.device, optional

    Returns
    -------
    PretrainedNetwork
    """
    if channel not in ("piezoresponse", "resonance"):
        raise ConfigError(f"channel must be 'piezoresponse' or 'resonance' for the published networks, got {channel!r}")
    folder = pretrained_directory(directory)
    weights = _latest(folder, f"{channel}_autoencoder_weights.*.hdf5")
    arch = folder / f"{channel}_autoencoder_start_seed_042.h5"
    if not arch.is_file():
        raise DataError(f"{arch.name} (the architecture) is missing from {folder}; pass --pretrained-dir "
                        "pointing to the paper's complete 'Trained Models' files")
    auto = load_keras(weights, arch, dtype=dtype, device=device)
    dec = load_keras_decoder(_latest(folder, f"{channel}_decoder_weights.*.hdf5"), n_steps=auto.n_steps,
                             dtype=dtype, device=device)
    return PretrainedNetwork(channel, auto, dec)
