"""Camera ("pyramid") input frames -> the model's int8 input, exactly.

The float pipeline feeds the model ``(yuv - 128) / 128`` (YUV444 from ``ToTensor(to_yuv=True)``
then ``Normalize(mean=128, std=128)``), and the quantized input has scale 1/128 and zero point
0, so the int8 input is ``round((yuv - 128) / 128 * 128) = yuv - 128`` -- an exact integer
subtraction, no rounding anywhere. Two frame layouts are accepted (uint8 only):

* **YUV444 planar**: ``[3, H, W]`` (or ``[1, 3, H, W]``), planes Y, U (Cb), V (Cr). This is
  what the training pipeline's ``rgb_to_yuv444`` produces, so results are bit-identical to the
  float pipeline.
* **NV12**: a ``[H * 3 / 2, W]`` buffer -- the full-resolution Y plane followed by one plane of
  interleaved U, V samples at half resolution in both directions (H and W even) -- or a dict
  ``{"y": [H, W], "uv": [H/2, W/2, 2]}``. Each chroma sample is repeated over its 2x2 block
  (what a pyramid's chroma upsampler does); this differs from YUV444 input by the chroma
  subsampling itself, as on the device.
Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fcos_core.errors import FcosUserError

#: the input quantization a pyramid input requires (scale 1/128, zero point 0, int8)
PYRAMID_SCALE = 1.0 / 128.0


def nv12_to_yuv444(y: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Y ``[H, W]`` and interleaved UV ``[H/2, W/2, 2]`` uint8 -> planar YUV444 ``[3, H, W]``."""
    h, w = y.shape
    if h % 2 or w % 2 or uv.shape != (h // 2, w // 2, 2):
        raise FcosUserError(
            f"NV12 frame: Y plane {y.shape} needs even sizes and a UV plane of "
            f"shape {(h // 2, w // 2, 2)}, got {uv.shape}",
            hint="pass YUV444 [3, H, W] or NV12 with matching planes",
        )
    chroma = np.repeat(np.repeat(uv, 2, axis=0), 2, axis=1)  # [H, W, 2]
    return np.stack((y, chroma[..., 0], chroma[..., 1]))


def to_yuv444(frame: Any, height: int, width: int) -> np.ndarray:
    """Any accepted pyramid layout -> planar uint8 YUV444 ``[3, height, width]``."""
    if isinstance(frame, Mapping):
        y, uv = np.asarray(frame.get("y")), np.asarray(frame.get("uv"))
        if y.dtype != np.uint8 or uv.dtype != np.uint8:
            raise FcosUserError("NV12 planes must be uint8", hint="pass the camera's 8-bit planes")
        yuv = nv12_to_yuv444(y, uv)
    else:
        arr = np.asarray(frame)
        if arr.dtype != np.uint8:
            raise FcosUserError(
                f"a pyramid frame must be uint8, got {arr.dtype}",
                hint="pass YUV444 [3, H, W] or NV12 [H*3/2, W] uint8 data",
            )
        if arr.ndim == 4 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim == 3 and arr.shape[0] == 3:
            yuv = arr
        elif arr.ndim == 2 and arr.shape[0] % 3 == 0 and (arr.shape[0] * 2) % 3 == 0:
            h = arr.shape[0] * 2 // 3
            uv = arr[h:].reshape(h // 2, arr.shape[1] // 2, 2)
            yuv = nv12_to_yuv444(arr[:h], uv)
        else:
            raise FcosUserError(
                f"pyramid frame of shape {arr.shape} is neither YUV444 "
                "[3, H, W] nor NV12 [H*3/2, W]",
                hint="see the nash-e README, 'Input sources'",
            )
    if yuv.shape != (3, height, width):
        raise FcosUserError(
            f"pyramid frame is {yuv.shape[1]}x{yuv.shape[2]}, the model was "
            f"compiled for {height}x{width}",
            hint="resize/pad the frame to the compiled input size",
        )
    return yuv


def yuv444_to_int8(yuv: np.ndarray) -> np.ndarray:
    """uint8 YUV444 ``[3, H, W]`` -> the model's int8 input ``[1, 3, H, W]`` = yuv - 128."""
    return (yuv.astype(np.int16) - 128).astype(np.int8)[None]
