"""Batched inference kernels with Keras 2 semantics for the published-weights twin.

Keras 2.1.5 LSTMs use ``recurrent_activation='hard_sigmoid'`` (``clip(0.2 x + 0.5, 0, 1)``),
which ``torch.nn.LSTM`` cannot express, so the recurrence is a Python loop over time steps. To
keep that loop cheap, every pixel of the batch and both directions of a ``Bidirectional`` layer
advance together: one batched matrix product per time step.

Keras gate order in ``kernel`` (in, 4 units), ``recurrent_kernel`` (units, 4 units) and ``bias``
(4 units) is ``[i, f, c, o]``:

    z = x_t W + h_{t-1} U + b
    i = r(z_i), f = r(z_f), o = r(z_o), c_t = f c_{t-1} + i g(z_c), h_t = o g(c_t)

with ``r`` the recurrent activation and ``g`` the activation (tanh).
"""

from __future__ import annotations

from typing import Callable

import torch

from .._errors import FormatError


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Keras 2 ``hard_sigmoid``: ``clip(0.2 x + 0.5, 0, 1)``."""
    return torch.clamp(0.2 * x + 0.5, 0.0, 1.0)


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "hard_sigmoid": hard_sigmoid,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": torch.relu,
    "linear": lambda x: x,
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation function of a Keras activation name."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise FormatError(
            f"Keras activation {name!r} is not supported by the twin; supported: {', '.join(_ACTIVATIONS)}"
        ) from None


def prepare_weights(
    kernel: torch.Tensor, recurrent_kernel: torch.Tensor, bias: torch.Tensor, recurrent_activation: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keras ``[i, f, c, o]`` weights rearranged for :func:`lstm_stack`.

    The gates are reordered to ``[i, f, o, c]`` so that one call activates the three sigmoid-like
    gates. For ``hard_sigmoid`` its affine part ``0.2 z + 0.5`` is folded into the i, f, o columns
    (exact up to float rounding), leaving a single in-place clamp per step.

    Parameters
    ----------
    kernel : Tensor of shape (d, n_in, 4 * units)
    recurrent_kernel : Tensor of shape (d, units, 4 * units)
    bias : Tensor of shape (d, 4 * units)
    recurrent_activation : str

    Returns
    -------
    kernel, recurrent_kernel, bias : Tensors of the same shapes
    """
    u = recurrent_kernel.shape[1]
    order = torch.cat([torch.arange(0, 2 * u), torch.arange(3 * u, 4 * u), torch.arange(2 * u, 3 * u)])
    W, U, b = kernel[..., order], recurrent_kernel[..., order], bias[..., order]
    if recurrent_activation == "hard_sigmoid":
        scale = torch.ones(4 * u, dtype=W.dtype, device=W.device)
        scale[: 3 * u] = 0.2
        shift = torch.zeros(4 * u, dtype=W.dtype, device=W.device)
        shift[: 3 * u] = 0.5
        W, U, b = W * scale, U * scale, b * scale + shift
    return W.contiguous(), U.contiguous(), b.contiguous()


def lstm_stack(
    x: torch.Tensor,
    kernel: torch.Tensor,
    recurrent_kernel: torch.Tensor,
    bias: torch.Tensor,
    *,
    act: Callable[[torch.Tensor], torch.Tensor] = torch.tanh,
    recurrent_act: Callable[[torch.Tensor], torch.Tensor] | None = None,
    return_sequences: bool = True,
) -> torch.Tensor:
    """Run ``d`` independent Keras LSTMs, each over its own input sequence, in one loop.

    Parameters
    ----------
    x : Tensor of shape (d, n, steps, n_in)
        Input sequences of each of the ``d`` LSTMs (already time-reversed for backward ones).
    kernel, recurrent_kernel, bias : Tensors
        Weights from :func:`prepare_weights`: (d, n_in, 4 units), (d, units, 4 units), (d, 4 units).
    act : callable
        Cell and output activation (tanh).
    recurrent_act : callable or None
        Gate activation; None for ``hard_sigmoid`` already folded by :func:`prepare_weights`
        (the gates are then only clamped to [0, 1]).
    return_sequences : bool
        Return every hidden state (d, n, steps, units) or only the last one (d, n, units).

    Returns
    -------
    Tensor of shape (d, n, steps, units) or (d, n, units)
    """
    d, n, steps, _ = x.shape
    units = recurrent_kernel.shape[1]
    # The input projection has no recurrence: one large product (bias fused) for all steps.
    xw = torch.baddbmm(bias.unsqueeze(1), x.reshape(d, n * steps, -1), kernel).view(d, n, steps, -1)
    h = x.new_zeros(d, n, units)
    c = x.new_zeros(d, n, units)
    outputs = [] if return_sequences else None
    for t in range(steps):
        z = torch.baddbmm(xw[:, :, t], h, recurrent_kernel)
        if recurrent_act is None:
            gates = z[..., : 3 * units].clamp_(0.0, 1.0)
        else:
            gates = recurrent_act(z[..., : 3 * units])
        i, f, o = gates.split(units, dim=-1)
        c = torch.addcmul(f * c, i, act(z[..., 3 * units:]))
        h = o * act(c)
        if outputs is not None:
            outputs.append(h)
    if outputs is None:
        return h
    return torch.stack(outputs, dim=2)
