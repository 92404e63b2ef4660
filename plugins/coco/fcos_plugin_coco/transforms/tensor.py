"""ToTensor (optionally to YUV444) and Normalize."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

#: RGB -> YCbCr, ITU-R BT.601 full range (JFIF): rows Y, U (Cb), V (Cr); offsets 0, 128, 128
RGB2YUV = torch.tensor([[0.299, 0.587, 0.114],
                        [-0.168736, -0.331264, 0.5],
                        [0.5, -0.418688, -0.081312]], dtype=torch.float32)
YUV_OFFSET = torch.tensor([0.0, 128.0, 128.0], dtype=torch.float32)


def rgb_to_yuv444(img: torch.Tensor) -> torch.Tensor:
    """[3, H, W] float RGB in 0..255 -> YUV444 in 0..255, rounded to integers.

    Y = 0.299 R + 0.587 G + 0.114 B; U = -0.168736 R - 0.331264 G + 0.5 B + 128;
    V = 0.5 R - 0.418688 G - 0.081312 B + 128 (BT.601 full range, no chroma subsampling).
    Rounding and clipping to 0..255 reproduce the 8-bit YUV the BPU pyramid feeds the model.
    """
    c, h, w = img.shape
    yuv = (RGB2YUV @ img.reshape(3, -1) + YUV_OFFSET[:, None]).reshape(3, h, w)
    return yuv.round_().clamp_(0.0, 255.0)


class ToTensor:
    """numpy sample -> torch: ``img`` uint8 [H, W, 3] -> float32 [3, H, W] (values 0..255, RGB
    or YUV444 with ``to_yuv``), ``gt_bboxes`` -> float32 [N, 4], ``gt_classes`` -> int64 [N].
    Other keys (shapes, ``scale_factor``, ``img_id``) stay as they are.
    """

    def __init__(self, to_yuv: bool = False) -> None:
        self.to_yuv = bool(to_yuv)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        img = sample["img"]
        if not (isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[2] == 3):
            raise TypeError("ToTensor expects img as a numpy [H, W, 3] array, got "
                            f"{type(img).__name__} {getattr(img, 'shape', '')}")
        out = dict(sample)
        t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).to(torch.float32)
        out["img"] = rgb_to_yuv444(t) if self.to_yuv else t
        if "gt_bboxes" in sample:
            out["gt_bboxes"] = torch.as_tensor(
                np.asarray(sample["gt_bboxes"], dtype=np.float32).reshape(-1, 4))
        if "gt_classes" in sample:
            out["gt_classes"] = torch.as_tensor(
                np.asarray(sample["gt_classes"], dtype=np.int64).reshape(-1))
        return out

    def __repr__(self) -> str:
        return f"ToTensor(to_yuv={self.to_yuv})"


def _per_channel(value: float | Sequence[float], name: str) -> torch.Tensor:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        vals = [float(value)] * 3
    else:
        vals = [float(v) for v in value]
        if len(vals) != 3:
            raise ValueError(f"{name} must be a number or 3 numbers (one per channel), got "
                             f"{value!r}")
    return torch.tensor(vals, dtype=torch.float32).view(3, 1, 1)


class Normalize:
    """``img = (img - mean) / std`` on the float tensor; mean/std are scalars or per channel."""

    def __init__(self, mean: float | Sequence[float], std: float | Sequence[float]) -> None:
        self.mean = _per_channel(mean, "mean")
        self.std = _per_channel(std, "std")
        if bool((self.std <= 0).any()):
            raise ValueError(f"std must be > 0, got {std!r}")

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        img = sample["img"]
        if not isinstance(img, torch.Tensor):
            raise TypeError("Normalize works on the tensor image: put ToTensor before it")
        out = dict(sample)
        out["img"] = (img - self.mean) / self.std
        return out

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"
