"""FCOSHead: separable-conv towers whose weights are shared across strides, one BN per stride.

Per stride ``s`` (feature ``x_s [B, C_in, H_s, W_s]``)::

    cls tower: stacked_convs x (dw3x3 -> BN_s -> pw1x1 -> BN_s -> ReLU) -> conv_cls 3x3 -> cls
    reg tower: stacked_convs x (dw3x3 -> BN_s -> pw1x1 -> BN_s -> ReLU) -> conv_reg 3x3 -> ReLU
                                                                         -> conv_centerness 3x3

Conv weights are shared by all strides (the detector sees one object at every scale), while
each stride normalises with its own BatchNorm, as HAT does: feature statistics differ per level
and a shared BN would mix them. The depthwise-separable tower costs about a quarter of a plain
3x3 tower at 64 channels.

Output precision flags (``int8_output``, ``int16_output``, ``dequant_output``) do nothing in the
float model; the quantization flow reads them from the head (see :attr:`FCOSHead.output_dtype`
and :attr:`FCOSHead.output_module_names`) to pick the dtype of the three predictor convs' outputs
and whether the quantized body returns float (dequantized) or integer tensors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from fcos_core.models.fast_batchnorm import batch_norm_relu
from fcos_core.models.fast_conv import conv2d


class SharedSeparableConv(nn.Module):
    """Depthwise 3x3 + pointwise 1x1 conv shared by all strides, BatchNorms per stride, ReLU.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        num_levels: number of strides (one BN pair each).
    """

    def __init__(self, in_channels: int, out_channels: int, num_levels: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)
        self.dw_bn = nn.ModuleList(nn.BatchNorm2d(in_channels) for _ in range(num_levels))
        self.pw = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pw_bn = nn.ModuleList(nn.BatchNorm2d(out_channels) for _ in range(num_levels))
        self.relu = nn.ReLU()

    def forward(self, x: Tensor, level: int) -> Tensor:
        """``[B, in, H, W] -> [B, out, H, W]`` using the BatchNorms of stride index ``level``."""
        # eager CPU training: faster conv weight gradients and a fused BN-ReLU kernel
        # (fcos_core.models.fast_conv / fast_batchnorm); plain module calls everywhere else
        x = batch_norm_relu(self.dw_bn[level], conv2d(self.dw, x))
        return batch_norm_relu(self.pw_bn[level], conv2d(self.pw, x), self.relu)


class FCOSHead(nn.Module):
    """FCOS head producing per-stride classification, box and centerness maps.

    Args:
        num_classes: object classes (no background channel), >= 1.
        in_strides: strides of the incoming feature list, increasing.
        out_strides: strides to predict at; each must be in ``in_strides``.
        stride2channels: stride -> channels of the incoming feature; every out stride must have
            the same channel count because the tower weights are shared.
        upscale_bbox_pred: in eval mode multiply box outputs by the stride, so they are in
            pixels (training always predicts in stride units).
        feat_channels: tower channels.
        stacked_convs: separable convs per tower (>= 1).
        int8_output / int16_output: quantized output dtype of the predictor convs (at most one
            may be set; neither means the quantized convs keep int32 accumulators).
        dequant_output: the quantized body returns float (dequantized) outputs.
        prior_prob: initial foreground probability; the cls bias is ``-log((1-p)/p)``.
        conv_init: tower conv init, ``"normal"`` (HAT's Normal(0, 0.01)) or ``"kaiming"`` (He
            normal, fan-out: every tower conv feeds a BatchNorm, which is scale-invariant, so a
            0.01 weight makes early SGD steps far larger in effect); the three predictor convs
            are Normal(0, 0.01) either way.

    Forward:
        ``feats``: list of ``[B, stride2channels[s], H_s, W_s]`` at ``in_strides``.
        Returns the flat tuple ``(cls_0..cls_{S-1}, box_0..box_{S-1}, ctr_0..ctr_{S-1})`` over
        the ``S`` out strides: ``cls [B, num_classes, H_s, W_s]`` logits, ``box [B, 4, H_s, W_s]``
        non-negative (l, t, r, b) distances in stride units (pixels when ``upscale_bbox_pred`` in
        eval), ``ctr [B, 1, H_s, W_s]`` centerness logits.
    """

    def __init__(
        self,
        num_classes: int,
        in_strides: Sequence[int],
        out_strides: Sequence[int],
        stride2channels: Mapping[int, int],
        upscale_bbox_pred: bool = False,
        feat_channels: int = 256,
        stacked_convs: int = 4,
        int8_output: bool = True,
        int16_output: bool = False,
        dequant_output: bool = True,
        prior_prob: float = 0.01,
        conv_init: str = "normal",
    ) -> None:
        super().__init__()
        in_strides, out_strides = list(in_strides), list(out_strides)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not out_strides or sorted(set(out_strides)) != out_strides:
            raise ValueError(
                f"out_strides must be non-empty and strictly increasing, got {out_strides}"
            )
        if sorted(set(in_strides)) != in_strides:
            raise ValueError(f"in_strides must be strictly increasing, got {in_strides}")
        missing = [s for s in out_strides if s not in in_strides]
        if missing:
            raise ValueError(
                f"out_strides {out_strides} has strides {missing} that are not in "
                f"in_strides {in_strides}; the head can only predict at strides "
                "it receives"
            )
        no_channels = [s for s in in_strides if s not in stride2channels]
        if no_channels:
            raise ValueError(
                f"stride2channels {dict(stride2channels)} has no entry for strides "
                f"{no_channels} of in_strides {in_strides}"
            )
        channels = {stride2channels[s] for s in out_strides}
        if len(channels) != 1:
            raise ValueError(
                f"stride2channels gives different channels {sorted(channels)} for "
                f"out_strides {out_strides}; the shared tower needs one width "
                "(make the neck's out_channels equal)"
            )
        if feat_channels < 1 or stacked_convs < 1:
            raise ValueError(
                f"feat_channels and stacked_convs must be >= 1, got "
                f"{feat_channels} and {stacked_convs}"
            )
        if int8_output and int16_output:
            raise ValueError(
                "int8_output and int16_output are both true; set at most one "
                "(int16_output=true for 16-bit head outputs)"
            )
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"prior_prob must be in (0, 1), got {prior_prob}")
        if conv_init not in ("normal", "kaiming"):
            raise ValueError(f"conv_init must be 'normal' or 'kaiming', got {conv_init!r}")
        self.conv_init = conv_init

        self.num_classes = num_classes
        self.in_strides = in_strides
        self.out_strides = out_strides
        self.stride2channels = dict(stride2channels)
        self.upscale_bbox_pred = upscale_bbox_pred
        self.feat_channels = feat_channels
        self.stacked_convs = stacked_convs
        self.int8_output = int8_output
        self.int16_output = int16_output
        self.dequant_output = dequant_output
        # positions of the out strides in the incoming list
        self._in_index = [in_strides.index(s) for s in out_strides]

        levels = len(out_strides)
        in_ch = channels.pop()
        self.cls_convs = nn.ModuleList(
            SharedSeparableConv(in_ch if i == 0 else feat_channels, feat_channels, levels)
            for i in range(stacked_convs)
        )
        self.reg_convs = nn.ModuleList(
            SharedSeparableConv(in_ch if i == 0 else feat_channels, feat_channels, levels)
            for i in range(stacked_convs)
        )
        self.conv_cls = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
        self.conv_reg = nn.Conv2d(feat_channels, 4, 3, padding=1)
        self.conv_centerness = nn.Conv2d(feat_channels, 1, 3, padding=1)
        self.bbox_relu = nn.ReLU()
        self._init_weights(prior_prob)

    def _init_weights(self, prior_prob: float) -> None:
        predictors = {self.conv_cls, self.conv_reg, self.conv_centerness}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if self.conv_init == "kaiming" and m not in predictors:
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                else:
                    nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # start with every point at foreground probability prior_prob (RetinaNet): without it
        # the ~5000 background points per image swamp the focal loss in the first steps
        nn.init.constant_(self.conv_cls.bias, -math.log((1 - prior_prob) / prior_prob))

    @property
    def output_dtype(self) -> str:
        """Quantized dtype of the predictor outputs: ``"int8"``, ``"int16"`` or ``"int32"``."""
        return "int8" if self.int8_output else "int16" if self.int16_output else "int32"

    @property
    def output_module_names(self) -> tuple[str, str, str]:
        """Names (within the head) of the convs whose outputs the precision flags apply to."""
        return ("conv_cls", "conv_reg", "conv_centerness")

    def forward(self, feats: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """See the class docstring for shapes."""
        if len(feats) != len(self.in_strides):
            raise ValueError(
                f"FCOSHead got {len(feats)} features, expected one per in_stride {self.in_strides}"
            )
        cls_out, box_out, ctr_out = [], [], []
        for level, (idx, stride) in enumerate(zip(self._in_index, self.out_strides)):
            x = feats[idx]
            cls_feat, reg_feat = x, x
            for conv in self.cls_convs:
                cls_feat = conv(cls_feat, level)
            for conv in self.reg_convs:
                reg_feat = conv(reg_feat, level)
            box = self.bbox_relu(self.conv_reg(reg_feat))
            if self.upscale_bbox_pred and not self.training:
                box = box * float(stride)
            cls_out.append(self.conv_cls(cls_feat))
            box_out.append(box)
            ctr_out.append(self.conv_centerness(reg_feat))
        return (*cls_out, *box_out, *ctr_out)
