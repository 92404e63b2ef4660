"""Arguments of the ``BiFPN`` neck (torch-free)."""

from __future__ import annotations

from typing import Literal

import attrs

from fcos_core.schema import arg


@attrs.frozen(kw_only=True)
class BiFPNArgs:
    """BiFPN neck: EfficientDet's repeated top-down + bottom-up fusion, extra levels by max-pool."""

    in_strides: list[int] = arg(help="strides of all backbone features, increasing (2..32 for B0)")
    out_strides: list[int] = arg(help="strides of the outputs, doubling (e.g. 8, 16, 32, 64, 128)")
    stride2channels: dict[int, int] = arg(
        help="backbone stride -> its channels, for every in_stride"
    )
    out_channels: int = arg(help="channels of every output level")
    num_outs: int = arg(help="number of output levels; those past end_level are made by pooling")
    stack: int = arg(3, help="number of repeated BiFPN layers")
    start_level: int = arg(0, help="index into in_strides of the first backbone level used")
    end_level: int = arg(
        -1, help="index into in_strides of the last backbone level used (-1: last)"
    )
    fpn_name: Literal["bifpn_sum", "bifpn_fa"] = arg(
        "bifpn_sum", help="fusion: plain sum (quantizes well) or EfficientDet's fast attention"
    )
    activation: Literal["relu", "swish"] = arg(
        "relu", help="activation before each fusion node's separable conv"
    )
    bn_kwargs: dict[str, float] = arg(
        {}, help="extra BatchNorm2d arguments (eps, momentum); {} means torch's defaults"
    )
    conv_init: Literal["normal", "kaiming"] = arg(
        "normal",
        help="conv weight init: HAT's Normal(0, 0.01), or kaiming (fan-out, ReLU "
        "gain), which gives the BatchNorm-followed convs a sane effective step "
        "size from the first step (measured faster from scratch on small data)",
    )
