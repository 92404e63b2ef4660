"""Grid points of the feature maps: where each output position sits in input pixels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def grid_points(
    sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Pixel coordinates of every output position, all strides concatenated.

    Position ``(i, j)`` of the stride-``s`` map sits at ``(x, y) = (j*s + s//2, i*s + s//2)``
    (HAT's convention; the integer offset keeps the decoder quantization friendly). Positions are
    ordered stride by stride, row-major within a stride, matching ``tensor.flatten(2)``.

    Args:
        sizes: ``(H_s, W_s)`` per stride.
        strides: the strides, same length as ``sizes``.

    Returns:
        ``points [P, 2]`` (x, y) and ``point_strides [P]`` where ``P = sum(H_s * W_s)``.
    """
    pts, strs = [], []
    for (h, w), s in zip(sizes, strides):
        ys = torch.arange(h, device=device, dtype=dtype) * s + s // 2
        xs = torch.arange(w, device=device, dtype=dtype) * s + s // 2
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        pts.append(torch.stack((xx.reshape(-1), yy.reshape(-1)), dim=-1))
        strs.append(torch.full((h * w,), float(s), device=device, dtype=dtype))
    return torch.cat(pts), torch.cat(strs)


def distances_to_boxes(points: Tensor, distances: Tensor) -> Tensor:
    """Boxes from a point and its (left, top, right, bottom) distances in pixels.

    Args:
        points: ``[*, 2]`` (x, y).
        distances: ``[*, 4]`` non-negative (l, t, r, b), broadcastable with ``points``.

    Returns:
        ``[*, 4]`` xyxy boxes.
    """
    x, y = points[..., 0], points[..., 1]
    return torch.stack(
        (
            x - distances[..., 0],
            y - distances[..., 1],
            x + distances[..., 2],
            y + distances[..., 3],
        ),
        dim=-1,
    )
