"""ToTensor (optionally to YUV444, by :mod:`fcos_core.yuv`) and Normalize."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fcos_core.yuv import RGB2YUV, YUV_OFFSET, rgb_to_yuv444
from fcos_plugin_coco.transforms._cv import cv2, scratch

# the same matrix for OpenCV: rows Y, U, V of ``RGB2YUV`` with the offsets as a 4th column
_YUV_M34 = np.concatenate([RGB2YUV.numpy(), YUV_OFFSET.numpy()[:, None]], axis=1)


def lookup_tables(mean: torch.Tensor, std: torch.Tensor) -> list[np.ndarray]:
    """Per channel, the float32 ``(k - mean) / std`` for k = 0..255 ([3, 1, 1] mean and std),
    computed as :class:`Normalize` computes it on the tensor: looking a uint8 value up gives
    the bit-identical number."""
    k = torch.arange(256, dtype=torch.float32).view(1, 1, 256)
    table = (k - mean.reshape(3, 1, 1)) / std.reshape(3, 1, 1)
    return [np.ascontiguousarray(table[c, 0].numpy()) for c in range(3)]


_IDENTITY = lookup_tables(torch.zeros(3), torch.ones(3))
_PLANE_KEYS = ("plane0", "plane1", "plane2")


def to_chw_float(
    img: np.ndarray, to_yuv: bool = False, tables: Sequence[np.ndarray] | None = None
) -> torch.Tensor:
    """uint8 [H, W, 3] RGB -> float32 [3, H, W] tensor: the RGB values, or with ``to_yuv`` the
    8-bit YUV444 of :func:`rgb_to_yuv444`; each plane mapped through ``tables`` (from
    :func:`lookup_tables`: normalization) when given.

    Fast and exact: the YUV matrix runs in float32 (``cv2.transform``), one OpenCV conversion
    then rounds half to even and saturates to 0..255 (= ``round_().clamp_(0, 255)``),
    ``cv2.split`` makes the planes, and a 256-entry float32 lookup table per plane does the
    uint8 -> float conversion and the normalization in one pass. The YUV values equal
    ``rgb_to_yuv444``'s except where the exact value is a .5 tie: float32 rounding of the same
    formula summed in another order may then land on the other side (1 level; ~1e-4 of the
    values of random pixels, tested).
    """
    if not (
        isinstance(img, np.ndarray)
        and img.dtype == np.uint8
        and img.ndim == 3
        and img.shape[2] == 3
    ):
        raise TypeError(
            "expected a uint8 [H, W, 3] image, got "
            f"{getattr(img, 'dtype', type(img).__name__)} {getattr(img, 'shape', '')}"
        )
    h, w = img.shape[:2]
    out = np.empty((3, h, w), dtype=np.float32)
    if h and w:
        if to_yuv:
            rgb = scratch("rgb_f32", (h, w, 3), np.float32)
            np.copyto(rgb, img)
            yuv = cv2.transform(rgb, _YUV_M34, dst=scratch("yuv_f32", (h, w, 3), np.float32))
            # convertScaleAbs = saturate_cast<uchar>(|x|): the values are >= -1e-5 here, so
            # abs only turns float noise around 0 into the same 0
            img = cv2.convertScaleAbs(yuv, dst=scratch("yuv_u8", (h, w, 3)))
        planes = cv2.split(img, [scratch(k, (h, w)) for k in _PLANE_KEYS])
        for c, plane in enumerate(planes):
            cv2.LUT(plane, (tables or _IDENTITY)[c], dst=out[c])
    return torch.from_numpy(out)


def targets_to_tensors(sample: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``sample`` with ``gt_bboxes`` / ``gt_classes`` as float32 [N, 4] / int64 [N]
    tensors (``img`` untouched)."""
    out = dict(sample)
    if "gt_bboxes" in sample:
        out["gt_bboxes"] = torch.as_tensor(
            np.asarray(sample["gt_bboxes"], dtype=np.float32).reshape(-1, 4)
        )
    if "gt_classes" in sample:
        out["gt_classes"] = torch.as_tensor(
            np.asarray(sample["gt_classes"], dtype=np.int64).reshape(-1)
        )
    return out


class ToTensor:
    """numpy sample -> torch: ``img`` uint8 [H, W, 3] -> float32 [3, H, W] (values 0..255, RGB
    or YUV444 with ``to_yuv``), ``gt_bboxes`` -> float32 [N, 4], ``gt_classes`` -> int64 [N].
    Other keys (shapes, ``scale_factor``, ``img_id``) stay as they are. The conversion is
    :func:`to_chw_float`; followed by ``Normalize`` inside a dataset, both run as one pass
    (``fused.ToTensorNormalize``).
    """

    def __init__(self, to_yuv: bool = False) -> None:
        self.to_yuv = bool(to_yuv)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        img = sample["img"]
        if not (isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[2] == 3):
            raise TypeError(
                "ToTensor expects img as a numpy [H, W, 3] array, got "
                f"{type(img).__name__} {getattr(img, 'shape', '')}"
            )
        out = targets_to_tensors(sample)
        if img.dtype == np.uint8:
            out["img"] = to_chw_float(img, self.to_yuv)
        else:  # not a decoded image (the datasets give uint8): the plain float computation
            t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).to(torch.float32)
            out["img"] = rgb_to_yuv444(t) if self.to_yuv else t
        return out

    def __repr__(self) -> str:
        return f"ToTensor(to_yuv={self.to_yuv})"


def _per_channel(value: float | Sequence[float], name: str) -> torch.Tensor:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        vals = [float(value)] * 3
    else:
        vals = [float(v) for v in value]
        if len(vals) != 3:
            raise ValueError(
                f"{name} must be a number or 3 numbers (one per channel), got {value!r}"
            )
    return torch.tensor(vals, dtype=torch.float32).view(3, 1, 1)


class Normalize:
    """``img = (img - mean) / std`` on the float tensor; mean/std are scalars or per channel."""

    def __init__(self, mean: float | Sequence[float], std: float | Sequence[float]) -> None:
        self.mean = _per_channel(mean, "mean")
        self.std = _per_channel(std, "std")
        if bool((self.std <= 0).any()):
            raise ValueError(f"std must be > 0, got {std!r}")
        self._tables: tuple[bytes, list[np.ndarray]] | None = None

    def lookup_tables(self) -> list[np.ndarray]:
        """:func:`lookup_tables` of this mean and std (cached; recomputed if they change)."""
        key = self.mean.numpy().tobytes() + self.std.numpy().tobytes()
        if self._tables is None or self._tables[0] != key:
            self._tables = (key, lookup_tables(self.mean, self.std))
        return self._tables[1]

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        img = sample["img"]
        if not isinstance(img, torch.Tensor):
            raise TypeError("Normalize works on the tensor image: put ToTensor before it")
        out = dict(sample)
        out["img"] = (img - self.mean) / self.std
        return out

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"
