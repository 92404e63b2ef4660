"""Stand-ins for the backbone and neck plugins (written in parallel) and small-model builders.

The stand-ins honour the backbone/neck contract of docs/interfaces.md: the backbone maps
``[B, 3, H, W]`` to features ordered by stride and exposes ``out_strides``/``out_channels``;
the neck maps them to ``out_strides`` features of ``out_channels`` channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import pytest
import torch
from torch import nn

from fcos_core.hooks import hookimpl
from fcos_core.models.dynamic_target import DynamicFcosTarget
from fcos_core.models.fcos import FCOS
from fcos_core.models.head import FCOSHead
from fcos_core.models.losses.cross_entropy import CrossEntropyLoss
from fcos_core.models.losses.focal import FocalLoss
from fcos_core.models.losses.giou import GIoULoss
from fcos_core.models.post_process import FCOSMultiStrideFilter
from fcos_core.plugins import load_host
from fcos_core.schema import arg


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
                    stride2channels=dict.fromkeys(strides, channels),
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


@pytest.fixture
def tiny():
    """The stand-ins and the small-model builder (test modules cannot import conftest under
    ``--import-mode=importlib``)."""
    import types

    return types.SimpleNamespace(TinyBackbone=TinyBackbone, TinyNeck=TinyNeck,
                                 make_fcos=make_fcos)


# --- a config that builds the stand-ins through the registries -----------------------------


@attrs.frozen(kw_only=True)
class TinyBackboneArgs:
    """Test stand-in backbone."""

    out_strides: list[int] = arg(help="strides of the returned features")


@attrs.frozen(kw_only=True)
class TinyNeckArgs:
    """Test stand-in neck."""

    in_strides: list[int] = arg(help="strides of the incoming features")
    in_channels: list[int] = arg(help="channels of the incoming features")
    out_channels: int = arg(32, help="output channels")


class StandIns:
    """A test plugin registering the stand-in backbone and neck."""

    def __init__(self, backbone: type, neck: type) -> None:
        self.backbone, self.neck = backbone, neck

    @hookimpl
    def register_backbones(self, register):
        register("tiny_backbone", factory=self.backbone, schema=TinyBackboneArgs)

    @hookimpl
    def register_necks(self, register):
        register("tiny_neck", factory=self.neck, schema=TinyNeckArgs)


CONFIG = """
task_name: tiny
ckpt_dir: ./ckpt
vars:
  strides: [8, 16]
  head:
    type: FCOSHead
    num_classes: 4
    in_strides: ${vars.strides}
    out_strides: ${vars.strides}
    stride2channels: {8: 32, 16: 32}
    feat_channels: 32
    stacked_convs: 2
    int8_output: false
    int16_output: true
model:
  type: FCOS
  backbone: {type: tiny_backbone, out_strides: [8, 16]}
  neck: {type: tiny_neck, in_strides: [8, 16], in_channels: [16, 32], out_channels: 32}
  head: ${vars.head}
  targets:
    type: DynamicFcosTarget
    strides: ${vars.strides}
    cls_out_channels: 4
    background_label: 4
    topK: 10
    loss_cls: {type: FocalLoss, loss_name: cls, num_classes: 5, alpha: 0.25, gamma: 2.0,
               loss_weight: 1.0, reduction: none}
    loss_reg: {type: GIoULoss, loss_name: reg, loss_weight: 2.0, reduction: none}
  post_process:
    type: FCOSMultiStrideFilter
    strides: ${vars.strides}
    threshold: -2.944
    for_compile: false
    score_threshold: 0.05
    iou_threshold: 0.6
    max_shape: [64, 64]
  loss_cls: {type: FocalLoss, loss_name: cls, num_classes: 5, alpha: 0.25, gamma: 2.0,
             loss_weight: 1.0}
  loss_centerness: {type: CrossEntropyLoss, loss_name: centerness, use_sigmoid: true}
  loss_reg: {type: GIoULoss, loss_name: reg, loss_weight: 1.0}
deploy_model:
  type: FCOS
  backbone: {type: tiny_backbone, out_strides: [8, 16]}
  neck: {type: tiny_neck, in_strides: [8, 16], in_channels: [16, 32], out_channels: 32}
  head: ${vars.head}
  post_process: {type: FCOSMultiStrideFilter, strides: [8, 16], for_compile: true,
                 max_shape: [64, 64]}
"""


@pytest.fixture
def host_and_config(tmp_path):
    """A plugin host with the stand-ins registered, and the path of :data:`CONFIG`."""
    path = tmp_path / "tiny.yaml"
    path.write_text(CONFIG)
    host = load_host(entry_points=False,
                     plugins=[("test-stand-ins", StandIns(TinyBackbone, TinyNeck))])
    return host, path
