"""The paper's published networks: where their files lie, and both of a channel's networks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..._errors import ConfigError, DataError, FormatError
from ._hdf5 import DTypeLike, DecoderChoice, PRETRAINED_ENV, PretrainedChannel
from ._networks import KerasAutoencoder, KerasDecoder, load_keras, load_keras_decoder
from ._weights import _epoch_from_name

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
