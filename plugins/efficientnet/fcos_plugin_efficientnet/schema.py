"""Arguments of the ``efficientnet`` backbone (torch-free)."""

from __future__ import annotations

from typing import Literal

import attrs

from fcos_core.schema import arg


@attrs.frozen(kw_only=True)
class EfficientNetArgs:
    """EfficientNet B0-B7 backbone: features at strides 2-32, or an ImageNet classifier."""

    model_type: Literal["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7"] = arg(
        "b0", help="variant; sets the paper's width/depth multipliers"
    )
    num_classes: int = arg(1000, help="classifier outputs; used only when include_top is true")
    include_top: bool = arg(
        False, help="true: 1x1 conv + pool + dropout + linear, returns logits; false: features"
    )
    activation: Literal["relu", "swish", "hswish"] = arg(
        "relu", help="activation in every block; relu quantizes best, swish is the paper's"
    )
    use_se_block: bool = arg(False, help="add squeeze-and-excitation to every MBConv block")
    bn_kwargs: dict[str, float] = arg(
        {}, help="extra BatchNorm2d arguments (eps, momentum); {} means torch's defaults"
    )
    drop_connect_rate: float = arg(
        0.2, help="stochastic-depth rate of the last block (linear in block index); 0 disables"
    )
    dropout: float | None = arg(
        None, help="dropout before the classifier; null means the variant's paper value"
    )
    pretrained: str | None = arg(
        None, help="path of a torchvision-format or fcos state dict to start from"
    )
