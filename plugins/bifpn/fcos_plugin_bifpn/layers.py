"""Building blocks of the BiFPN: resampling, the two fusion rules, and the fusion node.

Only operations an int8 accelerator runs are used: conv, BatchNorm, ReLU (or SiLU when asked),
tensor add/mul, 2x2 max-pool and x2 nearest upsampling. Every one is a module, so
``torch.export`` and PT2E quantization see a plain graph, and conv -> BN pairs are adjacent
(``proj.conv``/``proj.bn``, ``conv.pw``/``conv.bn``) so they fuse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from fcos_core.models.fast_conv import sequential_forward

#: separates fused weights from zero, as EfficientDet does
FAST_ATTENTION_EPS = 1e-4


def make_activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "swish":
        return nn.SiLU(inplace=True)
    raise ValueError(f"activation must be 'relu' or 'swish', got {name!r}")


class ConvBN(nn.Sequential):
    """1x1 ``conv`` (no bias) -> ``bn``: matches channels. [B, Cin, H, W] -> [B, Cout, H, W]."""

    def __init__(
        self, in_channels: int, out_channels: int, bn_kwargs: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, **(bn_kwargs or {}))

    def forward(self, x: Tensor) -> Tensor:
        # eager CPU training: faster weight gradient (see fcos_core.models.fast_conv)
        return sequential_forward(self, x)


class SeparableConvBN(nn.Sequential):
    """Depthwise 3x3 ``dw`` -> pointwise 1x1 ``pw`` -> ``bn`` (no biases; BN supplies one).

    Shape: [B, C, H, W] -> [B, C, H, W].
    """

    def __init__(self, channels: int, bn_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.pw = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels, **(bn_kwargs or {}))

    def forward(self, x: Tensor) -> Tensor:
        # eager CPU training: faster weight gradient (see fcos_core.models.fast_conv)
        return sequential_forward(self, x)


class Resample(nn.Sequential):
    """Bring one input of a fusion node to the node's channels and size.

    ``proj`` (1x1 conv + BN) when the channels differ, then ``up`` (x2 nearest) for a coarser
    input or ``down`` (2x2 max-pool, stride 2) for a finer one. With neither it is the identity.

    Shape: [B, Cin, H, W] -> [B, Cout, H * 2^scale, W * 2^scale], ``scale`` in {-1, 0, 1}.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        scale: int,
        bn_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if scale not in (-1, 0, 1):
            raise ValueError(f"a BiFPN input is resized by x2, x1 or x0.5, got 2**{scale}")
        if in_channels != out_channels:
            self.proj = ConvBN(in_channels, out_channels, bn_kwargs)
        if scale == 1:
            self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        elif scale == -1:
            self.down = nn.MaxPool2d(kernel_size=2, stride=2)


class SumFusion(nn.Module):
    """``bifpn_sum``: x_0 + x_1 (+ x_2). Plain adds quantize without rescaling weights."""

    def __init__(self, num_inputs: int) -> None:
        super().__init__()
        self.num_inputs = num_inputs

    def forward(self, xs: Sequence[Tensor]) -> Tensor:
        out = xs[0] + xs[1]
        for x in xs[2:]:
            out = out + x
        return out


class FastAttentionFusion(nn.Module):
    """``bifpn_fa``: EfficientDet's fast normalised fusion, sum_i w_i x_i with
    w = relu(v) / (sum(relu(v)) + 1e-4) and learned ``v`` (initialised to ones)."""

    def __init__(self, num_inputs: int) -> None:
        super().__init__()
        self.num_inputs = num_inputs
        self.weight = nn.Parameter(torch.ones(num_inputs))
        self.clamp = nn.ReLU()

    def normalized_weights(self) -> Tensor:
        """The non-negative weights actually applied, shape [num_inputs], summing to < 1."""
        w = self.clamp(self.weight)
        return w / (w.sum() + FAST_ATTENTION_EPS)

    def forward(self, xs: Sequence[Tensor]) -> Tensor:
        w = self.normalized_weights()
        out = xs[0] * w[0]
        for i in range(1, self.num_inputs):
            out = out + xs[i] * w[i]
        return out


class FusionNode(nn.Module):
    """One BiFPN node: resample every input, fuse, then activation -> separable conv + BN.

    Args:
        in_channels: channels of each input.
        scales: per input, log2 of the resize factor (1: upsample x2, -1: max-pool /2, 0: none).
        channels: output channels.
        fpn_name: ``"bifpn_sum"`` or ``"bifpn_fa"``.
        activation: ``"relu"`` or ``"swish"``.

    Shape: inputs [B, in_channels[i], H_i, W_i] with H_i * 2^scales[i] == H -> [B, channels, H, W].
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        scales: Sequence[int],
        channels: int,
        fpn_name: str,
        activation: str,
        bn_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(scales) or len(in_channels) < 2:
            raise ValueError("a fusion node takes two or more inputs, one scale for each")
        self.inputs = nn.ModuleList(
            Resample(c, channels, s, bn_kwargs) for c, s in zip(in_channels, scales)
        )
        if fpn_name == "bifpn_sum":
            self.fuse: nn.Module = SumFusion(len(in_channels))
        elif fpn_name == "bifpn_fa":
            self.fuse = FastAttentionFusion(len(in_channels))
        else:
            raise ValueError(f"fpn_name must be 'bifpn_sum' or 'bifpn_fa', got {fpn_name!r}")
        self.act = make_activation(activation)
        self.conv = SeparableConvBN(channels, bn_kwargs)

    def forward(self, xs: Sequence[Tensor]) -> Tensor:
        resized = [resample(x) for resample, x in zip(self.inputs, xs)]
        return self.conv(self.act(self.fuse(resized)))
