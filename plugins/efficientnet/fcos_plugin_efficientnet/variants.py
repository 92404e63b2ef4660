"""EfficientNet B0-B7 as numbers: compound-scaling coefficients and the B0 stage table.

Torch-free, so the schema and the docs can use it. The values are the paper's (Tan & Le,
"EfficientNet: Rethinking Model Scaling for CNNs", 2019, Table 1 and section 4) and agree with
torchvision's ``efficientnet_b0`` ... ``efficientnet_b7``.
"""

from __future__ import annotations

import math
from typing import NamedTuple


class Scaling(NamedTuple):
    """Compound-scaling coefficients of one variant."""

    width: float  # channel multiplier
    depth: float  # multiplier of the number of blocks per stage
    resolution: int  # the paper's input size (informational: the backbone accepts any size)
    dropout: float  # dropout before the classifier (include_top only)


#: model_type -> coefficients (paper: phi = 0..7 with alpha=1.2, beta=1.1, gamma=1.15, rounded)
VARIANTS: dict[str, Scaling] = {
    "b0": Scaling(1.0, 1.0, 224, 0.2),
    "b1": Scaling(1.0, 1.1, 240, 0.2),
    "b2": Scaling(1.1, 1.2, 260, 0.3),
    "b3": Scaling(1.2, 1.4, 300, 0.3),
    "b4": Scaling(1.4, 1.8, 380, 0.4),
    "b5": Scaling(1.6, 2.2, 456, 0.4),
    "b6": Scaling(1.8, 2.6, 528, 0.5),
    "b7": Scaling(2.0, 3.1, 600, 0.5),
}


class StageSpec(NamedTuple):
    """One MBConv stage of the B0 baseline (before scaling)."""

    expand_ratio: int
    kernel: int
    stride: int
    in_channels: int
    out_channels: int
    num_blocks: int


#: the B0 baseline network (paper Table 1, stages 2-8); the stem is a 3x3/2 conv to 32 channels
B0_STAGES: tuple[StageSpec, ...] = (
    StageSpec(1, 3, 1, 32, 16, 1),
    StageSpec(6, 3, 2, 16, 24, 2),
    StageSpec(6, 5, 2, 24, 40, 2),
    StageSpec(6, 3, 2, 40, 80, 3),
    StageSpec(6, 5, 1, 80, 112, 3),
    StageSpec(6, 5, 2, 112, 192, 4),
    StageSpec(6, 3, 1, 192, 320, 1),
)
B0_STEM_CHANNELS = 32
#: the 1x1 conv before the classifier has 4x the channels of the last stage
HEAD_CHANNEL_RATIO = 4


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` without losing more than 10%.

    This is the rounding every EfficientNet implementation uses (hardware likes multiples of 8),
    so scaled widths match torchvision's and the TensorFlow reference.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def scale_width(channels: int, width: float) -> int:
    return make_divisible(channels * width)


def scale_depth(num_blocks: int, depth: float) -> int:
    return int(math.ceil(num_blocks * depth))


def feature_channels(model_type: str) -> list[int]:
    """Channels of the five features (strides 2, 4, 8, 16, 32) of a variant without its top."""
    width = VARIANTS[model_type].width
    last_per_stride: dict[int, int] = {}
    stride = 2  # after the stem
    for spec in B0_STAGES:
        stride *= spec.stride
        last_per_stride[stride] = scale_width(spec.out_channels, width)
    return [last_per_stride[s] for s in (2, 4, 8, 16, 32)]
