"""The one RGB <-> YUV444 conversion of fcos: ITU-R BT.601 full range (JFIF), 8-bit.

The data pipeline (``ToTensor(to_yuv=True)``), ``fcos infer`` on a compiled model and the
TensorBoard images all use these, so a model sees the same pixels in training, in calibration
and on the device's pyramid input. Planes are Y, U (Cb), V (Cr); no chroma subsampling.
"""

from __future__ import annotations

import numpy as np
import torch

#: RGB -> YCbCr, rows Y, U (Cb), V (Cr); added to the offsets :data:`YUV_OFFSET`
RGB2YUV = torch.tensor(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
    dtype=torch.float32,
)
YUV_OFFSET = torch.tensor([0.0, 128.0, 128.0], dtype=torch.float32)
#: the exact inverse of :data:`RGB2YUV` (float64, then float32)
YUV2RGB = torch.linalg.inv(RGB2YUV.double()).float()


def rgb_to_yuv444(img: torch.Tensor) -> torch.Tensor:
    """[3, H, W] float RGB in 0..255 -> YUV444 in 0..255, rounded to integers.

    Y = 0.299 R + 0.587 G + 0.114 B; U = -0.168736 R - 0.331264 G + 0.5 B + 128;
    V = 0.5 R - 0.418688 G - 0.081312 B + 128 (BT.601 full range, no chroma subsampling).
    Rounding and clipping to 0..255 reproduce the 8-bit YUV the BPU pyramid feeds the model.
    """
    _, h, w = img.shape
    yuv = (RGB2YUV @ img.reshape(3, -1) + YUV_OFFSET[:, None]).reshape(3, h, w)
    return yuv.round_().clamp_(0.0, 255.0)


def rgb_to_yuv444_uint8(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` (as PIL gives it) -> uint8 planar YUV444 ``[3, H, W]`` by
    :func:`rgb_to_yuv444`."""
    t = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).to(torch.float32)
    return rgb_to_yuv444(t).to(torch.uint8).numpy()


def yuv444_to_rgb(yuv: torch.Tensor) -> torch.Tensor:
    """[3, H, W] float YUV444 in 0..255 -> float RGB (not rounded or clipped): the inverse
    of :func:`rgb_to_yuv444` before its rounding."""
    _, h, w = yuv.shape
    return (YUV2RGB @ (yuv.reshape(3, -1) - YUV_OFFSET[:, None])).reshape(3, h, w)
