"""The sparse bidirectional-LSTM autoencoder of Agar et al. (2019), in PyTorch.

Architecture (the paper's, DESIGN section 2.5), with sizes as arguments::

    x (batch, steps, 1)
    -> depth x [bidirectional LSTM(hidden per direction) -> dropout]   (last layer: final states only)
    -> batch norm -> dense(n_neurons) + ReLU            = the embedding, L1 activity penalty
    -> batch norm -> repeat to the sequence length
    -> depth x [bidirectional LSTM(hidden per direction) -> dropout]
    -> per-step linear(1)                               = the reconstruction (batch, steps)

With ``n_channels > 1`` (the joint multichannel network, not the paper's) the input is
``(batch, steps, n_channels)``: every step carries one value per channel, one encoder reads them
together into one embedding, and the per-step linear layer outputs ``n_channels`` values, so the
reconstruction is ``(batch, steps, n_channels)``. With ``n_channels = 1`` the layers and their
weight names are exactly the single-channel network's.

With ``hidden=64, depth=4, n_neurons=16`` this is the published network: Keras counts 670,929
parameters; torch counts 674,737 trainable ones (two LSTM biases per gate, +4,096; batch-norm
moving statistics kept as buffers, -288).
Training uses PyTorch's fused LSTM (sigmoid gates); the published Keras weights, whose recurrent
activation is ``hard_sigmoid``, load into the separate exact twin in :mod:`.keras`.
Any sequence length works: the encoder reads any length and the decoder repeats the embedding to
the length asked for.
"""

from __future__ import annotations

import torch
from torch import nn

from ..paper import KERAS_BN_EPSILON

#: Keras 2.1.5 BatchNormalization defaults used by the published networks (epsilon is exact there
#: because the last batch norm's moving variances are tiny; momentum 0.99 is torch's 0.01).
BN_EPS = KERAS_BN_EPSILON
BN_MOMENTUM = 0.01


class _BiLSTMStack(nn.Module):
    """``depth`` single-layer bidirectional LSTMs, each followed by dropout (as Keras stacks them).

    ``nn.LSTM(num_layers=depth, dropout=p)`` would skip the dropout after the last layer, which the
    paper applies, so the layers are kept separate; each is still one fused kernel call.
    """

    def __init__(self, input_size: int, hidden: int, depth: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.LSTM(input_size if i == 0 else 2 * hidden, hidden, batch_first=True, bidirectional=True)
            for i in range(depth)
        )
        self.dropout = nn.Dropout(dropout)
        self.hidden = hidden

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        for layer in self.layers:
            x, _ = layer(x)
            x = self.dropout(x)
        if last_only:
            # Keras Bidirectional(return_sequences=False): forward output at the last step joined
            # with the backward output after it has read the whole (reversed) sequence, i.e. at step 0.
            h = self.hidden
            return torch.cat([x[:, -1, :h], x[:, 0, h:]], dim=1)
        return x


class Encoder(nn.Module):
    """Loops ``(batch, steps)`` (or ``(batch, steps, n_channels)``) -> embedding ``(batch, n_neurons)``
    (ReLU output, >= 0)."""

    def __init__(self, hidden: int, depth: int, n_neurons: int, dropout: float,
                 bn_momentum: float = BN_MOMENTUM, n_channels: int = 1) -> None:
        super().__init__()
        self.rnn = _BiLSTMStack(n_channels, hidden, depth, dropout)
        self.norm = nn.BatchNorm1d(2 * hidden, eps=BN_EPS, momentum=bn_momentum)
        self.dense = nn.Linear(2 * hidden, n_neurons)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.rnn(x.unsqueeze(-1) if x.dim() == 2 else x, last_only=True)
        return torch.relu(self.dense(self.norm(h)))


