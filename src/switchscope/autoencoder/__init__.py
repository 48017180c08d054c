"""The sparse bidirectional-LSTM autoencoder (DESIGN section 2.5).

``Autoencoder(config).fit(X)`` trains the paper's network family on normalized loops
``(n_pixels, n_steps)``; ``transform`` gives the sparse embeddings, ``reconstruct`` and ``decode``
the loops; loops of shape ``(n_pixels, n_steps, n_channels)`` train one joint network on several
channels at once (``[autoencoder] joint = true`` in the pipeline). :mod:`.keras` loads the
paper's published Keras weights into an exact inference twin; :mod:`.stage` is the pipeline stage.
"""

import importlib
from typing import Any

#: Public names and the module that defines each: the networks need torch, so they are imported
#: on first use (PEP 562), and ``import switchscope.autoencoder`` (every command reads the
#: ``[autoencoder]`` options) does not load torch.
_WHERE = {
    "PAPER_L1": "..paper",
    "Autoencoder": ".train",
    "AutoencoderConfig": "._options",
    "SparseLSTMAutoencoder": ".model",
    "active_neurons": ".._embedding",
    "l1_penalty": ".train",
    "lr_at": ".train",
    "n_parameters": ".model",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


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
