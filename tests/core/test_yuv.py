"""fcos_core.yuv, the one RGB <-> YUV444 conversion: against PIL's JFIF YCbCr, and its
inverse."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from fcos_core.yuv import rgb_to_yuv444, rgb_to_yuv444_uint8, yuv444_to_rgb


def random_rgb(h: int = 37, w: int = 53) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_matches_pil_ycbcr():
    rgb = random_rgb()
    ours = rgb_to_yuv444_uint8(rgb)
    assert ours.dtype == np.uint8 and ours.shape == (3, 37, 53)
    # PIL converts with BT.601 full-range fixed-point arithmetic that truncates where we
    # round: within one level
    ref = np.asarray(Image.fromarray(rgb).convert("YCbCr")).transpose(2, 0, 1)
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1


def test_known_colours():
    rgb = np.array([[[0, 0, 0], [255, 255, 255], [128, 128, 128], [255, 0, 0]]], np.uint8)
    yuv = rgb_to_yuv444_uint8(rgb)[:, 0, :].T.tolist()
    assert yuv[:3] == [[0, 128, 128], [255, 128, 128], [128, 128, 128]]
    assert yuv[3] == [76, 85, 255]  # 0.299*255 = 76.2; -0.168736*255+128 = 85.0; 255.5 -> 255


def test_inverse_round_trip():
    t = torch.from_numpy(random_rgb().transpose(2, 0, 1).copy()).float()
    back = yuv444_to_rgb(rgb_to_yuv444(t))
    # only the rounding of the YUV values is lost (and clipping at the range's ends)
    assert float((back - t).abs().max()) < 2.0
    assert float((back - t).abs().mean()) < 0.5
