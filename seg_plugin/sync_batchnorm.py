"""Synchronised BatchNorm for the trainer's multi-process runs, on GPUs and on CPUs.

The official Semantic FPN normalises its head with mmcv's ``SyncBN``: under DDP the batch statistics are
those of the global batch (all processes), not of each process's share. The trainer gets that from
Lightning's layer-sync mechanism (``Trainer(sync_batchnorm=True)``) with :func:`convert_sync_batchnorm`:

* on CUDA every BatchNorm becomes ``torch.nn.SyncBatchNorm``, what Lightning's own switch does;
* on CPU processes (the gloo backend), where torch's SyncBatchNorm cannot train (its kernels are CUDA-only,
  and DDP refuses it on CPU), :class:`CpuSyncBatchNorm`: the statistics are all-reduced with the
  autograd-aware ``torch.distributed.nn`` collective, so that forward and backward are those of one
  BatchNorm over the global batch.

The converted layers share the parameters and buffers of the originals, and :func:`revert_sync_batchnorm`
turns them back into their original classes (Lightning's own revert gives a generic ``_BatchNormXd``), so
that the model saved after training holds plain ``BatchNorm2d`` again. With one process nothing is
converted.
"""
from __future__ import annotations

from typing import Any, List, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.nn.functional import all_reduce
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["CpuSyncBatchNorm", "convert_sync_batchnorm", "revert_sync_batchnorm", "sync_batchnorm_layers"]


class CpuSyncBatchNorm(_BatchNorm):
    """BatchNorm over the batches of all processes of a CPU (gloo) DDP run: ``torch.nn.SyncBatchNorm``'s
    computation without its CUDA kernels. Outside training, or in one process, it is a plain BatchNorm.
    (It is no subclass of ``torch.nn.SyncBatchNorm``, which DDP refuses on CPU.) Remembers the class it was
    converted from (``converted_from``) for :func:`revert_sync_batchnorm`."""

    converted_from: type = nn.BatchNorm2d

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group: Optional[Any] = None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.process_group = process_group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def _synchronises(self) -> bool:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return False
        return dist.get_world_size(self.process_group or dist.group.WORLD) > 1

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self._synchronises():
            return super().forward(input)
        self._check_input_dim(input)
        return self._forward_synchronised(input)

    def _forward_synchronised(self, x: torch.Tensor) -> torch.Tensor:
        """The per-channel sum and count all-reduced for the mean, then the sum of squared deviations for the
        (biased) variance; gradients flow back through both collectives (``torch.distributed.nn``)."""
        group = self.process_group or dist.group.WORLD
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        x32 = x.float()
        local = torch.cat([x32.sum(dims), x32.new_full((1,), x32.numel() // x32.shape[1])])
        total = all_reduce(local, group=group)
        count = total[-1]
        if count.item() <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)} "
                             "over all processes")
        mean = total[:-1] / count
        centred = x32 - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims), group=group) / count
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(var.detach() * (count / (count - 1)), alpha=factor)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


def _move_state(source: _BatchNorm, target: _BatchNorm) -> _BatchNorm:
    """``target`` with ``source``'s parameters and buffers (the same tensors) and training mode."""
    if source.affine:
        target.weight, target.bias = source.weight, source.bias
    target.running_mean, target.running_var = source.running_mean, source.running_var
    target.num_batches_tracked = source.num_batches_tracked
    target.train(source.training)
    if hasattr(source, "qconfig"):
        target.qconfig = source.qconfig
    return target


def _synchronised(module: nn.Module) -> bool:
    return isinstance(module, (nn.SyncBatchNorm, CpuSyncBatchNorm))


def convert_sync_batchnorm(module: nn.Module, device_type: str = "cpu",
                           process_group: Optional[Any] = None) -> nn.Module:
    """``module`` with every BatchNorm (1d/2d/3d) replaced by a synchronised one holding the same parameters
    and buffers: ``torch.nn.SyncBatchNorm`` for CUDA (``device_type``), :class:`CpuSyncBatchNorm` for CPU.
    Returns the module (a new one when ``module`` itself is a BatchNorm)."""
    if isinstance(module, _BatchNorm) and not _synchronised(module):
        cls = nn.SyncBatchNorm if device_type != "cpu" else CpuSyncBatchNorm
        synced = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
                     process_group)
        synced.converted_from = type(module)
        return _move_state(module, synced)
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, device_type, process_group))
    return module


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Undo :func:`convert_sync_batchnorm`: each synchronised BatchNorm it made becomes its original class
    again (``BatchNorm2d`` ...), with the same parameters and buffers."""
    if _synchronised(module) and hasattr(module, "converted_from"):
        plain = module.converted_from(module.num_features, module.eps, module.momentum, module.affine,
                                      module.track_running_stats)
        return _move_state(module, plain)
    for name, child in module.named_children():
        module.add_module(name, revert_sync_batchnorm(child))
    return module


def sync_batchnorm_layers(module: nn.Module) -> List[str]:
    """Names of the synchronised BatchNorms in ``module`` (torch's ``SyncBatchNorm`` or :class:`CpuSyncBatchNorm`)."""
    return [name for name, m in module.named_modules() if _synchronised(m)]