def phase_features(n_steps: int, n_harmonics: int, *, device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
    """Where each step lies in the waveform: ``(n_steps, 2 * n_harmonics)`` Fourier features.

    Column pairs ``sin(2 pi k t), cos(2 pi k t)`` for ``k = 1..n_harmonics`` at the phase
    ``t = step / n_steps`` of a periodic (bipolar triangular) waveform. They depend on the relative
    position only, so any sequence length works.

    Examples
    --------
    >>> phase_features(4, 1).round(decimals=3).abs()
    tensor([[0., 1.],
            [1., 0.],
            [0., 1.],
            [1., 0.]])
    """
    # built in float64 on the CPU (some devices have no float64), then moved
    t = torch.arange(n_steps, dtype=torch.float64) / n_steps
    k = torch.arange(1, n_harmonics + 1, dtype=torch.float64)
    arg = 2 * torch.pi * t[:, None] * k[None, :]
    out = torch.stack([torch.sin(arg), torch.cos(arg)], dim=2).reshape(n_steps, 2 * n_harmonics)
    return out.to(device=device, dtype=dtype or torch.get_default_dtype())


class Decoder(nn.Module):
    """Embedding ``(batch, n_neurons)`` -> loops ``(batch, n_steps)`` (``(batch, n_steps, n_channels)``
    with ``n_channels > 1``).

    With ``n_phase > 0`` each step's input is the repeated embedding joined with
    :func:`phase_features` of that step (``2 * n_phase`` values), so the recurrent layers need not
    build the position in the waveform out of their own dynamics (an option; the paper's decoder
    has ``n_phase = 0``).
    """

    def __init__(self, hidden: int, depth: int, n_neurons: int, dropout: float,
                 bn_momentum: float = BN_MOMENTUM, n_phase: int = 0, n_channels: int = 1) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(n_neurons, eps=BN_EPS, momentum=bn_momentum)
        self.rnn = _BiLSTMStack(n_neurons + 2 * n_phase, hidden, depth, dropout)
        self.out = nn.Linear(2 * hidden, n_channels)
        self.n_phase = n_phase
        self.n_channels = n_channels

    def forward(self, z: torch.Tensor, n_steps: int) -> torch.Tensor:
        z = self.norm(z)
        seq = z.unsqueeze(1).expand(-1, n_steps, -1)
        if self.n_phase:
            pos = phase_features(n_steps, self.n_phase, device=z.device, dtype=z.dtype)
            seq = torch.cat([seq, pos.unsqueeze(0).expand(z.shape[0], -1, -1)], dim=2)
        out = self.out(self.rnn(seq))
        return out.squeeze(-1) if self.n_channels == 1 else out


class SparseLSTMAutoencoder(nn.Module):
    """The paper's autoencoder; sizes are arguments.

    Parameters
    ----------
    hidden : int
        LSTM units per direction (paper: 64).
    depth : int
        Bidirectional LSTM layers in the encoder and again in the decoder (paper: 4).
    n_neurons : int
        Width of the ReLU embedding (paper: 16).
    dropout : float
        Dropout rate after every recurrent layer (paper: 0.2).
    bn_momentum : float
        Torch momentum of the batch norms' moving statistics (paper: Keras 0.99 = torch 0.01).
    n_phase : int
        Harmonics of the waveform phase given to the decoder with the embedding (paper: 0; see
        :class:`Decoder`).
    n_channels : int
        Values per step, read together and each reconstructed (1: the paper's single-channel
        network, loops ``(batch, steps)``; more: the joint network, ``(batch, steps, n_channels)``).

    Examples
    --------
    >>> net = SparseLSTMAutoencoder(hidden=64, depth=4, n_neurons=16, dropout=0.2)
    >>> n_parameters(net)  # Keras counts 670,929: one LSTM bias per gate, BN moving stats counted
    674737
    """

    def __init__(self, hidden: int = 64, depth: int = 4, n_neurons: int = 16, dropout: float = 0.2,
                 bn_momentum: float = BN_MOMENTUM, n_phase: int = 0, n_channels: int = 1) -> None:
        super().__init__()
        self.n_channels = int(n_channels)
        self.encoder = Encoder(hidden, depth, n_neurons, dropout, bn_momentum, self.n_channels)
        self.decoder = Decoder(hidden, depth, n_neurons, dropout, bn_momentum, n_phase, self.n_channels)
        # Optional mean loop (steps,) or (steps, n_channels) subtracted before the encoder and added after the decoder;
        # empty = none (the paper's network). A buffer, so checkpoints carry it.
        self.register_buffer("offset", torch.zeros(0))

    def set_offset(self, offset: torch.Tensor | None) -> None:
        """Set (or with None remove) the mean loop the network works around."""
        ref = self.decoder.out.weight
        self.offset = (torch.zeros(0) if offset is None else torch.as_tensor(offset)).to(ref.device, ref.dtype)

    def _offset(self, n_steps: int) -> torch.Tensor | None:
        if self.offset.numel() == 0:
            return None
        if self.offset.shape[0] != n_steps:
            from .._errors import DataError

            raise DataError(f"this network works around a mean loop of {self.offset.shape[0]} steps and cannot "
                            f"take {n_steps}; give loops of {self.offset.shape[0]} steps (or fit with center=False)")
        return self.offset

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``x (batch, steps)`` or ``(batch, steps, n_channels)`` -> embedding ``(batch, n_neurons)``."""
        off = self._offset(x.shape[1])
        return self.encoder(x if off is None else x - off)

    def decode(self, z: torch.Tensor, n_steps: int) -> torch.Tensor:
        """Embedding ``(batch, n_neurons)`` -> loops ``(batch, n_steps)`` (or ``(.., n_channels)``)."""
        off = self._offset(n_steps)
        out = self.decoder(z, n_steps)
        return out if off is None else out + off

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (batch, steps)`` -> ``(reconstruction (batch, steps), embedding (batch, n_neurons))``."""
        z = self.encode(x)
        return self.decode(z, x.shape[1]), z


def n_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
