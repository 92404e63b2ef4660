"""Argument schemas of the built-in model components (torch-free: imported at start-up).

Field names and defaults follow the reference HAT config (FCOS-EfficientNetB0); each field's
``help`` says what it does. The factories in the sibling modules receive these fields as keyword
arguments and re-check combinations that a type cannot express (raising ``ValueError``).
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from fcos_core.schema import arg, component

Reduction = Literal["none", "mean", "sum"]


@attrs.frozen(kw_only=True)
class FCOSArgs:
    """FCOS detector: backbone, neck and head, plus targets, losses and post-process."""

    backbone: Any = component("backbones", help="feature extractor (exposes out_strides)")
    neck: Any = component("necks", help="feature pyramid on the backbone's features")
    head: Any = component("heads", help="per-stride classification/box/centerness head")
    targets: Any = component("targets", None, help="training target assigner (null: deploy)")
    post_process: Any = component(
        "post_processes", None, help="turns head outputs into detections (null: raw outputs)"
    )
    loss_cls: Any = component("losses", None, help="classification loss (e.g. FocalLoss)")
    loss_centerness: Any = component(
        "losses", None, help="centerness loss (e.g. CrossEntropyLoss, sigmoid)"
    )
    loss_reg: Any = component("losses", None, help="box regression loss (e.g. GIoULoss)")


@attrs.frozen(kw_only=True)
class FCOSHeadArgs:
    """FCOS head: separable-conv towers shared across strides with one BatchNorm per stride."""

    num_classes: int = arg(help="number of object classes (no background channel)")
    in_strides: list[int] = arg(help="strides of the incoming features, increasing")
    out_strides: list[int] = arg(help="strides the head predicts at (a subset of in_strides)")
    stride2channels: dict[int, int] = arg(help="stride -> channels of the incoming feature")
    upscale_bbox_pred: bool = arg(
        False,
        help="in eval, multiply box outputs by the stride "
        "(outputs in pixels instead of stride units)",
    )
    feat_channels: int = arg(256, help="channels of the tower convs")
    stacked_convs: int = arg(4, help="number of separable convs in each tower")
    int8_output: bool = arg(True, help="quantization: last convs give int8 outputs")
    int16_output: bool = arg(False, help="quantization: last convs give int16 outputs")
    dequant_output: bool = arg(True, help="quantization: dequantize outputs to float")
    prior_prob: float = arg(0.01, help="initial foreground probability of the class bias")
    conv_init: Literal["normal", "kaiming"] = arg(
        "normal",
        help="tower conv init: HAT's Normal(0, 0.01), or kaiming (fan-out, ReLU gain) "
        "for the BatchNorm-followed tower convs; the predictors keep Normal(0, "
        "0.01) either way",
    )


@attrs.frozen(kw_only=True)
class DynamicFcosTargetArgs:
    """SimOTA-style dynamic target assignment for FCOS (vectorised over boxes and images)."""

    strides: list[int] = arg(help="strides of the head outputs, increasing")
    cls_out_channels: int = arg(help="number of object classes (channels of the cls output)")
    background_label: int = arg(help="label of background points (= cls_out_channels)")
    topK: int = arg(10, help="IoUs summed to pick each box's number of positives k")
    loss_cls: Any = component("losses", help="classification matching cost (reduction none)")
    loss_reg: Any = component("losses", help="box matching cost, e.g. GIoULoss (reduction none)")
    center_sampling_radius: float | None = arg(
        None, help="candidates must also lie within radius*stride of the box centre (null: off)"
    )
    centerness_target: Literal["iou", "geometric"] = arg(
        "iou",
        help="centerness target of positives: the IoU of the predicted box with its "
        "match (HAT), or FCOS's geometric centerness of the point in the box, which "
        "is learnable from the first step (IoU targets are ~0 until the boxes are "
        "good, and a low centerness hides every detection)",
    )
    min_k: int = arg(
        1,
        help="floor on each box's dynamic k (SimOTA's is 1): early in "
        "training predicted boxes overlap nothing, so k = 1 for every box "
        "until the boxes improve; a floor gives small data and short "
        "schedules more positives from the start",
    )


@attrs.frozen(kw_only=True)
class FocalLossArgs:
    """Sigmoid focal loss (RetinaNet) on class logits; the last label is background."""

    num_classes: int = arg(help="classes including background (81 = 80 classes + background)")
    alpha: float = arg(0.25, help="weight of positives in [0, 1]; -1 disables it")
    gamma: float = arg(2.0, help="focusing exponent on (1 - p_t)")
    loss_weight: float = arg(1.0, help="multiplier applied to the loss")
    reduction: Reduction = arg("mean", help="torch-style reduction")
    loss_name: str = arg("cls", help="key of this loss in the loss dict")


@attrs.frozen(kw_only=True)
class GIoULossArgs:
    """Generalised IoU loss on xyxy boxes."""

    loss_name: str = arg("reg", help="key of this loss in the loss dict")
    loss_weight: float = arg(1.0, help="multiplier applied to the loss")
    reduction: Reduction = arg("mean", help="torch-style reduction")
    eps: float = arg(1e-7, help="added to denominators (torchvision's default)")


@attrs.frozen(kw_only=True)
class CrossEntropyLossArgs:
    """Cross-entropy loss: sigmoid (binary, soft targets) or softmax over classes."""

    use_sigmoid: bool = arg(False, help="binary cross-entropy with logits instead of softmax")
    loss_name: str = arg("ce", help="key of this loss in the loss dict")
    loss_weight: float = arg(1.0, help="multiplier applied to the loss")
    reduction: Reduction = arg("mean", help="torch-style reduction")


@attrs.frozen(kw_only=True)
class FCOSMultiStrideFilterArgs:
    """Per-stride logit pre-filter and FCOS decoding (score, top-k, class-wise NMS)."""

    strides: list[int] = arg(help="strides of the head outputs, increasing")
    threshold: float = arg(
        -2.944,
        help="keep positions whose max class logit exceeds this "
        "(logit of the score; -2.944 = logit(0.05))",
    )
    for_compile: bool = arg(
        False,
        help="return fixed-shape tensors (head outputs + per-position "
        "max logit) instead of detections",
    )
    score_threshold: float = arg(0.05, help="minimum sqrt(sigmoid(cls) * sigmoid(ctr)) score")
    iou_threshold: float = arg(0.6, help="IoU threshold of the class-wise NMS")
    nms_pre: int = arg(1000, help="candidates kept per stride level before NMS")
    max_per_img: int = arg(100, help="detections kept per image after NMS")
    max_shape: tuple[int, int] | None = arg(
        None, help="(h, w) boxes are clamped to (null: the network input size)"
    )
