"""Tiny backbone, neck and head stand-ins for tests (imports torch; not re-exported by
:mod:`fcos_core.testing`, which stays torch-free).

They honour the contracts of docs/interfaces.md at a size where a forward pass takes
milliseconds on a CPU:

* :class:`TinyBackbone` maps ``img [B, 3, H, W]`` to one feature per ``out_strides`` entry,
  ``[B, out_channels[i], H / s_i, W / s_i]``, and exposes ``out_strides``/``out_channels``.
* :class:`TinyNeck` maps those features to ``out_strides`` features of ``out_channels``
  channels each (same spatial sizes).
* :class:`TinyHead` maps them to FCOSHead's flat tuple ``(cls_0..cls_{S-1}, box_0..box_{S-1},
  ctr_0..ctr_{S-1})`` with shapes ``[B, C, H_s, W_s]``, ``[B, 4, H_s, W_s]`` (non-negative),
  ``[B, 1, H_s, W_s]``.

Registered as components by :class:`fcos_core.testing.standin_plugin.StandIns`
(``tiny_backbone``, ``tiny_neck``, ``tiny_head``), so config-driven tests can build them too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _cbr(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> list[nn.Module]:
    """conv (no bias) + BN + ReLU, as a list so callers can append to the stage."""
    return [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    ]


class Residual(nn.Module):
    """MBConv-like residual block: ``x + (dw3x3-BN-ReLU -> pw1x1-BN)(x)``, shape-preserving
    ``[B, C, H, W] -> [B, C, H, W]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x + self.body(x)
        return out


class TinyBackbone(nn.Module):
    """Stride-2 conv+BN+ReLU stages: ``img [B, 3, H, W]`` -> ``[feat_s for s in out_strides]``
    with ``feat_s`` of shape ``[B, out_channels[i], ceil(H / s), ceil(W / s)]``.

    Args:
        out_strides: strides of the returned features (powers of two >= 2, increasing).
        width: channel base of the default schedule: ``min(width * 2**max(i - 2, 0), 64)``
            channels after stage ``i`` (stage ``i`` ends at stride ``2**(i+1)``).
        channels: explicit channels per stage (overrides ``width``); one per stage up to
            ``max(out_strides)``.
        residual_at: strides whose stage ends with a :class:`Residual` block (depthwise conv
            and a residual add, for quantization and export tests).
    """

    def __init__(
        self,
        out_strides: Sequence[int] = (8, 16),
        width: int = 16,
        channels: Sequence[int] | None = None,
        residual_at: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.out_strides = [int(s) for s in out_strides]
        if (
            not self.out_strides
            or any(s < 2 or s & (s - 1) for s in self.out_strides)
            or self.out_strides != sorted(set(self.out_strides))
        ):
            raise ValueError(
                f"out_strides must be increasing powers of two >= 2, got {list(out_strides)}"
            )
        n = max(self.out_strides).bit_length() - 1  # number of stride-2 stages
        if channels is None:
            channels = [min(width * 2 ** max(i - 2, 0), 64) for i in range(n)]
        if len(channels) != n:
            raise ValueError(
                f"channels needs one entry per stage ({n} up to stride "
                f"{max(self.out_strides)}), got {list(channels)}"
            )
        chans = [3, *[int(c) for c in channels]]
        stages = []
        for i in range(n):
            layers = _cbr(chans[i], chans[i + 1], 3, 2)
            if 2 ** (i + 1) in residual_at:
                layers.append(Residual(chans[i + 1]))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self._take = {2 ** (i + 1): i for i in range(n)}
        self.out_channels = [chans[self._take[s] + 1] for s in self.out_strides]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return [feats[self._take[s]] for s in self.out_strides]


class TinyNeck(nn.Module):
    """``[feat_s for s in in_strides]`` -> as many ``[B, out_channels, H_s, W_s]`` features.

    Args:
        in_strides: strides of the incoming features (increasing); also the output strides.
        in_channels: channels of the incoming features.
        out_channels: channels of every output.
        fusion: ``"lateral"``: a 1x1 conv+BN+ReLU per level (a minimal FPN); ``"bifpn"``: one
            BiFPN-like pass, top-down (nearest x2 upsample + add + ReLU -> separable conv + BN)
            then bottom-up (2x2 max-pool + add + ReLU -> separable conv + BN); needs
            ``in_channels`` all equal to ``out_channels``.
    """

    def __init__(
        self,
        in_strides: Sequence[int],
        in_channels: Sequence[int],
        out_channels: int = 32,
        fusion: str = "lateral",
    ) -> None:
        super().__init__()
        if len(in_strides) != len(in_channels):
            raise ValueError(
                f"in_strides {list(in_strides)} and in_channels "
                f"{list(in_channels)} differ in length"
            )
        self.in_strides = [int(s) for s in in_strides]
        self.out_strides = list(self.in_strides)
        self.out_channels = int(out_channels)
        self.fusion = fusion
        c = self.out_channels
        if fusion == "lateral":
            self.lateral = nn.ModuleList(nn.Sequential(*_cbr(int(ci), c, 1)) for ci in in_channels)
        elif fusion == "bifpn":
            if any(int(ci) != c for ci in in_channels):
                raise ValueError(
                    f"fusion 'bifpn' needs in_channels equal to out_channels={c}, "
                    f"got {list(in_channels)}"
                )
            n = len(self.in_strides)
            self.td = nn.ModuleList(self._sep(c) for _ in range(n - 1))
            self.bu = nn.ModuleList(self._sep(c) for _ in range(n - 1))
        else:
            raise ValueError(f"fusion must be 'lateral' or 'bifpn', got {fusion!r}")

    @staticmethod
    def _sep(c: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c),
        )

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.fusion == "lateral":
            return [m(f) for m, f in zip(self.lateral, feats)]
        p = list(feats)
        for i in range(len(p) - 2, -1, -1):  # top-down
            p[i] = self.td[i](
                F.relu(p[i] + F.interpolate(p[i + 1], scale_factor=2.0, mode="nearest"))
            )
        for i in range(1, len(p)):  # bottom-up
            p[i] = self.bu[i - 1](F.relu(p[i] + F.max_pool2d(p[i - 1], 2)))
        return p


