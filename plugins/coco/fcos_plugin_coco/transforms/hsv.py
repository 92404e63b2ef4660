"""AugmentHSV."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

_X = np.arange(256, dtype=np.float64)


class AugmentHSV:
    """Random gains in HSV space, as YOLO's ``augment_hsv`` (which HAT's AugmentHSV follows).

    Draws ``r = 1 + uniform(-1, 1, 3) * (hgain, sgain, vgain)`` and maps each HSV channel
    through a lookup table: hue ``(h * r0) mod 256`` (PIL's hue is 0..255 for the full
    circle, cv2's 0..179), saturation and value ``clip(x * r, 0, 255)``. Boxes do not change.
    Only the valid area (``img_shape``) is augmented: padding keeps ``Pad``'s value (for the
    default black padding this is what augmenting it would give anyway).
    """

    def __init__(self, hgain: float = 0.015, sgain: float = 0.7, vgain: float = 0.4) -> None:
        gains = [float(hgain), float(sgain), float(vgain)]
        for name, g in zip(("hgain", "sgain", "vgain"), gains):
            if not 0.0 <= g <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {g}")
        self.gains = np.array(gains)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        if not self.gains.any():
            return sample
        r = np.random.uniform(-1, 1, 3) * self.gains + 1
        img = sample["img"]
        vh, vw = sample.get("img_shape", img.shape[:2])
        h, s, v = Image.fromarray(img[:vh, :vw]).convert("HSV").split()
        lut_h = (np.floor(_X * r[0]) % 256).astype(np.uint8).tolist()
        lut_s = np.clip(_X * r[1], 0, 255).astype(np.uint8).tolist()
        lut_v = np.clip(_X * r[2], 0, 255).astype(np.uint8).tolist()
        hsv = Image.merge("HSV", (h.point(lut_h), s.point(lut_s), v.point(lut_v)))
        out = dict(sample)
        if (vh, vw) == img.shape[:2]:
            out["img"] = np.asarray(hsv.convert("RGB"))
        else:  # padding is not image content: leave it as Pad made it
            new = img.copy()
            new[:vh, :vw] = np.asarray(hsv.convert("RGB"))
            out["img"] = new
        return out

    def __repr__(self) -> str:
        h, s, v = self.gains
        return f"AugmentHSV(hgain={h}, sgain={s}, vgain={v})"
