"""FCOSMultiStrideFilter: the post-process of FCOS, in a compile form and a decoding form.

``for_compile=True`` (deploy models): ``forward(outputs)`` returns fixed-shape tensors a compiler
can take, with no data-dependent shapes::

    (cls_0..cls_{S-1}, box_0..box_{S-1}, ctr_0..ctr_{S-1}, max_logit_0..max_logit_{S-1})

the head outputs unchanged plus, per stride, ``max_logit_s [B, 1, H_s, W_s]``: the largest class
logit at each position. A position is kept iff ``max_logit_s > threshold``; the host-side
decoder (:meth:`FCOSMultiStrideFilter.detect`) reads only kept positions.

``for_compile=False``: ``forward(outputs, image_size)`` returns detections per image (see
:func:`fcos_core.models.decode.decode`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fcos_core.models.decode import Detections, decode
from fcos_core.models.layout import split_outputs


class FCOSMultiStrideFilter(nn.Module):
    """Per-stride logit pre-filter and FCOS decoding.

    Args:
        strides: strides of the head outputs, strictly increasing.
        threshold: logit threshold (``logit(score)``; -2.944 = logit(0.05)). A (position,
            class) pair is a candidate only when its class logit exceeds it.
        for_compile: ``forward`` returns the fixed-shape tuple in the module docstring.
        score_threshold: minimum ``sqrt(sigmoid(cls) * sigmoid(ctr))`` of a detection.
        iou_threshold: IoU of the class-wise NMS (``torchvision.ops.batched_nms``).
        nms_pre: candidates kept per stride level (highest scores) before NMS.
        max_per_img: detections kept per image.
        max_shape: ``(h, w)`` boxes are clamped to; None clamps to the network input size.
    """

    def __init__(
        self,
        strides: Sequence[int],
        threshold: float = -2.944,
        for_compile: bool = False,
        score_threshold: float = 0.05,
        iou_threshold: float = 0.6,
        nms_pre: int = 1000,
        max_per_img: int = 100,
        max_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        strides = list(strides)
        if not strides or sorted(set(strides)) != strides:
            raise ValueError(f"strides must be non-empty and strictly increasing, got {strides}")
        if not 0.0 <= score_threshold < 1.0:
            raise ValueError(f"score_threshold must be in [0, 1), got {score_threshold}")
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if nms_pre < 1 or max_per_img < 1:
            raise ValueError(
                f"nms_pre and max_per_img must be >= 1, got {nms_pre} and {max_per_img}"
            )
        if max_shape is not None and (len(max_shape) != 2 or min(max_shape) < 1):
            raise ValueError(f"max_shape must be (h, w) with positive sizes, got {max_shape}")
        self.strides = strides
        self.threshold = threshold
        self.for_compile = for_compile
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self.nms_pre = nms_pre
        self.max_per_img = max_per_img
        self.max_shape = tuple(max_shape) if max_shape is not None else None

    def compile_outputs(self, outputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """Head outputs plus per-stride ``max_logit [B, 1, H_s, W_s]`` (fixed shapes)."""
        cls, box, ctr = split_outputs(outputs, len(self.strides))
        max_logits = [c.max(dim=1, keepdim=True).values for c in cls]
        return (*cls, *box, *ctr, *max_logits)

    def detect(
        self,
        outputs: Sequence[Tensor],
        image_size: tuple[int, int] | None = None,
        bbox_upscaled: bool = False,
    ) -> list[Detections]:
        """Detections per image from the body's outputs (3S tensors) or the compile tuple (4S).

        Args:
            outputs: see the module docstring.
            image_size: ``(H, W)`` of the network input, used for clamping when ``max_shape``
                is None.
            bbox_upscaled: the box outputs are already in pixels (``upscale_bbox_pred`` head).
        """
        s = len(self.strides)
        cls, box, ctr = split_outputs(outputs, s)
        max_logits = list(outputs[3 * s : 4 * s]) if len(outputs) >= 4 * s else None
        with torch.no_grad():
            return decode(
                cls,
                box,
                ctr,
                self.strides,
                threshold=self.threshold,
                score_threshold=self.score_threshold,
                nms_pre=self.nms_pre,
                iou_threshold=self.iou_threshold,
                max_per_img=self.max_per_img,
                clamp_shape=self.max_shape or image_size,
                bbox_upscaled=bbox_upscaled,
                max_logits=max_logits,
            )

    def forward(
        self,
        outputs: Sequence[Tensor],
        image_size: tuple[int, int] | None = None,
        bbox_upscaled: bool = False,
    ) -> tuple[Tensor, ...] | list[Detections]:
        """``for_compile``: :meth:`compile_outputs`; else :meth:`detect`."""
        if self.for_compile:
            return self.compile_outputs(outputs)
        return self.detect(outputs, image_size, bbox_upscaled)
