"""Resize (HAT/mmcv semantics)."""

from __future__ import annotations

from typing import Any

import numpy as np

from fcos_plugin_coco.transforms._cv import cv2
from fcos_plugin_coco.transforms._geometry import boxes_of, clip_boxes, pair, rescale_state


def resize_image(img: np.ndarray, nh: int, nw: int, dst: np.ndarray | None = None) -> np.ndarray:
    """``img`` resampled to (nh, nw) with OpenCV: bilinear (``INTER_LINEAR``, pixel centres at
    half-integers, as mmcv / HAT and PIL), except that a side shrunk below half its length
    uses area averaging (``INTER_AREA``) so every source pixel counts (2-tap bilinear would
    skip pixels and alias there). A new C-contiguous array, or ``dst`` (C-contiguous, of the
    output's shape and dtype) filled in."""
    h, w = img.shape[:2]
    if (nh, nw) == (h, w):
        if dst is None:
            return img.copy()
        np.copyto(dst, img)
        return dst
    flag = cv2.INTER_AREA if (2 * nh < h or 2 * nw < w) else cv2.INTER_LINEAR
    if dst is not None and img.ndim == 3:
        out = cv2.resize(img, (nw, nh), dst=dst, interpolation=flag)
    else:
        out = cv2.resize(img, (nw, nh), interpolation=flag)
        if dst is not None:
            np.copyto(dst, out.reshape(dst.shape))
            return dst
    return out if out.ndim == img.ndim else out.reshape(nh, nw, *img.shape[2:])


class Resize:
    """Resize the image and its boxes.

    With ``keep_ratio`` the image is rescaled by one factor so that its long edge fits
    ``max(img_scale)`` and its short edge fits ``min(img_scale)`` (mmcv's ``imrescale``: the
    orientation of the image does not matter). Without it the image is stretched to exactly
    ``img_scale`` = (height, width). ``ratio_range`` = (lo, hi) first multiplies ``img_scale``
    by a ratio drawn uniformly from [lo, hi] (scale augmentation, as in HAT's train config).

    Interpolation is bilinear (OpenCV ``INTER_LINEAR``, as mmcv / HAT), with area averaging
    for a side shrunk below half its length (:func:`resize_image`). Boxes are multiplied by the
    per-axis factors actually applied (after rounding the output size) and clipped to the image.
    """

    def __init__(
        self,
        img_scale: tuple[int, int],
        ratio_range: tuple[float, float] | None = None,
        keep_ratio: bool = True,
    ) -> None:
        self.img_scale = pair(img_scale, "img_scale")
        if ratio_range is not None:
            try:
                lo, hi = (float(r) for r in ratio_range)
            except (TypeError, ValueError):
                raise ValueError(f"ratio_range must be (min, max), got {ratio_range!r}") from None
            if not 0 < lo <= hi:
                raise ValueError(f"ratio_range must satisfy 0 < min <= max, got {ratio_range!r}")
            ratio_range = (lo, hi)
        self.ratio_range = ratio_range
        self.keep_ratio = bool(keep_ratio)

    def target_size(self, h: int, w: int, ratio: float = 1.0) -> tuple[int, int]:
        """Output (height, width) for an h x w image and a scale ``ratio``."""
        th, tw = self.img_scale[0] * ratio, self.img_scale[1] * ratio
        if self.keep_ratio:
            scale = min(max(th, tw) / max(h, w), min(th, tw) / min(h, w))
            return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))
        return max(1, int(th)), max(1, int(tw))

    def draw_size(self, h: int, w: int) -> tuple[int, int]:
        """Draw the scale ratio (when ``ratio_range``) and return the output (height, width)."""
        ratio = 1.0
        if self.ratio_range is not None:
            ratio = float(np.random.uniform(*self.ratio_range))
        return self.target_size(h, w, ratio)

    @staticmethod
    def resize_meta(sample: dict[str, Any], nh: int, nw: int) -> dict[str, Any]:
        """``sample`` with boxes and shapes of an (nh, nw) resize; ``img`` is left as it is."""
        h, w = sample["img"].shape[:2]
        sx, sy = nw / w, nh / h
        out = dict(sample)
        boxes = boxes_of(sample) * np.array([sx, sy, sx, sy], dtype=np.float32)
        out["gt_bboxes"] = clip_boxes(boxes, nw, nh)
        ih, iw = sample.get("img_shape", (h, w))
        out["img_shape"] = (min(nh, int(round(ih * sy))), min(nw, int(round(iw * sx))))
        out["pad_shape"] = (nh, nw)
        rescale_state(out, sx, sy)
        return out

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        img = sample["img"]
        nh, nw = self.draw_size(*img.shape[:2])
        out = self.resize_meta(sample, nh, nw)
        if (nh, nw) != img.shape[:2]:
            out["img"] = resize_image(img, nh, nw)
        return out

    def __repr__(self) -> str:
        return (
            f"Resize(img_scale={self.img_scale}, ratio_range={self.ratio_range}, "
            f"keep_ratio={self.keep_ratio})"
        )
