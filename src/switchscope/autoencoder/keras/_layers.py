"""The Keras layers as PyTorch modules (inference only, exact Keras arithmetic)."""

from __future__ import annotations


import numpy as np
import torch
from torch import nn

from .._hardlstm import activation, lstm_stack, prepare_weights

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
        if self.spec["bidirectional"]:
            xs = torch.stack([x, torch.flip(x, dims=[1])])
        else:
            xs = x.unsqueeze(0)
        out = lstm_stack(xs, self._W, self._U, self._b, act=self._act,
                         recurrent_act=self._rec_act, return_sequences=seq)
        if not self.spec["bidirectional"]:
            return out[0]
        fwd, bwd = out[0], out[1]
        if seq:
            # Keras re-reverses the backward outputs so that step t lines up with step t.
            bwd = torch.flip(bwd, dims=[1])
        mode = self.spec["merge_mode"]
        if mode == "concat":
            return torch.cat([fwd, bwd], dim=-1)
        if mode == "sum":
            return fwd + bwd
        if mode == "mul":
            return fwd * bwd
        return 0.5 * (fwd + bwd)

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
