"""collate_2d batches images and variable-length targets as docs/interfaces.md says."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fcos_plugin_coco.collate import collate_2d


def _sample(n: int, img_id: int, crop: bool = False) -> dict:
    s = {
        "img": torch.full((3, 8, 6), float(img_id)),
        "gt_bboxes": torch.ones(n, 4) * img_id,
        "gt_classes": torch.arange(n),
        "img_id": img_id,
        "ori_shape": (16, 12),
        "img_shape": (8, 6),
        "pad_shape": (8, 6),
        "scale_factor": np.array([0.5, 0.5], np.float32),
    }
    if crop:
        s["crop_offset"] = np.array([1.0, 2.0], np.float32)
    return s


def test_collate_2d_layout():
    batch = collate_2d([_sample(2, 1), _sample(0, 2), _sample(5, 3)])
    assert batch["img"].shape == (3, 3, 8, 6) and batch["img"][1].unique().item() == 2.0
    assert [b.shape[0] for b in batch["gt_bboxes"]] == [2, 0, 5]
    assert [c.dtype for c in batch["gt_classes"]] == [torch.int64] * 3
    assert batch["img_id"] == [1, 2, 3]
    assert batch["ori_shape"] == [(16, 12)] * 3 and batch["pad_shape"] == [(8, 6)] * 3
    assert batch["scale_factor"].dtype == torch.float32
    assert batch["scale_factor"].shape == (3, 2)
    assert "crop_offset" not in batch


def test_collate_2d_crop_offset():
    batch = collate_2d([_sample(1, 1, crop=True), _sample(1, 2, crop=True)])
    assert batch["crop_offset"].tolist() == [[1.0, 2.0], [1.0, 2.0]]


def test_collate_2d_errors():
    a, b = _sample(1, 1), _sample(1, 2)
    b["img"] = torch.zeros(3, 9, 6)
    with pytest.raises(ValueError, match="Pad"):
        collate_2d([a, b])
    a["img"] = np.zeros((8, 6, 3))
    with pytest.raises(TypeError, match="ToTensor"):
        collate_2d([a])
    with pytest.raises(ValueError, match="empty"):
        collate_2d([])
