"""RandomCrop."""

from __future__ import annotations

from typing import Any

import numpy as np

from fcos_plugin_coco.transforms._geometry import boxes_of, clip_boxes, pair, shift_state


class RandomCrop:
    """Crop a random ``size`` = (height, width) window (a side shorter than the window is kept
    whole). Boxes are shifted and clipped to the window; boxes (and ignore regions) left with
    no area are dropped together with their labels. The sample is kept even when no box remains:
    an image without objects is a valid all-background training sample.
    """

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = pair(size, "size")

    def draw_window(self, h: int, w: int) -> tuple[int, int, int, int]:
        """Draw the window (top, left, height, width) for an h x w image."""
        ch, cw = min(self.size[0], h), min(self.size[1], w)
        oy = int(np.random.randint(0, h - ch + 1))
        ox = int(np.random.randint(0, w - cw + 1))
        return oy, ox, ch, cw

    @staticmethod
    def crop_meta(
        sample: dict[str, Any], hw: tuple[int, int], oy: int, ox: int, ch: int, cw: int
    ) -> dict[str, Any]:
        """``sample`` with boxes and shapes of the crop of an ``hw`` image; ``img`` untouched."""
        out = dict(sample)
        boxes = clip_boxes(boxes_of(sample) - np.array([ox, oy, ox, oy], dtype=np.float32), cw, ch)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        out["gt_bboxes"] = boxes[keep]
        if "gt_classes" in sample:
            out["gt_classes"] = np.asarray(sample["gt_classes"], dtype=np.int64)[keep]
        ih, iw = sample.get("img_shape", hw)
        out["img_shape"] = (max(0, min(ih - oy, ch)), max(0, min(iw - ox, cw)))
        out["pad_shape"] = (ch, cw)
        shift_state(out, ox, oy)
        return out

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        img = sample["img"]
        oy, ox, ch, cw = self.draw_window(*img.shape[:2])
        out = self.crop_meta(sample, img.shape[:2], oy, ox, ch, cw)
        out["img"] = np.ascontiguousarray(img[oy : oy + ch, ox : ox + cw])
        return out

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size})"
