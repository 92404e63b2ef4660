"""FCOS decoding: per-stride logit pre-filter, scores, boxes, per-level top-k, class-wise NMS.

Scores are ``sqrt(sigmoid(cls_c) * sigmoid(centerness))`` (FCOS/HAT). A (position, class) pair
is a candidate when its class logit exceeds ``threshold`` *and* its score exceeds
``score_threshold``. Because the logit test is per pair, a position whose largest class logit
is at most ``threshold`` can hold no candidate: the pre-filter drops such positions first, so
sigmoid, scoring and box decoding run only on the survivors, and the result is exactly that of
scoring everything.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms

Detections = dict[str, Tensor]


def decode_level(
    cls: Tensor,
    box: Tensor,
    ctr: Tensor,
    max_logit: Tensor,
    stride: int,
    *,
    threshold: float,
    score_threshold: float,
    nms_pre: int,
    bbox_upscaled: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Candidates of one image at one stride.

    Args:
        cls: ``[C, H, W]`` class logits.
        box: ``[4, H, W]`` (l, t, r, b) in stride units (pixels when ``bbox_upscaled``).
        ctr: ``[1, H, W]`` centerness logits.
        max_logit: ``[H, W]`` max class logit per position (from the compile filter, or
            computed).
        stride: the stride of this level.

    Returns:
        ``boxes [K, 4]`` xyxy pixels (unclamped), ``scores [K]``, ``labels [K]`` with
        ``K <= nms_pre``.
    """
    width = cls.shape[-1]
    keep = torch.nonzero(max_logit.reshape(-1) > threshold).squeeze(1)  # [K0] positions
    logits = cls.reshape(cls.shape[0], -1)[:, keep].t()  # [K0, C]
    pair_pos, labels = torch.nonzero(logits > threshold, as_tuple=True)
    ctr_k = ctr.reshape(-1)[keep][pair_pos]
    scores = torch.sqrt(
        torch.sigmoid(logits[pair_pos, labels].float()) * torch.sigmoid(ctr_k.float())
    )
    ok = scores > score_threshold
    pair_pos, labels, scores = pair_pos[ok], labels[ok], scores[ok]
    if scores.numel() > nms_pre:
        scores, top = scores.topk(nms_pre)
        pair_pos, labels = pair_pos[top], labels[top]
    pos = keep[pair_pos]  # flat position index in this level
    half = stride // 2
    x = (pos % width).float() * stride + half
    y = torch.div(pos, width, rounding_mode="floor").float() * stride + half
    dist = box.reshape(4, -1)[:, pos].t().float()  # [K, 4]
    if not bbox_upscaled:
        dist = dist * stride
    boxes = torch.stack((x - dist[:, 0], y - dist[:, 1], x + dist[:, 2], y + dist[:, 3]), -1)
    return boxes, scores, labels


def decode(
    cls: Sequence[Tensor],
    box: Sequence[Tensor],
    ctr: Sequence[Tensor],
    strides: Sequence[int],
    *,
    threshold: float,
    score_threshold: float,
    nms_pre: int,
    iou_threshold: float,
    max_per_img: int,
    clamp_shape: tuple[int, int] | None,
    bbox_upscaled: bool = False,
    max_logits: Sequence[Tensor] | None = None,
) -> list[Detections]:
    """Detections of every image of a batch.

    Args:
        cls, box, ctr: per stride ``[B, C, H_s, W_s]``, ``[B, 4, H_s, W_s]``,
            ``[B, 1, H_s, W_s]`` head outputs.
        strides: one per level.
        clamp_shape: ``(h, w)`` boxes are clamped to (``x`` to ``[0, w]``, ``y`` to
            ``[0, h]``) before NMS, or None.
        max_logits: optional per stride ``[B, 1, H_s, W_s]`` max class logit (the compile
            filter's output); computed when None.

    Returns:
        per image ``{"boxes": [N, 4] xyxy pixels, "scores": [N], "labels": [N] int64}``, sorted
        by decreasing score, ``N <= max_per_img``.
    """
    out: list[Detections] = []
    for b in range(cls[0].shape[0]):
        parts = []
        for lvl, stride in enumerate(strides):
            ml = max_logits[lvl][b, 0] if max_logits is not None else cls[lvl][b].max(dim=0).values
            parts.append(
                decode_level(
                    cls[lvl][b],
                    box[lvl][b],
                    ctr[lvl][b],
                    ml,
                    stride,
                    threshold=threshold,
                    score_threshold=score_threshold,
                    nms_pre=nms_pre,
                    bbox_upscaled=bbox_upscaled,
                )
            )
        boxes = torch.cat([p[0] for p in parts])
        scores = torch.cat([p[1] for p in parts])
        labels = torch.cat([p[2] for p in parts])
        if clamp_shape is not None:
            h, w = clamp_shape
            boxes = torch.stack(
                (
                    boxes[:, 0].clamp(0, w),
                    boxes[:, 1].clamp(0, h),
                    boxes[:, 2].clamp(0, w),
                    boxes[:, 3].clamp(0, h),
                ),
                -1,
            )
        keep = batched_nms(boxes, scores, labels, iou_threshold)[:max_per_img]
        out.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return out
