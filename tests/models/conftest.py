"""Stand-ins for the backbone and neck plugins (written in parallel) and small-model builders.

The stand-ins honour the backbone/neck contract of docs/interfaces.md: the backbone maps
``[B, 3, H, W]`` to features ordered by stride and exposes ``out_strides``/``out_channels``;
the neck maps them to ``out_strides`` features of ``out_channels`` channels.
"""

from __future__ import annotations

from typing import Sequence

import pytest
import torch
from torch import nn

from fcos_core.models.dynamic_target import DynamicFcosTarget
from fcos_core.models.fcos import FCOS
from fcos_core.models.head import FCOSHead
from fcos_core.models.losses.cross_entropy import CrossEntropyLoss
from fcos_core.models.losses.focal import FocalLoss
from fcos_core.models.losses.giou import GIoULoss
from fcos_core.models.post_process import FCOSMultiStrideFilter


class TinyBackbone(nn.Module):
    """Stride-2 conv+BN+ReLU stages; returns the features at ``out_strides``."""

    def __init__(self, out_strides: Sequence[int] = (8, 16), width: int = 16) -> None:
        super().__init__()
        self.out_strides = list(out_strides)
        n = max(out_strides).bit_length() - 1  # number of stride-2 stages
        chans = [3] + [min(width * 2 ** max(i - 2, 0), 64) for i in range(n)]
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(chans[i], chans[i + 1], 3, 2, 1, bias=False),
                          nn.BatchNorm2d(chans[i + 1]), nn.ReLU())
            for i in range(n))
        self._take = {2 ** (i + 1): i for i in range(n)}
        self.out_channels = [chans[self._take[s] + 1] for s in self.out_strides]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for s in self.stages:
            x = s(x)
            feats.append(x)
        return [feats[self._take[s]] for s in self.out_strides]


class TinyNeck(nn.Module):
    """1x1 conv+BN+ReLU per level to a common width (a minimal FPN stand-in)."""

    def __init__(self, in_strides: Sequence[int], in_channels: Sequence[int],
                 out_channels: int = 32) -> None:
        super().__init__()
        self.in_strides = list(in_strides)
        self.out_strides = list(in_strides)
        self.out_channels = out_channels
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, out_channels, 1, bias=False),
                          nn.BatchNorm2d(out_channels), nn.ReLU())
            for c in in_channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [m(f) for m, f in zip(self.lateral, feats)]


def make_fcos(num_classes: int = 3, strides: Sequence[int] = (8, 16), channels: int = 32,
              stacked_convs: int = 2, train: bool = True, topk: int = 10,
              for_compile: bool = False, upscale_bbox_pred: bool = False) -> FCOS:
    """A small FCOS with stand-in backbone/neck, built like the seed config."""
    backbone = TinyBackbone(strides)
    neck = TinyNeck(strides, backbone.out_channels, channels)
    head = FCOSHead(num_classes=num_classes, in_strides=strides, out_strides=strides,
                    stride2channels={s: channels for s in strides},
                    upscale_bbox_pred=upscale_bbox_pred, feat_channels=channels,
                    stacked_convs=stacked_convs, int8_output=False, int16_output=True)
    post = FCOSMultiStrideFilter(strides=strides, for_compile=for_compile)
    if not train:
        return FCOS(backbone, neck, head, post_process=post)
    targets = DynamicFcosTarget(
        strides=strides, cls_out_channels=num_classes, background_label=num_classes, topK=topk,
        loss_cls=FocalLoss(num_classes=num_classes + 1, reduction="none"),
        loss_reg=GIoULoss(loss_weight=2.0, reduction="none"))
    return FCOS(backbone, neck, head, targets=targets, post_process=post,
                loss_cls=FocalLoss(num_classes=num_classes + 1),
                loss_centerness=CrossEntropyLoss(use_sigmoid=True, loss_name="centerness"),
                loss_reg=GIoULoss())


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests share 2 cores with other jobs; one intra-op thread keeps them predictable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
