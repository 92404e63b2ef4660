"""Pad."""

from __future__ import annotations

from typing import Any

import numpy as np

from fcos_plugin_coco.transforms._cv import cv2
from fcos_plugin_coco.transforms._geometry import pair


class Pad:
    """Pad at the bottom and right (boxes and the valid area do not move), either to exactly
    ``size`` = (height, width) or up to the next multiple of ``divisor``. ``img_shape`` keeps
    the valid area; ``pad_shape`` becomes the padded size.
    """

    def __init__(
        self, divisor: int | None = None, size: tuple[int, int] | None = None, pad_val: int = 0
    ) -> None:
        if (divisor is None) == (size is None):
            raise ValueError(
                f"Pad needs exactly one of divisor or size, got divisor={divisor!r}, size={size!r}"
            )
        if divisor is not None and (
            not isinstance(divisor, int) or isinstance(divisor, bool) or divisor <= 0
        ):
            raise ValueError(f"divisor must be a positive integer, got {divisor!r}")
        if not 0 <= int(pad_val) <= 255:
            raise ValueError(f"pad_val must be in 0..255 (uint8 image), got {pad_val!r}")
        self.divisor = divisor
        self.size = pair(size, "size") if size is not None else None
        self.pad_val = int(pad_val)

    def target_size(self, h: int, w: int) -> tuple[int, int]:
        """The padded (height, width) of an ``h`` x ``w`` image."""
        if self.size is not None:
            th, tw = self.size
            if h > th or w > tw:
                raise ValueError(
                    f"Pad(size={self.size}) got a larger {h}x{w} image; put a "
                    "Resize with img_scale <= size (or a RandomCrop) before Pad"
                )
            return th, tw
        d = self.divisor
        return -(-h // d) * d, -(-w // d) * d

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        img = sample["img"]
        h, w = img.shape[:2]
        th, tw = self.target_size(h, w)
        out = dict(sample)
        if (th, tw) != (h, w):
            if img.dtype == np.uint8 and img.ndim == 3 and 1 <= img.shape[2] <= 4 and h and w:
                # one pass: copies the image and fills only the border
                out["img"] = cv2.copyMakeBorder(
                    img, 0, th - h, 0, tw - w, cv2.BORDER_CONSTANT, value=(self.pad_val,) * 4
                ).reshape((th, tw, *img.shape[2:]))
            else:
                padded = np.full((th, tw, *img.shape[2:]), self.pad_val, dtype=img.dtype)
                padded[:h, :w] = img
                out["img"] = padded
        out["pad_shape"] = (th, tw)
        out.setdefault("img_shape", (h, w))
        return out

    def __repr__(self) -> str:
        return f"Pad(divisor={self.divisor}, size={self.size}, pad_val={self.pad_val})"
