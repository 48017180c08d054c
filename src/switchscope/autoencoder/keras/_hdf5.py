"""Reading the published Keras HDF5 files with h5py (no TensorFlow, no pickle)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import h5py
import torch

from ..._errors import DataError, FormatError

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
