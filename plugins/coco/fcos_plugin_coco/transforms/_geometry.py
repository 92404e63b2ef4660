"""Book-keeping shared by the geometric transforms."""

from __future__ import annotations

from typing import Any

import numpy as np


def boxes_of(sample: dict[str, Any]) -> np.ndarray:
    """``gt_bboxes`` as a float32 [N, 4] array (an empty one when the sample has none)."""
    boxes = sample.get("gt_bboxes")
    if boxes is None:
        return np.zeros((0, 4), dtype=np.float32)
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def clip_boxes(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    out = boxes.copy()
    np.clip(out[:, 0::2], 0, width, out=out[:, 0::2])
    np.clip(out[:, 1::2], 0, height, out=out[:, 1::2])
    return out


def rescale_state(sample: dict[str, Any], sx: float, sy: float) -> None:
    """Record a rescale by (sx, sy): offsets scale with the image."""
    scale = np.asarray(sample.get("scale_factor", (1.0, 1.0)), dtype=np.float32)
    sample["scale_factor"] = (scale * np.array([sx, sy], dtype=np.float32)).astype(np.float32)
    if "crop_offset" in sample:
        off = np.asarray(sample["crop_offset"], dtype=np.float32)
        sample["crop_offset"] = (off * np.array([sx, sy], dtype=np.float32)).astype(np.float32)


def shift_state(sample: dict[str, Any], dx: float, dy: float) -> None:
    """Record a crop whose top-left corner is at (dx, dy) of the current image."""
    off = np.asarray(sample.get("crop_offset", (0.0, 0.0)), dtype=np.float32)
    sample["crop_offset"] = (off + np.array([dx, dy], dtype=np.float32)).astype(np.float32)


def pair(value: Any, name: str, positive: bool = True) -> tuple[int, int]:
    """A (height, width) pair of ints, checked at construction."""
    try:
        h, w = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (height, width), got {value!r}") from None
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (h, w)):
        raise ValueError(f"{name} must be two integers (height, width), got {value!r}")
    if positive and (h <= 0 or w <= 0):
        raise ValueError(f"{name} must be positive, got {value!r}")
    return int(h), int(w)
