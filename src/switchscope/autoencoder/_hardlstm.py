"""Batched inference kernels with Keras 2 semantics for the published-weights twin.

Keras 2.1.5 LSTMs use ``recurrent_activation='hard_sigmoid'`` (``clip(0.2 x + 0.5, 0, 1)``),
which ``torch.nn.LSTM`` cannot express, so the recurrence is a Python loop over time steps. To
keep that loop cheap, every pixel of the batch and both directions of a ``Bidirectional`` layer
advance together: one batched matrix product per time step, pixels on the last axis, gate
arithmetic in place in buffers allocated once.

Keras gate order in ``kernel`` (in, 4 units), ``recurrent_kernel`` (units, 4 units) and ``bias``
(4 units) is ``[i, f, c, o]``:

    z = x_t W + h_{t-1} U + b
    i = r(z_i), f = r(z_f), o = r(z_o), c_t = f c_{t-1} + i g(z_c), h_t = o g(c_t)

with ``r`` the recurrent activation and ``g`` the activation (tanh).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator

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


_WORKSPACE = threading.local()


@contextlib.contextmanager
def reuse_buffers() -> Iterator[None]:
    """Within this context (per thread), :func:`buffer` hands back the same memory for the same key.

    Each LSTM layer needs tens of MB of scratch for a batch of 256 pixels; fresh large allocations
    are new pages that the kernel faults in and zeroes every time. The layers of a network run one
    after the other and each consumes its input before writing its own buffers, so they share them
    by role. A tensor from :func:`buffer` is valid until the next request of the same key:
    callers must copy what they keep.
    """
    outer = getattr(_WORKSPACE, "store", None)
    if outer is None:
        _WORKSPACE.store = {}
    try:
        yield
    finally:
        if outer is None:
            _WORKSPACE.store = None


def buffer(key: object, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An uninitialized tensor of ``shape`` with ``like``'s dtype and device, reused under :func:`reuse_buffers`."""
    store = getattr(_WORKSPACE, "store", None)
    if store is None:
        return like.new_empty(shape)
    full = (key, like.dtype, like.device)
    numel = 1
    for s in shape:
        numel *= s
    held = store.get(full)
    if held is None or held.numel() < numel:
        held = store[full] = like.new_empty(numel)
    return held[:numel].view(shape)


def prepare_weights(
    kernel: torch.Tensor, recurrent_kernel: torch.Tensor, bias: torch.Tensor, recurrent_activation: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keras ``[i, f, c, o]`` weights rearranged and transposed for :func:`lstm_stack`.

    The gates are reordered to ``[i, f, o, c]`` so that one call activates the three sigmoid-like
    gates. For ``hard_sigmoid`` its affine part ``0.2 z + 0.5`` is folded into the i, f, o rows
    (exact up to float rounding), leaving a single in-place clamp per step. The matrices are
    transposed because :func:`lstm_stack` keeps pixels on the last axis (see there).

    Parameters
    ----------
    kernel : Tensor of shape (d, n_in, 4 * units)
    recurrent_kernel : Tensor of shape (d, units, 4 * units)
    bias : Tensor of shape (d, 4 * units)
    recurrent_activation : str

    Returns
    -------
    kernel_t : Tensor of shape (d, 4 * units, n_in)
    recurrent_kernel_t : Tensor of shape (d, 4 * units, units)
    bias : Tensor of shape (d, 4 * units, 1)
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
    return W.transpose(1, 2).contiguous(), U.transpose(1, 2).contiguous(), b.unsqueeze(-1).contiguous()


def lstm_stack(
    x: torch.Tensor,
    kernel_t: torch.Tensor,
    recurrent_kernel_t: torch.Tensor,
    bias: torch.Tensor,
    *,
    act: Callable[[torch.Tensor], torch.Tensor] = torch.tanh,
    recurrent_act: Callable[[torch.Tensor], torch.Tensor] | None = None,
    return_sequences: bool = True,
) -> torch.Tensor:
    """Run ``d`` independent Keras LSTMs, each over its own input sequence, in one loop.

    Pixels are on the last axis ("feature-major"): each step is then one batched product
    ``U^T h`` of shape (d, 4 units, n) whose gate blocks are contiguous, so the gate arithmetic
    runs in place on dense memory; every buffer is allocated once, before the loop.

    Parameters
    ----------
    x : Tensor of shape (d, steps, n_in, n)
        Input sequences of each of the ``d`` LSTMs (already time-reversed for backward ones). A
        sequence constant in time (stride 0 on ``steps``, as after a RepeatVector) is projected once.
    kernel_t, recurrent_kernel_t, bias : Tensors
        Weights from :func:`prepare_weights`: (d, 4 units, n_in), (d, 4 units, units), (d, 4 units, 1).
    act : callable
        Cell and output activation (tanh).
    recurrent_act : callable or None
        Gate activation; None for ``hard_sigmoid`` already folded by :func:`prepare_weights`
        (the gates are then only clamped to [0, 1]).
    return_sequences : bool
        Return every hidden state (d, steps, units, n) or only the last one (d, units, n).

    Returns
    -------
    Tensor of shape (d, steps, units, n) or (d, units, n)
        Under :func:`reuse_buffers` it is the ``"lstm_out"`` buffer, overwritten by the next call.
    """
    d, steps, n_in, n = x.shape
    units = recurrent_kernel_t.shape[2]
    g4 = 4 * units
    # The input projection has no recurrence: one large product per direction for all steps.
    if x.stride(1) == 0:
        xw = torch.baddbmm(bias, kernel_t, x[:, 0]).unsqueeze(1).expand(d, steps, g4, n)
    else:
        xw = buffer("lstm_xw", (d, steps, g4, n), x)
        for k in range(d):
            torch.bmm(kernel_t[k].expand(steps, g4, n_in), x[k], out=xw[k])
        xw += bias.unsqueeze(1)
    constant = xw.stride(1) == 0
    h0 = x.new_zeros(d, units, n)
    c = x.new_zeros(d, units, n)
    tmp = x.new_empty(d, units, n)
    zbuf = x.new_empty(d, g4, n) if constant else None
    shape = (d, steps, units, n) if return_sequences else (d, units, n)
    out = buffer("lstm_out", shape, x)
    h = h0
    for t in range(steps):
        if zbuf is None:
            # In place in this step's slice of the projection: no copy of it into a scratch tensor.
            z = xw[:, t].baddbmm_(recurrent_kernel_t, h)
        else:
            z = torch.baddbmm(xw[:, t], recurrent_kernel_t, h, out=zbuf)
        i, f, o, g = z[:, :units], z[:, units:2 * units], z[:, 2 * units:3 * units], z[:, 3 * units:]
        if recurrent_act is None:
            z[:, : 3 * units].clamp_(0.0, 1.0)
        else:
            z[:, : 3 * units] = recurrent_act(z[:, : 3 * units])
        if act is torch.tanh:
            g.tanh_()
            c.mul_(f).addcmul_(i, g)
            torch.tanh(c, out=tmp)
        else:
            c.mul_(f).addcmul_(i, act(g))
            tmp.copy_(act(c))
        h = out[:, t] if return_sequences else out
        torch.mul(o, tmp, out=h)
    return out
