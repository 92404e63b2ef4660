"""EfficientNet B0-B7 (Tan & Le, 2019) as an fcos backbone.

The network is the paper's: a 3x3/2 stem, seven stages of MBConv blocks, and (with
``include_top``) a 1x1 conv, global average pool, dropout and a linear classifier. Widths and
depths scale with the variant (see :mod:`fcos_plugin_efficientnet.variants`). Without the top
it returns the last feature map of every stride, which is what a detection neck consumes.

HAT's deployed variant (and the fcos default) is ``activation="relu"``, ``use_se_block=False``:
relu without squeeze-excitation quantizes to int8 with little loss and runs as plain conv/add on
an accelerator. ``activation="swish"``, ``use_se_block=True``, ``include_top=True`` is exactly
torchvision's ``efficientnet_bN`` (same parameters; see :mod:`fcos_plugin_efficientnet.weights`).

The image is expected normalised as the data pipeline does it (mean 128, std 128).
"""

from __future__ import annotations

import logging
from typing import Any

from torch import Tensor, nn

from fcos_plugin_efficientnet.layers import ACTIVATIONS, ConvBNAct, MBConv
from fcos_plugin_efficientnet.variants import (
    B0_STAGES,
    B0_STEM_CHANNELS,
    HEAD_CHANNEL_RATIO,
    VARIANTS,
    scale_depth,
    scale_width,
)

logger = logging.getLogger(__name__)

#: strides of the features returned without the top (one per stride the network reaches)
FEATURE_STRIDES: tuple[int, ...] = (2, 4, 8, 16, 32)


