"""A tiny learnable detection batch for tests (imports torch; not re-exported by
:mod:`fcos_core.testing`, which stays torch-free)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

#: one colour per class
COLORS = np.array([[230, 40, 40], [40, 230, 40], [40, 40, 230]], np.uint8)


def synthetic_batch(n: int = 8, seed: int = 0, size: int = 64) -> dict[str, Any]:
    """``n`` noisy grey ``size`` x ``size`` images with 1-3 non-overlapping coloured rectangles
    (colour = class, 3 classes), normalised like Normalize(mean=128, std=128).

    Returns the engine's batch dict: ``img [n, 3, size, size]``, per image ``gt_bboxes [k, 4]``
    (x1, y1, x2, y2 in pixels) and ``gt_classes [k]``, and ``img_shape``.
    """
    g = np.random.default_rng(seed)
    imgs, boxes, labels = [], [], []
    for _ in range(n):
        img = (110 + g.integers(0, 20, (size, size, 3))).astype(np.uint8)
        bs: list[np.ndarray] = []
        ls: list[int] = []
        for _ in range(int(g.integers(1, 4))):
            for _ in range(50):  # a few tries to place a box that overlaps no other
                w, h = g.integers(12, 36, 2)
                x, y = g.integers(0, size - w), g.integers(0, size - h)
                b = np.array([x, y, x + w, y + h], np.float32)
                if all(
                    min(b[2], o[2]) <= max(b[0], o[0]) or min(b[3], o[3]) <= max(b[1], o[1])
                    for o in bs
                ):
                    break
            else:
                continue
            c = int(g.integers(0, 3))
            img[y : y + h, x : x + w] = COLORS[c]
            bs.append(b)
            ls.append(c)
        imgs.append(torch.from_numpy(img).permute(2, 0, 1).float().sub(128).div(128))
        boxes.append(torch.from_numpy(np.stack(bs)))
        labels.append(torch.tensor(ls, dtype=torch.long))
    return {
        "img": torch.stack(imgs),
        "gt_bboxes": boxes,
        "gt_classes": labels,
        "img_shape": [(size, size)] * n,
    }
