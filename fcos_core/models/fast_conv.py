"""Faster weight gradients for the convs of eager CPU training (forward unchanged).

oneDNN's weight-gradient (backward-weights) pass is the slow part of a CPU training step at
batch 1 for two kinds of conv this network is made of:

* depthwise convs with kernels larger than 3x3: oneDNN's depthwise kernel handles 3x3 only, so
  5x5 falls back to its generic grouped-conv kernel, which pads every group to a 16x16 block
  and runs on one thread;
* 1x1 (pointwise) convs on channels-last tensors: the weight gradient is one matrix product of
  two views, ``grad_out[NHW, O]^T @ x[NHW, I]``; oneDNN's 1x1 backward-weights kernel stalls
  for ~4 ms per call at batch 1 with two threads and ``OMP_WAIT_POLICY=PASSIVE`` on shared
  cores (0.1 ms on one thread), where the GEMM takes 0.1-0.2 ms (see docs/benchmarks.md).

:func:`conv2d` runs such a conv through :class:`_FastWeightGradConv2d`: the forward and the
input gradient are the stock ``F.conv2d`` / ``convolution_backward`` calls (bit-identical), only
the weight gradient is computed the faster way -- the same sum in a different order, so it
agrees with oneDNN's to float32 rounding (relative ~1e-6; each is as close to the float64 value
as the other). Everywhere else, and in every traced, scripted, compiled or exported graph, it is
the plain module call, so graphs, quantization and state dicts see an ``nn.Conv2d``.

It lives in fcos-core so that every plugin made of such convs (fcos-plugin-efficientnet,
fcos-plugin-bifpn, third-party backbones) shares one implementation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

#: switch for A/B measurements (benchmarks/bench_backbone_neck.py --no-fast-weight-grad)
ENABLED = True


def depthwise_weight_grad(grad_out: Tensor, x: Tensor, kernel_size: tuple[int, int],
                          stride: tuple[int, int], padding: tuple[int, int]) -> Tensor:
    """Weight gradient of a depthwise conv (``groups == channels``, no dilation) as another
    depthwise conv: ``x`` convolved with ``grad_out`` as the kernel, dilated by the stride,
    gives ``dL/dw[c, i, j] = sum_{n,h,w} grad_out[n,c,h,w] * x_pad[n,c,h*s+i,w*s+j]``.

    Shape: grad_out [N, C, Ho, Wo], x [N, C, H, W] -> [C, 1, kh, kw].
    """
    n, c, h, w = x.shape
    kh, kw = kernel_size
    ho, wo = grad_out.shape[-2:]
    if n == 1:
        # [1, C, H, W] convolved per channel with the [C, 1, Ho, Wo] kernel grad_out[0]
        out = F.conv2d(x, grad_out.transpose(0, 1), None, 1, padding, stride, c)
    else:
        # the batch joins the channels: [1, N*C, H, W] with N*C kernels, summed over N below
        out = F.conv2d(x.reshape(1, n * c, h, w), grad_out.reshape(n * c, 1, ho, wo), None, 1,
                       padding, stride, n * c)
    # a stride that does not divide the padded size leaves one extra tap at the end
    out = out[..., :kh, :kw]
    if n == 1:
        return out.transpose(0, 1)
    return out.reshape(n, c, kh, kw).sum(0).unsqueeze(1)


def pointwise_weight_grad(grad_out: Tensor, x: Tensor) -> Tensor:
    """Weight gradient of a 1x1 conv (stride 1, no padding, no groups) as one GEMM over the
    channels-last views ``[N*H*W, C]`` (no copy when both tensors are channels-last).

    Shape: grad_out [N, O, H, W], x [N, I, H, W] -> [O, I, 1, 1].
    """
    o, i = grad_out.shape[1], x.shape[1]
    g2 = grad_out.permute(0, 2, 3, 1).reshape(-1, o)
    x2 = x.permute(0, 2, 3, 1).reshape(-1, i)
    return (g2.t() @ x2).view(o, i, 1, 1)


class _FastWeightGradConv2d(torch.autograd.Function):
    """``F.conv2d`` (no bias, no dilation) with the stock forward and input gradient and the
    weight gradient of :func:`depthwise_weight_grad` or :func:`pointwise_weight_grad`."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, stride: tuple[int, int],  # type: ignore[override]
                padding: tuple[int, int], groups: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.groups = stride, padding, groups
        return F.conv2d(x, weight, None, stride, padding, 1, groups)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, ctx.stride, ctx.padding, (1, 1), False, (0, 0),
                ctx.groups, (True, False, False))[0]
        if ctx.needs_input_grad[1]:
            if ctx.groups == 1:
                if grad_out.is_contiguous(memory_format=torch.channels_last):
                    grad_w = pointwise_weight_grad(grad_out, x)
                else:  # a gradient in another layout: the stock kernel, no copies
                    grad_w = torch.ops.aten.convolution_backward(
                        grad_out, x, weight, None, ctx.stride, ctx.padding, (1, 1), False,
                        (0, 0), 1, (False, True, False))[1]
            else:
                grad_w = depthwise_weight_grad(grad_out, x, tuple(weight.shape[-2:]),
                                               ctx.stride, ctx.padding)
        return grad_x, grad_w, None, None, None


def _kind(conv: nn.Conv2d, x: Tensor) -> bool:
    """Whether ``conv(x)`` is a depthwise conv with a kernel larger than 3x3 or a 1x1 conv on a
    channels-last input (the two cases :class:`_FastWeightGradConv2d` speeds up)."""
    kh, kw = conv.kernel_size
    if conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1:
        return kh * kw > 9  # oneDNN's depthwise backward-weights kernel covers 3x3
    return (conv.groups == 1 and kh == kw == 1 and conv.stride == (1, 1)
            and conv.padding == (0, 0)
            and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())


def use_fast_weight_grad(conv: nn.Module, x: Tensor) -> bool:
    """Whether :func:`conv2d` may replace ``conv(x)``: eager CPU float32 training (grad mode,
    trainable weight) of a plain ``nn.Conv2d`` of one of the two kinds above, and never while
    tracing, scripting, compiling or exporting (fake and proxy tensors fail the exact type
    test), under autocast, or when hooks watch the conv (a fused or QAT conv is not an
    ``nn.Conv2d``, so it keeps its own forward)."""
    if not ENABLED or type(conv) is not nn.Conv2d or type(x) is not torch.Tensor:
        return False
    w = conv.weight
    return (
        type(w) is nn.Parameter
        and w.requires_grad
        and torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype == w.dtype == torch.float32
        and x.dim() == 4
        and conv.bias is None
        and conv.dilation == (1, 1)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and not (conv._forward_hooks or conv._forward_pre_hooks or conv._backward_hooks
                 or conv._backward_pre_hooks)
        and _kind(conv, x)
        and not torch.jit.is_scripting()
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and not torch.is_autocast_enabled("cpu")
    )


def conv2d(conv: nn.Module, x: Tensor) -> Tensor:
    """``conv(x)``, through :class:`_FastWeightGradConv2d` where :func:`use_fast_weight_grad`
    allows it (same output, bit for bit)."""
    if use_fast_weight_grad(conv, x):
        return _FastWeightGradConv2d.apply(x, conv.weight, conv.stride, conv.padding,
                                           conv.groups)
    return conv(x)


def sequential_forward(seq: nn.Sequential, x: Tensor) -> Tensor:
    """``nn.Sequential.forward`` with every conv child called through :func:`conv2d`."""
    for module in seq:
        x = conv2d(module, x) if type(module) is nn.Conv2d else module(x)
    return x