class EfficientNet(nn.Module):
    """EfficientNet backbone or classifier.

    Args:
        model_type: ``"b0"`` ... ``"b7"``; selects the width/depth multipliers of the paper.
        num_classes: classifier outputs (only with ``include_top``).
        include_top: add the 1x1 head conv, pooling, dropout and linear classifier; ``forward``
            then returns logits. Without it, ``forward`` returns the features.
        activation: ``"relu"`` | ``"swish"`` (SiLU) | ``"hswish"`` (Hardswish), used everywhere.
        use_se_block: squeeze-and-excitation in every MBConv (reduction: block input / 4).
        bn_kwargs: extra ``nn.BatchNorm2d`` arguments (``eps``, ``momentum``).
        drop_connect_rate: stochastic-depth rate of the last block; block ``i`` of ``n`` uses
            ``rate * i / n``. Active only in training; see :meth:`set_drop_connect_rate`.
        dropout: dropout before the classifier; ``None`` takes the variant's paper value.

    Attributes:
        out_strides: ``[2, 4, 8, 16, 32]``, the strides of the features.
        out_channels: channels of those features (b0: ``[16, 24, 40, 112, 320]``).
        resolution: the paper's input size for this variant (informational).

    Shapes: ``forward(x)`` with ``x`` ``[B, 3, H, W]`` returns, without the top, a list of five
    tensors ``[B, out_channels[i], ceil(H / s), ceil(W / s)]`` for ``s`` in ``out_strides``;
    with the top, logits ``[B, num_classes]``.
    """

    def __init__(
        self,
        model_type: str = "b0",
        num_classes: int = 1000,
        include_top: bool = False,
        activation: str = "relu",
        use_se_block: bool = False,
        bn_kwargs: dict[str, Any] | None = None,
        drop_connect_rate: float = 0.2,
        dropout: float | None = None,
    ) -> None:
        super().__init__()
        if model_type not in VARIANTS:
            raise ValueError(f"model_type must be one of {', '.join(VARIANTS)}, got {model_type!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}"
            )
        if include_top and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 with include_top, got {num_classes}")
        if not 0.0 <= drop_connect_rate < 1.0:
            raise ValueError(
                f"drop_connect_rate must be in [0, 1), got {drop_connect_rate}; "
                "use 0 to disable stochastic depth"
            )
        scaling = VARIANTS[model_type]
        dropout = scaling.dropout if dropout is None else dropout
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        bn_kwargs = dict(bn_kwargs or {})
        try:
            nn.BatchNorm2d(1, **bn_kwargs)
        except TypeError as exc:
            raise ValueError(
                f"bn_kwargs {bn_kwargs} are not BatchNorm2d arguments: {exc}; use eps and momentum"
            ) from None

        self.model_type = model_type
        self.include_top = include_top
        self.resolution = scaling.resolution
        self.drop_connect_rate = drop_connect_rate

        stem_channels = scale_width(B0_STEM_CHANNELS, scaling.width)
        self.stem = ConvBNAct(
            3, stem_channels, 3, stride=2, activation=activation, bn_kwargs=bn_kwargs
        )

        depths = [scale_depth(spec.num_blocks, scaling.depth) for spec in B0_STAGES]
        total_blocks = sum(depths)
        # fraction of the drop-connect rate per block, kept so the rate can be changed later
        self._drop_fractions: list[float] = []
        stages: list[nn.Module] = []
        in_channels = stem_channels
        stride = 2
        last_stage_of_stride: dict[int, int] = {}
        for stage_idx, (spec, depth) in enumerate(zip(B0_STAGES, depths)):
            out_channels = scale_width(spec.out_channels, scaling.width)
            blocks: list[nn.Module] = []
            for i in range(depth):
                block_in = in_channels if i == 0 else out_channels
                fraction = len(self._drop_fractions) / total_blocks
                self._drop_fractions.append(fraction)
                blocks.append(
                    MBConv(
                        in_channels=block_in,
                        out_channels=out_channels,
                        # expansion rounds like every width so scaled variants match the reference
                        expanded_channels=scale_width(block_in, spec.expand_ratio),
                        kernel_size=spec.kernel,
                        stride=spec.stride if i == 0 else 1,
                        activation=activation,
                        use_se=use_se_block,
                        drop_connect=drop_connect_rate * fraction,
                        bn_kwargs=bn_kwargs,
                    )
                )
            stages.append(nn.Sequential(*blocks))
            stride *= spec.stride
            last_stage_of_stride[stride] = stage_idx
            in_channels = out_channels
        self.stages = nn.ModuleList(stages)
        # which stage outputs are returned as features: the last stage at each stride
        self._is_feature = [i in last_stage_of_stride.values() for i in range(len(stages))]
        self.out_strides: list[int] = list(FEATURE_STRIDES)
        self.out_channels: list[int] = [
            scale_width(B0_STAGES[last_stage_of_stride[s]].out_channels, scaling.width)
            for s in FEATURE_STRIDES
        ]

        if include_top:
            head_channels = HEAD_CHANNEL_RATIO * in_channels
            self.head = ConvBNAct(
                in_channels, head_channels, 1, activation=activation, bn_kwargs=bn_kwargs
            )
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.flatten = nn.Flatten(1)
            self.dropout = nn.Dropout(dropout)
            self.classifier = nn.Linear(head_channels, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference initialisation (as torchvision): convs Kaiming-normal (fan-out),
        BN weight 1 / bias 0, linear uniform(+-1/sqrt(out_features)), biases 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / m.out_features**0.5
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def set_drop_connect_rate(self, rate: float) -> None:
        """Change the stochastic-depth rate of every block (0 before exporting a train graph)."""
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop_connect_rate must be in [0, 1), got {rate}")
        self.drop_connect_rate = rate
        blocks = [b for stage in self.stages for b in stage]
        for block, fraction in zip(blocks, self._drop_fractions):
            block.drop.p = rate * fraction if block.use_residual else 0.0

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """``[B, 3, H, W]`` -> five features at ``out_strides`` (see the class docstring)."""
        features: list[Tensor] = []
        x = self.stem(x)
        for stage, is_feature in zip(self.stages, self._is_feature):
            x = stage(x)
            if is_feature:
                features.append(x)
        return features

    def forward(self, x: Tensor) -> list[Tensor] | Tensor:
        features = self.forward_features(x)
        if not self.include_top:
            return features
        x = self.flatten(self.pool(self.head(features[-1])))
        return self.classifier(self.dropout(x))


def build_efficientnet(
    model_type: str = "b0",
    num_classes: int = 1000,
    include_top: bool = False,
    activation: str = "relu",
    use_se_block: bool = False,
    bn_kwargs: dict[str, Any] | None = None,
    drop_connect_rate: float = 0.2,
    dropout: float | None = None,
    pretrained: str | None = None,
) -> EfficientNet:
    """The registered factory: an :class:`EfficientNet`, optionally loaded from ``pretrained``.

    ``pretrained`` is a file holding a torchvision ``efficientnet_bN`` state dict or one of
    ours (optionally inside a checkpoint dict under ``state_dict``/``model``). The load report
    (matched / missing / unexpected / shape-mismatched keys) is logged and kept as
    ``model.pretrained_report``.
    """
    model = EfficientNet(
        model_type=model_type,
        num_classes=num_classes,
        include_top=include_top,
        activation=activation,
        use_se_block=use_se_block,
        bn_kwargs=bn_kwargs,
        drop_connect_rate=drop_connect_rate,
        dropout=dropout,
    )
    if pretrained is not None:
        from fcos_plugin_efficientnet.weights import load_pretrained

        report = load_pretrained(model, pretrained)
        model.pretrained_report = report
        logger.info(
            "efficientnet-%s pretrained weights from %s: %s",
            model_type,
            pretrained,
            report.summary(),
        )
    return model