class TinyHead(nn.Module):
    """FCOS-shaped head: ``[feat_s [B, in_channels, H_s, W_s] for s in in_strides]`` ->
    ``(cls_0..cls_{S-1} [B, num_classes, H_s, W_s], box_0..box_{S-1} [B, 4, H_s, W_s] >= 0,
    ctr_0..ctr_{S-1} [B, 1, H_s, W_s])``.

    One 3x3 conv+ReLU tower shared by all levels, then 3x3 predictors (cls, box with ReLU,
    centerness). Exposes ``num_classes``, ``in_strides``, ``out_strides`` and
    ``stride2channels`` like FCOSHead, so ``FCOS`` checks it the same way.
    """

    def __init__(
        self,
        num_classes: int,
        in_strides: Sequence[int],
        in_channels: int = 32,
        feat_channels: int = 16,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.in_strides = [int(s) for s in in_strides]
        self.out_strides = list(self.in_strides)
        self.stride2channels = {s: int(in_channels) for s in self.in_strides}
        self.tower = nn.Sequential(nn.Conv2d(in_channels, feat_channels, 3, 1, 1), nn.ReLU())
        self.conv_cls = nn.Conv2d(feat_channels, self.num_classes, 3, 1, 1)
        self.conv_reg = nn.Conv2d(feat_channels, 4, 3, 1, 1)
        self.conv_centerness = nn.Conv2d(feat_channels, 1, 3, 1, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if len(feats) != len(self.in_strides):
            raise ValueError(
                f"TinyHead got {len(feats)} features, expected one per in_stride {self.in_strides}"
            )
        towers = [self.tower(f) for f in feats]
        return (
            *[self.conv_cls(t) for t in towers],
            *[F.relu(self.conv_reg(t)) for t in towers],
            *[self.conv_centerness(t) for t in towers],
        )
