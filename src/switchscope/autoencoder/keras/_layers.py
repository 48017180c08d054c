"""The Keras layers as PyTorch modules (inference only, exact Keras arithmetic)."""

from __future__ import annotations


import numpy as np
import torch
from torch import nn

from .._hardlstm import activation, buffer, lstm_stack, prepare_weights

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
        # (n, steps, f) -> (steps, f, n): lstm_stack keeps pixels last. The previous LSTM layer
        # returns a permuted view of that layout, so this permute gives back a contiguous tensor.
        xt = x.permute(1, 2, 0)
        if not self.spec["bidirectional"]:
            xs = xt.unsqueeze(0)
        elif xt.stride(0) == 0:
            xs = xt.unsqueeze(0).expand(2, *xt.shape)  # constant in time (RepeatVector): its own reverse
        else:
            xs = buffer("layer_xs", (2, *xt.shape), xt)
            xs[0].copy_(xt)
            torch.index_select(xt, 0, self._reversed(xt.shape[0], xt.device), out=xs[1])
        out = lstm_stack(xs, self._W, self._U, self._b, act=self._act,
                         recurrent_act=self._rec_act, return_sequences=seq)
        # out: (d, steps, units, n) or (d, units, n); the result goes back to (n, steps, f) or (n, f)
        # as a view, so the next layer's permute is free.
        if not self.spec["bidirectional"]:
            y = out[0]
        else:
            fwd, bwd = out[0], out[1]
            if seq:
                # Keras re-reverses the backward outputs so that step t lines up with step t.
                bwd = torch.index_select(bwd, 0, self._reversed(bwd.shape[0], bwd.device),
                                         out=buffer("layer_bwd", bwd.shape, bwd))
            mode = self.spec["merge_mode"]
            if mode == "concat":
                shape = (*fwd.shape[:-2], 2 * fwd.shape[-2], fwd.shape[-1])
                y = torch.cat([fwd, bwd], dim=-2, out=buffer("layer_out", shape, fwd))
            elif mode == "sum":
                y = fwd + bwd
            elif mode == "mul":
                y = fwd * bwd
            else:
                y = 0.5 * (fwd + bwd)
        return y.permute(2, 0, 1) if seq else y.t()

    @staticmethod
    def _reversed(steps: int, device: torch.device) -> torch.Tensor:
        return torch.arange(steps - 1, -1, -1, device=device)

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
