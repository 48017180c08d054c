"""The networks' architecture as a list of plain, JSON-serialisable layer specs."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import h5py

from ..._errors import FormatError
from ...paper import KERAS_BN_EPSILON
from ._hdf5 import _open_h5, _text

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
