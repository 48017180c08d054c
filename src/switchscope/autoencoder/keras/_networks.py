"""The public networks: a Keras model file as a PyTorch module, loaders."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import h5py
import numpy as np
import torch
from torch import nn

from ..._errors import ConfigError, DataError, FormatError
from ...paper import PAPER_STEPS
from ._architecture import _infer_architecture, _read_architecture, parse_keras_architecture
from ._hdf5 import DTypeLike, _open_h5, _text, _weights_root
from .._hardlstm import reuse_buffers
from ._layers import _BatchNormLayer, _DenseLayer, _LSTMLayer
from ._weights import _WeightReader, _build_layers, _epoch_from_name, _resolve_dtype

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
        # On a CPU each batch is split into one part per torch thread and the parts run in their own
        # Python threads with one intra-op thread each: the recurrence is ~800 small steps per
        # layer stack, and intra-op threads that meet at a barrier after every one are slow when
        # the CPU is shared (6x slower than one thread on a loaded 2-core machine).
        workers = torch.get_num_threads() if x.device.type == "cpu" else 1
        parts = []
        for i in range(0, n, size):
            batch = x[i:i + size]
            step = -(-batch.shape[0] // max(1, min(workers, batch.shape[0])))
            parts.extend(batch[j:j + step] for j in range(0, batch.shape[0], step))
        if len(parts) == 1 or workers == 1:
            return torch.cat([self._run_part(p, start, stop) for p in parts]).cpu().numpy()
        before = torch.get_num_threads()
        try:
            with ThreadPoolExecutor(max_workers=workers, initializer=torch.set_num_threads,
                                    initargs=(1,)) as pool:
                out = list(pool.map(lambda p: self._run_part(p, start, stop), parts))
        finally:
            torch.set_num_threads(before)
        return torch.cat(out).cpu().numpy()

    def _run_part(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        # Scratch buffers are shared by the layers (see reuse_buffers), so the result is copied out.
        with torch.inference_mode(), reuse_buffers():
            return self._run(x, start, stop).clone()

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
