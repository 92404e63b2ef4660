"""Faster weight gradients for the convs of eager CPU training (forward unchanged).

oneDNN's weight-gradient (backward-weights) pass is the slow part of a CPU training step for
the kinds of conv this network is made of:

* depthwise convs with kernels larger than 3x3: oneDNN's depthwise kernel handles 3x3 only, so
  5x5 falls back to its generic grouped-conv kernel, which pads every group to a 16x16 block
  and runs on one thread;
* small depthwise 3x3 convs (the BiFPN's coarse levels): a fixed cost of ~0.2 ms a call; and
  for large ones, asking oneDNN for the input and the weight gradient in one call is slower
  than two calls (1.95 vs 1.31 ms on [1, 144, 128, 128], docs/benchmarks.md);
* 1x1 (pointwise) convs on channels-last tensors: the weight gradient is one matrix product of
  two views, ``grad_out[NHW, O]^T @ x[NHW, I]``; oneDNN's 1x1 backward-weights kernel stalls
  for ~4 ms per call at batch 1 with two threads and ``OMP_WAIT_POLICY=PASSIVE`` on shared
  cores (0.1 ms on one thread), where the GEMM takes 0.1-0.2 ms (see docs/benchmarks.md).

:func:`conv2d` runs such a conv through :class:`_FastWeightGradConv2d`: the forward and the
input gradient are the stock ``F.conv2d`` / ``convolution_backward`` calls (bit-identical), only
the weight gradient is computed another way: the C++ kernel ``fcos_kernels.depthwise_weight_grad``
(:mod:`fcos_core.models.cpu_kernels`) for channels-last depthwise convs, a depthwise conv of the
input with the output gradient where the kernel is not built, a GEMM for 1x1 convs. The same sum
in a different order, so it agrees with oneDNN's to float32 rounding (relative ~1e-6; each is as
close to the float64 value as the other). Everywhere else, and in every traced, scripted,
compiled or exported graph, it is the plain module call, so graphs, quantization and state
dicts see an ``nn.Conv2d``.

It lives in fcos-core so that every plugin made of such convs (fcos-plugin-efficientnet,
fcos-plugin-bifpn, third-party backbones) shares one implementation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from fcos_core.models import cpu_kernels, fast_batchnorm
from fcos_core.models.graph_capture import capturing_or_autocast

#: switch for A/B measurements (the "ours, stock ops" row of benchmarks/bench_backbone_neck.py)
ENABLED = True
#: a depthwise 3x3 weight gradient goes to the C++ kernel up to this many output elements;
#: above it oneDNN's own 3x3 kernel is faster (measured, docs/benchmarks.md)
DEPTHWISE_3X3_KERNEL_MAX_ELEMENTS = 1 << 18


def depthwise_weight_grad(
    grad_out: Tensor,
    x: Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> Tensor:
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
        out = F.conv2d(
            x.reshape(1, n * c, h, w),
            grad_out.reshape(n * c, 1, ho, wo),
            None,
            1,
            padding,
            stride,
            n * c,
        )
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
    def forward(
        ctx,
        x: Tensor,
        weight: Tensor,
        stride: tuple[int, int],
        padding: tuple[int, int],
        groups: int,
    ) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.groups = stride, padding, groups
        return F.conv2d(x, weight, None, stride, padding, 1, groups)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out,
                x,
                weight,
                None,
                ctx.stride,
                ctx.padding,
                (1, 1),
                False,
                (0, 0),
                ctx.groups,
                (True, False, False),
            )[0]
        if ctx.needs_input_grad[1]:
            if ctx.groups == 1:
                if grad_out.is_contiguous(memory_format=torch.channels_last):
                    grad_w = pointwise_weight_grad(grad_out, x)
                else:  # a gradient in another layout: the stock kernel, no copies
                    grad_w = torch.ops.aten.convolution_backward(
                        grad_out,
                        x,
                        weight,
                        None,
                        ctx.stride,
                        ctx.padding,
                        (1, 1),
                        False,
                        (0, 0),
                        1,
                        (False, True, False),
                    )[1]
            else:
                grad_w = _depthwise_weight_grad(grad_out, x, weight, ctx.stride, ctx.padding)
        return grad_x, grad_w, None, None, None


def _depthwise_weight_grad(
    grad_out: Tensor, x: Tensor, weight: Tensor, stride: tuple[int, int], padding: tuple[int, int]
) -> Tensor:
    """The fastest of the three ways for this depthwise conv (see the module docstring)."""
    kh, kw = weight.shape[-2:]
    cl = torch.channels_last
    if (
        x.is_contiguous(memory_format=cl)
        and cpu_kernels.available()
        and (kh * kw > 9 or grad_out.numel() <= DEPTHWISE_3X3_KERNEL_MAX_ELEMENTS)
    ):
        return torch.ops.fcos_kernels.depthwise_weight_grad(
            grad_out.contiguous(memory_format=cl),
            x,
            kh,
            kw,
            stride[0],
            stride[1],
            padding[0],
            padding[1],
            cpu_kernels.MIN_ELEMENTS_PER_THREAD,
        )
    if kh * kw > 9:
        return depthwise_weight_grad(grad_out, x, (kh, kw), stride, padding)
    return torch.ops.aten.convolution_backward(  # oneDNN's 3x3 kernel, asked for alone
        grad_out,
        x,
        weight,
        None,
        stride,
        padding,
        (1, 1),
        False,
        (0, 0),
        weight.shape[0],
        (False, True, False),
    )[1]


def _kind(conv: nn.Conv2d, x: Tensor) -> bool:
    """Whether ``conv(x)`` is a depthwise conv with a kernel larger than 3x3, a depthwise conv
    on a channels-last input, or a 1x1 conv on a channels-last input (the cases
    :class:`_FastWeightGradConv2d` speeds up)."""
    kh, kw = conv.kernel_size
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    if conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1:
        # oneDNN's depthwise backward-weights kernel covers 3x3 well, but for channels-last
        # inputs the C++ kernel or two separate oneDNN calls are faster still
        return kh * kw > 9 or channels_last
    return (
        conv.groups == 1
        and kh == kw == 1
        and conv.stride == (1, 1)
        and conv.padding == (0, 0)
        and channels_last
    )


def use_fast_weight_grad(conv: nn.Module, x: Tensor) -> bool:
    """Whether :func:`conv2d` may replace ``conv(x)``: eager CPU float32 training (grad mode,
    trainable weight) of a plain ``nn.Conv2d`` of one of the two kinds above, and never while
    tracing, scripting, compiling or exporting (fake and proxy tensors fail the exact type
    test), under autocast, or when hooks watch the conv (a fused or QAT conv is not an
    ``nn.Conv2d``, so it keeps its own forward)."""
    if not ENABLED or type(conv) is not nn.Conv2d or type(x) is not torch.Tensor:
        return False
    if capturing_or_autocast():  # before the tensor tests below
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
        and not (
            conv._forward_hooks
            or conv._forward_pre_hooks
            or conv._backward_hooks
            or conv._backward_pre_hooks
        )
        and _kind(conv, x)
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )


def conv2d(conv: nn.Module, x: Tensor) -> Tensor:
    """``conv(x)``, through :class:`_FastWeightGradConv2d` where :func:`use_fast_weight_grad`
    allows it (same output, bit for bit)."""
    if use_fast_weight_grad(conv, x):
        return _FastWeightGradConv2d.apply(x, conv.weight, conv.stride, conv.padding, conv.groups)
    return conv(x)


def sequential_forward(seq: nn.Sequential, x: Tensor) -> Tensor:
    """``nn.Sequential.forward`` for eager CPU training: every conv child is called through
    :func:`conv2d`, and a ``BatchNorm2d`` (with the ``ReLU`` right after it, if any) through
    the fused kernel of :mod:`fcos_core.models.fast_batchnorm` where it applies. Same
    outputs; in eval, traced, exported and quantized graphs the children run as they are."""
    modules = list(seq)
    i = 0
    while i < len(modules):
        module = modules[i]
        if type(module) is nn.Conv2d:
            x = conv2d(module, x)
        elif type(module) is nn.BatchNorm2d:
            relu = modules[i + 1] if i + 1 < len(modules) else None
            relu = relu if type(relu) is nn.ReLU else None
            x = fast_batchnorm.batch_norm_relu(module, x, relu)
            i += relu is not None  # the ReLU ran too
        else:
            x = module(x)
        i += 1
    return x
