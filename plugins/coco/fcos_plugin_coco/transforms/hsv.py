"""AugmentHSV."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

_X = np.arange(256, dtype=np.float64)


def _hexcone() -> np.ndarray:
    """[3, 256] weights g with channel = v * (1 - s * g[c][h]) (PIL's hsv2rgb, h in 0..255)."""
    h6 = _X * 6.0 / 255.0
    sector = np.floor(h6).astype(int) % 6
    f = h6 - np.floor(h6)
    # per sector: which of v (0), q (f), p (1), t (1 - f) each channel takes
    table = {0: ("v", "t", "p"), 1: ("q", "v", "p"), 2: ("p", "v", "t"),
             3: ("p", "q", "v"), 4: ("t", "p", "v"), 5: ("v", "p", "q")}
    g = np.zeros((3, 256))
    for i in range(256):
        for c, name in enumerate(table[sector[i]]):
            g[c, i] = {"v": 0.0, "q": f[i], "p": 1.0, "t": 1.0 - f[i]}[name]
    return g


_G = _hexcone()


def hsv_to_rgb(h: np.ndarray, s_frac: np.ndarray, v: np.ndarray) -> np.ndarray:
    """uint8 RGB from PIL-convention hue ``h`` (uint8), saturation in [0, 1] and value 0..255
    (float32 planes), with PIL's formula; numpy, about 3x faster than ``convert("RGB")``."""
    a = v * s_frac
    out = np.empty(h.shape + (3,), dtype=np.uint8)
    for c in range(3):
        g = _G[c].astype(np.float32)
        out[..., c] = v - a * g[h] + 0.5  # in [0, 255.5): the cast truncates = rounds
    return out


class AugmentHSV:
    """Random gains in HSV space, as YOLO's ``augment_hsv`` (which HAT's AugmentHSV follows).

    Draws ``r = 1 + uniform(-1, 1, 3) * (hgain, sgain, vgain)`` and maps each HSV channel
    through a lookup table: hue ``(h * r0) mod 256`` (PIL's hue is 0..255 for the full
    circle, cv2's 0..179), saturation and value ``clip(x * r, 0, 255)``. Boxes do not change.
    Only the valid area (``img_shape``) is augmented: padding keeps ``Pad``'s value (for the
    default black padding this is what augmenting it would give anyway). RGB -> HSV is PIL's;
    HSV -> RGB is PIL's formula in numpy with the tables folded in (same result up to rounding).
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

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        if not self.gains.any():
            return sample
        r = np.random.uniform(-1, 1, 3) * self.gains + 1
        img = sample["img"]
        vh, vw = sample.get("img_shape", img.shape[:2])
        hsv = np.asarray(Image.fromarray(img[:vh, :vw]).convert("HSV"))
        lut_h, lut_s, lut_v = self.tables(r)
        rgb = hsv_to_rgb(lut_h[hsv[..., 0]], (lut_s / np.float32(255)).astype(np.float32)
                         [hsv[..., 1]], lut_v.astype(np.float32)[hsv[..., 2]])
        out = dict(sample)
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
