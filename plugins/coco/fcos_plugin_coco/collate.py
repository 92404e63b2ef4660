"""``collate_2d``: list of samples -> batch (docs/interfaces.md, "Data samples and batches")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

#: keys stacked into one [B, 2] float32 tensor
_STACKED_PAIRS = ("scale_factor", "crop_offset")


def collate_2d(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack ``img`` into [B, 3, H, W]; ``scale_factor`` (and ``crop_offset`` when every sample
    has one) into [B, 2] float32 tensors; keep every other key as a list of length B
    (``gt_bboxes`` / ``gt_classes`` as lists of tensors of different lengths, shapes as lists
    of (h, w) tuples, ``img_id`` as a list of ints).
    """
    if len(samples) == 0:
        raise ValueError("collate_2d got an empty batch")
    keys = list(samples[0])
    batch: dict[str, Any] = {}
    for key in keys:
        values = [s.get(key) for s in samples]
        if key == "img":
            batch[key] = _stack_images(values)
        elif key in _STACKED_PAIRS and all(v is not None for v in values):
            batch[key] = torch.as_tensor(
                np.stack([np.asarray(v, dtype=np.float32).reshape(2) for v in values])
            )
        elif key in ("ori_shape", "img_shape", "pad_shape"):
            batch[key] = [tuple(int(x) for x in v) for v in values]
        else:
            batch[key] = values
    return batch


def _stack_images(images: list[Any]) -> torch.Tensor:
    if not all(isinstance(im, torch.Tensor) for im in images):
        raise TypeError("collate_2d stacks tensor images: add ToTensor to the transforms")
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) != 1:
        raise ValueError(
            f"collate_2d got images of different shapes {sorted(shapes)}: add a "
            "Pad transform (size=... or divisor=...) so a batch shares one shape"
        )
    return torch.stack(images)
