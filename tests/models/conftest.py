"""Small-model builders on the testing kit's stand-in backbone and neck
(:mod:`fcos_core.testing.standins`, which documents their shapes and the contract of
docs/interfaces.md they honour)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from fcos_core.models.dynamic_target import DynamicFcosTarget
from fcos_core.models.fcos import FCOS
from fcos_core.models.head import FCOSHead
from fcos_core.models.losses.cross_entropy import CrossEntropyLoss
from fcos_core.models.losses.focal import FocalLoss
from fcos_core.models.losses.giou import GIoULoss
from fcos_core.models.post_process import FCOSMultiStrideFilter
from fcos_core.testing.standin_plugin import StandIns
from fcos_core.testing.standins import TinyBackbone, TinyNeck


def make_fcos(
    num_classes: int = 3,
    strides: Sequence[int] = (8, 16),
    channels: int = 32,
    stacked_convs: int = 2,
    train: bool = True,
    topk: int = 10,
    for_compile: bool = False,
    upscale_bbox_pred: bool = False,
) -> FCOS:
    """A small FCOS with stand-in backbone/neck, built like the seed config."""
    backbone = TinyBackbone(strides)
    neck = TinyNeck(strides, backbone.out_channels, channels)
    head = FCOSHead(
        num_classes=num_classes,
        in_strides=strides,
        out_strides=strides,
        stride2channels=dict.fromkeys(strides, channels),
        upscale_bbox_pred=upscale_bbox_pred,
        feat_channels=channels,
        stacked_convs=stacked_convs,
        int8_output=False,
        int16_output=True,
    )
    post = FCOSMultiStrideFilter(strides=strides, for_compile=for_compile)
    if not train:
        return FCOS(backbone, neck, head, post_process=post)
    targets = DynamicFcosTarget(
        strides=strides,
        cls_out_channels=num_classes,
        background_label=num_classes,
        topK=topk,
        loss_cls=FocalLoss(num_classes=num_classes + 1, reduction="none"),
        loss_reg=GIoULoss(loss_weight=2.0, reduction="none"),
    )
    return FCOS(
        backbone,
        neck,
        head,
        targets=targets,
        post_process=post,
        loss_cls=FocalLoss(num_classes=num_classes + 1),
        loss_centerness=CrossEntropyLoss(use_sigmoid=True, loss_name="centerness"),
        loss_reg=GIoULoss(),
    )


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

    return types.SimpleNamespace(TinyBackbone=TinyBackbone, TinyNeck=TinyNeck, make_fcos=make_fcos)


# --- a config that builds the stand-ins through the registries -----------------------------

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
def host_and_config(tmp_path, fcos_host):
    """A plugin host with the stand-ins registered, and the path of :data:`CONFIG`."""
    path = tmp_path / "tiny.yaml"
    path.write_text(CONFIG)
    host = fcos_host(("test-stand-ins", StandIns()))
    return host, path
