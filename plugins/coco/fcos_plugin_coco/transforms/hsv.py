"""AugmentHSV."""

from __future__ import annotations

from typing import Any

import numpy as np

from fcos_plugin_coco.transforms._cv import cv2, scratch

_X = np.arange(256, dtype=np.float64)
_PLANE_KEYS = ("hsv0", "hsv1", "hsv2")


class AugmentHSV:
    """Random gains in HSV space, as YOLO's ``augment_hsv`` (which HAT's AugmentHSV follows).

    Draws ``r = 1 + uniform(-1, 1, 3) * (hgain, sgain, vgain)`` and maps each HSV channel
    through a lookup table: hue ``(h * r0) mod 256`` (hue 0..255 for the full circle), saturation
    and value ``clip(x * r, 0, 255)``. Boxes do not change. Only the valid area (``img_shape``)
    is augmented: padding keeps ``Pad``'s value (for the default black padding this is what
    augmenting it would give anyway).

    The work is YOLO's: OpenCV's 8-bit HSV with the full-circle hue (``COLOR_RGB2HSV_FULL`` /
    ``COLOR_HSV2RGB_FULL``: hue 0..255 for 0..360 degrees, so the tables need no 180 wrap),
    one ``cv2.LUT`` per channel, all on uint8. The HSV round trip itself is lossy only by 8-bit
    quantization (as PIL's, which this used before; tested against ``colorsys`` in float).
    """

    def __init__(self, hgain: float = 0.015, sgain: float = 0.7, vgain: float = 0.4) -> None:
        gains = [float(hgain), float(sgain), float(vgain)]
        for name, g in zip(("hgain", "sgain", "vgain"), gains):
            if not 0.0 <= g <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {g}")
        self.gains = np.array(gains)

    @staticmethod
    def tables(r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The hue, saturation and value lookup tables (uint8) for gains ``r``."""
        lut_h = (np.floor(_X * r[0]) % 256).astype(np.uint8)
        lut_s = np.clip(_X * r[1], 0, 255).astype(np.uint8)
        lut_v = np.clip(_X * r[2], 0, 255).astype(np.uint8)
        return lut_h, lut_s, lut_v

    @classmethod
    def apply(cls, rgb: np.ndarray, r: np.ndarray) -> np.ndarray:
        """``rgb`` (uint8 [H, W, 3], may be a view) with gains ``r``: a new contiguous array."""
        h, w = rgb.shape[:2]
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL, dst=scratch("hsv", (h, w, 3)))
        planes = cv2.split(hsv, [scratch(k, (h, w)) for k in _PLANE_KEYS])
        for plane, lut in zip(planes, cls.tables(r)):  # per plane: cv2.LUT is slower on 3
            cv2.LUT(plane, lut, dst=plane)
        return cv2.cvtColor(cv2.merge(planes, dst=hsv), cv2.COLOR_HSV2RGB_FULL)

    def draw(self) -> np.ndarray | None:
        """This sample's random hue/saturation/value gains, or None when every gain is 0."""
        if not self.gains.any():
            return None
        return np.random.uniform(-1, 1, 3) * self.gains + 1

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        r = self.draw()
        if r is None:
            return sample
        img = sample["img"]
        vh, vw = sample.get("img_shape", img.shape[:2])
        out = dict(sample)
        if vh == 0 or vw == 0:
            return out
        rgb = self.apply(img[:vh, :vw], r)
        if (vh, vw) == img.shape[:2]:
            out["img"] = rgb
        else:  # padding is not image content: leave it as Pad made it
            new = img.copy()
            new[:vh, :vw] = rgb
            out["img"] = new
        return out

    def __repr__(self) -> str:
        h, s, v = self.gains
        return f"AugmentHSV(hgain={h}, sgain={s}, vgain={v})"
