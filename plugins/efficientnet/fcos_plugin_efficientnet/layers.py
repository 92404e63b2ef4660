"""Building blocks of EfficientNet: conv-BN-activation, squeeze-excitation, drop-connect, MBConv.

Every block is a plain module graph (``nn.Conv2d`` -> ``nn.BatchNorm2d`` -> activation module,
tensor ``+`` for the residual) so that conv-BN(-ReLU) fusion and PT2E quantization see the
patterns they know, and nothing in ``forward`` depends on tensor values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from fcos_core.models.fast_conv import sequential_forward

#: activation name -> module class (swish is SiLU; hswish is x * relu6(x + 3) / 6)
ACTIVATIONS: dict[str, Callable[..., nn.Module]] = {
    "relu": nn.ReLU,
    "swish": nn.SiLU,
    "hswish": nn.Hardswish,
}


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name](inplace=True)


class ConvBNAct(nn.Sequential):
    """``conv`` (no bias) -> ``bn`` -> optional ``act``; 'same' padding for odd kernels.

    In eager CPU training the conv's weight gradient may be computed by
    :mod:`fcos_core.models.fast_conv` (same forward; a plain module call in every
    traced or exported graph).

    Shape: [B, in_channels, H, W] -> [B, out_channels, ceil(H / stride), ceil(W / stride)].
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        activation: str | None = "relu",
        bn_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding=(kernel_size - 1) // 2,
            groups=groups,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels, **(bn_kwargs or {}))
        if activation is not None:
            self.act = make_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        return sequential_forward(self, x)


class SqueezeExcite(nn.Module):
    """Channel attention: x * sigmoid(fc2(act(fc1(mean_hw(x))))), fc1/fc2 as 1x1 convs.

    Shape: [B, C, H, W] -> [B, C, H, W].
    """

    def __init__(self, channels: int, squeeze_channels: int, activation: str) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.act = make_activation(activation)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        scale = self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))
        return x * scale


class DropConnect(nn.Module):
    """Stochastic depth: in training, zero the whole residual branch of a sample with
    probability ``p`` and scale the survivors by 1 / (1 - p). The identity in eval mode and
    whenever ``p == 0`` (set it to 0 before ``torch.export`` of a training graph, otherwise
    the random mask would be traced into the graph).

    Shape: [B, ...] -> [B, ...].
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-connect probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        # branches on module state only (training flag and a float), never on tensor values
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
        return x * mask.bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MBConv(nn.Module):
    """Mobile inverted bottleneck: expand 1x1 -> depthwise kxk (stride) -> [SE] -> project 1x1,
    plus the input when stride is 1 and channels do not change.

    Submodules: ``expand`` (``nn.Identity`` when the expansion adds no channels),
    ``depthwise``, ``se`` (``nn.Identity`` without ``use_se``), ``project`` (no activation),
    ``drop``.

    Shape: [B, in_channels, H, W] -> [B, out_channels, ceil(H / stride), ceil(W / stride)].
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        expanded_channels: int,
        kernel_size: int,
        stride: int,
        activation: str,
        use_se: bool,
        drop_connect: float,
        bn_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"MBConv stride must be 1 or 2, got {stride}")
        self.use_residual = stride == 1 and in_channels == out_channels
        self.expand: nn.Module = nn.Identity()
        if expanded_channels != in_channels:
            self.expand = ConvBNAct(
                in_channels, expanded_channels, 1, activation=activation, bn_kwargs=bn_kwargs
            )
        self.depthwise = ConvBNAct(
            expanded_channels,
            expanded_channels,
            kernel_size,
            stride,
            groups=expanded_channels,
            activation=activation,
            bn_kwargs=bn_kwargs,
        )
        self.se: nn.Module = nn.Identity()
        if use_se:
            # the squeeze width follows the block input, as in the paper and torchvision
            self.se = SqueezeExcite(expanded_channels, max(1, in_channels // 4), activation)
        self.project = ConvBNAct(
            expanded_channels, out_channels, 1, activation=None, bn_kwargs=bn_kwargs
        )
        self.drop = DropConnect(drop_connect if self.use_residual else 0.0)

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        if self.use_residual:
            out = self.drop(out) + x
        return out
