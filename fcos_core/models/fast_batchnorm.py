"""Fused BatchNorm2d(+ReLU) for eager CPU training on channels-last tensors (a C++ kernel).

Why: in this network every conv is followed by a BatchNorm and most by a ReLU, and on CPU
these memory-bound ops were a third of a training step (docs/benchmarks.md). ATen's
channels-last batch norm makes separate passes for the statistics, the normalisation, the ReLU
and the ReLU's backward, and opens an OpenMP region for each even on a [1, 64, 8, 8] tensor,
where waking the second thread under ``OMP_WAIT_POLICY=PASSIVE`` costs ~0.2 ms, 40x the work.
``csrc/batch_norm_act.cpp`` does each direction in two passes over the ``[N*H*W, C]`` matrix,
fuses the ReLU and its mask, and uses the second thread only for chunks of at least
``cpu_kernels.MIN_ELEMENTS_PER_THREAD`` elements.

It is also more accurate than ATen's float32 kernel: block sums in float joined in double and
a shifted variance; tests compare both against float64 autograd.

The kernel is built on first use (:mod:`fcos_core.models.cpu_kernels`); where it cannot be
built, or ``FCOS_CPU_KERNELS=0`` is set, the plain modules run. Only eager CPU float32 training
of a plain ``nn.BatchNorm2d`` on a channels-last input takes this path; eval, SyncBatchNorm,
QAT, traced, scripted, compiled and exported graphs see the stock modules.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from fcos_core.models import cpu_kernels
from fcos_core.models.graph_capture import capturing_or_autocast

#: switch for A/B measurements (the "ours, stock ops" row of benchmarks/bench_backbone_neck.py)
#: and tests
ENABLED = True


class _BatchNormAct(torch.autograd.Function):
    """Training-mode ``batch_norm`` (+ ReLU) through ``torch.ops.fcos_kernels``; updates the
    running statistics in place like ``F.batch_norm``."""

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        running_mean: Tensor,
        running_var: Tensor,
        momentum: float,
        eps: float,
        relu: bool,
    ) -> Tensor:
        y, mean, invstd = torch.ops.fcos_kernels.batch_norm_act_forward(
            x,
            weight,
            bias,
            running_mean,
            running_var,
            momentum,
            eps,
            relu,
            cpu_kernels.MIN_ELEMENTS_PER_THREAD,
        )
        # the backward recomputes the ReLU's mask from x (it never reads y)
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        ctx.relu = relu
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, weight, bias, mean, invstd = ctx.saved_tensors
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
        gx, gw, gb = torch.ops.fcos_kernels.batch_norm_act_backward(
            grad_out, x, weight, bias, mean, invstd, ctx.relu, cpu_kernels.MIN_ELEMENTS_PER_THREAD
        )
        return gx, gw, gb, None, None, None, None, None


def use_fused_batch_norm(bn: nn.Module, x: Tensor) -> bool:
    """Whether :func:`batch_norm_act` may replace ``bn(x)``: eager CPU float32 training of a
    plain ``nn.BatchNorm2d`` (affine, tracking running statistics, no hooks) on a
    channels-last 4-D input with more than one value per channel; never while tracing,
    scripting, compiling or exporting, under autocast, or once the kernel failed to build."""
    if not ENABLED or type(bn) is not nn.BatchNorm2d or type(x) is not torch.Tensor:
        return False
    if capturing_or_autocast():  # before the tensor tests below
        return False
    if not (
        bn.training
        and bn.affine
        and bn.track_running_stats
        and bn.running_mean is not None
        and bn.running_var is not None
        and bn.num_batches_tracked is not None
    ):
        return False
    w, b = bn.weight, bn.bias
    ok = (
        type(w) is nn.Parameter
        and type(b) is nn.Parameter
        and torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype == w.dtype == b.dtype == bn.running_mean.dtype == torch.float32
        and x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and w.is_contiguous()
        and b.is_contiguous()
        and bn.running_mean.is_contiguous()
        and bn.running_var.is_contiguous()
        and x.numel() > x.shape[1] > 0
        and not (
            bn._forward_hooks
            or bn._forward_pre_hooks
            or bn._backward_hooks
            or bn._backward_pre_hooks
        )
    )
    return ok and cpu_kernels.available()


def batch_norm_act(bn: nn.BatchNorm2d, x: Tensor, relu: bool) -> Tensor:
    """``relu(bn(x))`` (or ``bn(x)``) in training mode through the fused kernel; the caller
    checked :func:`use_fused_batch_norm`. Momentum ``None`` (a cumulative average) and
    ``num_batches_tracked`` behave as in ``nn.BatchNorm2d``."""
    bn.num_batches_tracked.add_(1)  # type: ignore[union-attr]  # tracked: checked by the caller
    if bn.momentum is None:
        factor = 1.0 / float(bn.num_batches_tracked)  # type: ignore[arg-type]
    else:
        factor = bn.momentum
    return _BatchNormAct.apply(
        x, bn.weight, bn.bias, bn.running_mean, bn.running_var, factor, bn.eps, relu
    )


def batch_norm_relu(bn: nn.Module, x: Tensor, relu: nn.Module | None = None) -> Tensor:
    """``relu(bn(x))`` (``bn(x)`` when ``relu`` is None) for a model's forward: through the
    fused kernel where :func:`use_fused_batch_norm` allows it and ``relu`` is an ``nn.ReLU``,
    else the modules themselves."""
    if (relu is None or type(relu) is nn.ReLU) and use_fused_batch_norm(bn, x):
        return batch_norm_act(bn, x, relu is not None)  # type: ignore[arg-type]
    x = bn(x)
    return x if relu is None else relu(x)
