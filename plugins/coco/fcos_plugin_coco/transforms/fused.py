"""Resize followed by RandomCrop, resampling only the pixels the crop keeps.

With HAT's train transforms an image is often enlarged (ratio up to 2) and then cropped to
512x512, so resizing the whole image wastes most of the work. :class:`ResizeCrop` draws the
same random numbers in the same order as ``Resize`` then ``RandomCrop``, computes the same boxes
and shapes, and asks PIL to resample just the source region under the crop window
(``Image.resize(box=...)``: identical sampling positions, neighbours outside the window still
feed the filter). :func:`fuse` applies it to adjacent pairs of a transform list; datasets call
it, so configs keep HAT's two separate transforms.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from fcos_plugin_coco.transforms.crop import RandomCrop
from fcos_plugin_coco.transforms.resize import Resize


class ResizeCrop:
    """``RandomCrop(Resize(sample))`` without resampling the discarded pixels."""

    def __init__(self, resize: Resize, crop: RandomCrop) -> None:
        self.resize = resize
        self.crop = crop

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        img = sample["img"]
        h, w = img.shape[:2]
        nh, nw = self.resize.draw_size(h, w)
        oy, ox, ch, cw = self.crop.draw_window(nh, nw)
        out = self.crop.crop_meta(Resize.resize_meta(sample, nh, nw), (nh, nw), oy, ox, ch, cw)
        if (nh, nw) == (h, w):
            out["img"] = np.ascontiguousarray(img[oy:oy + ch, ox:ox + cw])
        else:
            sx, sy = w / nw, h / nh  # source pixels per output pixel
            box = (ox * sx, oy * sy, (ox + cw) * sx, (oy + ch) * sy)
            out["img"] = np.asarray(Image.fromarray(img).resize((cw, ch), Image.BILINEAR,
                                                                box=box))
        return out

    def __repr__(self) -> str:
        return f"ResizeCrop({self.resize!r}, {self.crop!r})"


def fuse(transforms: Sequence[Callable]) -> list[Callable]:
    """``transforms`` with each adjacent (Resize, RandomCrop) pair replaced by a ResizeCrop."""
    out: list[Callable] = []
    i = 0
    while i < len(transforms):
        t = transforms[i]
        nxt = transforms[i + 1] if i + 1 < len(transforms) else None
        if type(t) is Resize and type(nxt) is RandomCrop:
            out.append(ResizeCrop(t, nxt))
            i += 2
        else:
            out.append(t)
            i += 1
    return out
