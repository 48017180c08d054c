"""The sparse bidirectional-LSTM autoencoder (DESIGN section 2.5).

``Autoencoder(config).fit(X)`` trains the paper's network family on normalized loops
``(n_pixels, n_steps)``; ``transform`` gives the sparse embeddings, ``reconstruct`` and ``decode``
the loops; loops of shape ``(n_pixels, n_steps, n_channels)`` train one joint network on several
channels at once (``[autoencoder] joint = true`` in the pipeline). :mod:`.keras` loads the
paper's published Keras weights into an exact inference twin; :mod:`.stage` is the pipeline stage.
"""

from .model import SparseLSTMAutoencoder, n_parameters
from .train import (
    PAPER_L1,
    Autoencoder,
    AutoencoderConfig,
    active_neurons,
    l1_penalty,
    lr_at,
)

__all__ = [
    "PAPER_L1",
    "Autoencoder",
    "AutoencoderConfig",
    "SparseLSTMAutoencoder",
    "active_neurons",
    "l1_penalty",
    "lr_at",
    "n_parameters",
]
