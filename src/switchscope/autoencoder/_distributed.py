"""Data-parallel training under ``torchrun``: the process group, the batch-norm sync, collectives.

:meth:`Autoencoder.fit <switchscope.autoencoder.Autoencoder.fit>` calls :func:`setup`; it returns
None (one process, the unchanged path) unless the torchrun environment (``WORLD_SIZE`` > 1,
``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) is present. Only :func:`world_rank`
is needed without torch, so the pipeline can ask which rank it is cheaply.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
from typing import Any

import torch
from torch import nn

_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def world_rank() -> tuple[int, int]:
    """``(rank, world_size)`` from the torchrun environment; ``(0, 1)`` outside it."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0, 1
    return (rank, world) if world > 1 else (0, 1)


@dataclasses.dataclass(frozen=True)
class Dist:
    """This process's place in the group."""

    rank: int
    world: int
    device: torch.device

    def sum(self, *values: float) -> list[float]:
        """Sums over ranks of ``values`` (float64, the same bits on every rank)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def max(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t.item())

    def from_rank0(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank. An exception from rank 0 is raised on every rank, so a
        refusal there (say, an output folder that already holds a run) stops all of them."""
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        if isinstance(box[0], _Failure):
            box[0].reraise()
        return box[0]

    def same_everywhere(self, what: str, key: tuple) -> None:
        """Raise on every rank unless ``key`` (shapes, checksums) is the same on all of them."""
        keys: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(keys, key)
        if any(k != keys[0] for k in keys):
            from .._errors import DataError

            raise DataError(f"the ranks of this torchrun job were given different {what} ({keys}); every rank "
                            "must call Autoencoder.fit with the same loops and config")


@dataclasses.dataclass
class _Failure:
    kind: type
    message: str

    def reraise(self) -> None:
        try:
            exc = self.kind(self.message)
        except Exception:  # an exception type that takes other arguments
            exc = RuntimeError(self.message)
        raise exc


def failure(exc: BaseException) -> _Failure:
    return _Failure(type(exc), str(exc))


def setup(device: torch.device) -> tuple[Dist | None, torch.device]:
    """Join (or start) the process group when run under torchrun; returns ``(Dist or None, device)``.

    CUDA training uses ``cuda:LOCAL_RANK`` unless the config named a device index, and NCCL; the
    CPU uses gloo. A process group the caller already started is used as it is.
    """
    rank, world = world_rank()
    dist = torch.distributed
    if world == 1 and not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return None, device
    if not dist.is_available():
        from .._errors import ConfigError

        raise ConfigError("WORLD_SIZE > 1 (torchrun) but this PyTorch has no torch.distributed; "
                          "run one process or install a PyTorch build with distributed support")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        missing = [k for k in _ENV if k not in os.environ]
        if missing:
            from .._errors import ConfigError

            raise ConfigError(f"WORLD_SIZE > 1 but {', '.join(missing)} not set; start the job with torchrun "
                              "(torchrun --nproc_per_node N ...), which sets them")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_destroy)
    return Dist(dist.get_rank(), dist.get_world_size(), device), device


def _destroy() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class _SyncBatchNorm1d(nn.BatchNorm1d):
    """``BatchNorm1d`` whose training statistics are those of the global batch (all ranks').

    ``nn.SyncBatchNorm`` refuses CPU tensors; this one works on any device through the
    differentiable ``torch.distributed.nn.functional.all_reduce`` (its backward sums the
    gradients of every rank's loss with respect to the shared statistics, as the one-process
    batch norm's gradient does). Same parameters and buffers as ``BatchNorm1d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        n = x.new_tensor([float(x.shape[0])])
        total = all_reduce(torch.cat([x.sum(0), n]))
        count = total[-1]
        mean = total[:-1] / count
        var = all_reduce(((x - mean) ** 2).sum(0)) / count
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * count / (count - 1), alpha=m)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


def sync_batch_norms(model: nn.Module, on: bool) -> None:
    """Turn the model's ``BatchNorm1d`` layers into global-batch ones (``on``) and back, in place
    (the class changes, the parameters and buffers stay: state dicts are unchanged)."""
    for m in model.modules():
        if on and type(m) is nn.BatchNorm1d:
            m.__class__ = _SyncBatchNorm1d
        elif not on and type(m) is _SyncBatchNorm1d:
            m.__class__ = nn.BatchNorm1d
