"""Synchronised BatchNorm that also works on CPU (gloo), where torch's SyncBatchNorm refuses.

In training mode with more than one process, the batch mean and variance are computed over the
whole global batch: the per-channel sums are all-reduced with the differentiable
``torch.distributed.nn.functional.all_reduce``, whose backward all-reduces the gradients too.
Combined with DDP's gradient averaging this gives the gradient of BatchNorm over the global
batch, so N processes with batch B train like one process with batch N*B. The mean is reduced
first and the variance from the centred values second (two reductions, no catastrophic
cancellation of E[x^2] - E[x]^2).

On CUDA, :func:`convert_sync_batchnorm` uses torch's own (fused) ``nn.SyncBatchNorm``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class CpuSyncBatchNorm(_BatchNorm):
    """BatchNorm over the global batch of all processes; same parameters and buffers as
    ``nn.BatchNorm{1,2,3}d`` (checkpoints move freely between the two)."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def _synchronised(self) -> bool:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return False
        return dist.get_world_size(self.process_group) > 1

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if not self._synchronised():
            return super().forward(input)
        from torch.distributed.nn.functional import all_reduce

        c = input.shape[1]
        dims = [0, *range(2, input.dim())]
        shape = [1, c] + [1] * (input.dim() - 2)
        count = torch.tensor([input.numel() / c], dtype=input.dtype, device=input.device)
        sums = all_reduce(torch.cat([input.sum(dims), count]), group=self.process_group)
        n = sums[c]
        mean = sums[:c] / n
        centred = input - mean.reshape(shape)
        sq = all_reduce((centred * centred).sum(dims), group=self.process_group)
        var = sq / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                unbiased = var.detach() * (n.detach() / (n.detach() - 1).clamp(min=1))
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
        out = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        return out

    @classmethod
    def convert(cls, module: nn.Module, process_group: Any = None) -> nn.Module:
        """Replace every BatchNorm{1,2,3}d in ``module`` (recursively), keeping the weights."""
        out = module
        if isinstance(module, _BatchNorm) and not isinstance(module, cls):
            out = cls(
                module.num_features,
                module.eps,
                module.momentum,
                module.affine,
                module.track_running_stats,
                process_group,
            )
            if module.affine:
                with torch.no_grad():
                    out.weight = module.weight
                    out.bias = module.bias
            if module.track_running_stats:
                out.running_mean = module.running_mean
                out.running_var = module.running_var
                out.num_batches_tracked = module.num_batches_tracked
            out.training = module.training
        for name, child in module.named_children():
            out.add_module(name, cls.convert(child, process_group))
        return out


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Synchronised BatchNorm for ``device``: torch's on CUDA, :class:`CpuSyncBatchNorm` else."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return CpuSyncBatchNorm.convert(model)
