"""The body's flat output tuple and the per-point tensors the targets, losses and decoder use."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor


class PointOutputs(NamedTuple):
    """Head outputs of all strides, one row per output position (stride-major, row-major).

    ``cls [B, P, C]`` logits, ``box [B, P, 4]`` (l, t, r, b) as the head gave them,
    ``ctr [B, P]`` centerness logits, ``sizes``: ``(H_s, W_s)`` per stride.
    """

    cls: Tensor
    box: Tensor
    ctr: Tensor
    sizes: list[tuple[int, int]]


def split_outputs(
    outputs: Sequence[Tensor],
    num_levels: int,
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """``(cls_0.., box_0.., ctr_0..[, extra..])`` -> three per-stride lists.

    Extra trailing groups (the compile filter's max logits) are ignored here.
    """
    if len(outputs) < 3 * num_levels or len(outputs) % num_levels:
        raise ValueError(
            f"expected 3 x {num_levels} head outputs (cls, box, ctr per stride), got {len(outputs)}"
        )
    s = num_levels
    return list(outputs[:s]), list(outputs[s : 2 * s]), list(outputs[2 * s : 3 * s])


def flatten_outputs(outputs: Sequence[Tensor], num_levels: int) -> PointOutputs:
    """Concatenate per-stride maps ``[B, K, H_s, W_s]`` into per-point rows ``[B, P, K]``."""
    cls, box, ctr = split_outputs(outputs, num_levels)
    sizes = [(int(c.shape[-2]), int(c.shape[-1])) for c in cls]
    for group, name in ((box, "box"), (ctr, "centerness")):
        for c, t in zip(cls, group):
            if t.shape[-2:] != c.shape[-2:]:
                raise ValueError(
                    f"{name} output {tuple(t.shape)} and cls output "
                    f"{tuple(c.shape)} differ in spatial size"
                )

    def cat(maps: list[Tensor]) -> Tensor:
        return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)

    return PointOutputs(cat(cls), cat(box), cat(ctr).squeeze(-1), sizes)
