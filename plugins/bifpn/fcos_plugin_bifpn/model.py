"""BiFPN (Tan, Pang & Le, "EfficientDet", 2020) as an fcos neck.

Levels ``P_0 .. P_{L-1}`` (finest first; P3..P7 in the seed) pass through ``stack`` identical
layers. Each layer is EfficientDet's top-down pass then bottom-up pass, ``2 (L - 1)`` fusion
nodes (8 for five levels)::

    td_{L-1} = P_{L-1}
    td_i     = node(P_i, up(td_{i+1}))                   i = L-2 .. 0      (top-down)
    out_0    = td_0
    out_i    = node(P_i, td_i, down(out_{i-1}))          i = 1 .. L-2      (bottom-up)
    out_{L-1}= node(P_{L-1}, down(out_{L-2}))

A node (see :class:`~fcos_plugin_bifpn.layers.FusionNode`) brings its inputs to
``out_channels`` with a 1x1 conv + BN where the channels differ (only backbone features, in
the first layer), resizes by x2 nearest upsampling or 2x2 max-pooling, merges them (plain sum
for ``bifpn_sum``, normalised non-negative weights for ``bifpn_fa``), then applies
activation -> depthwise 3x3 -> pointwise 1x1 -> BN. Levels past the backbone's last are made
from it by an optional 1x1 conv + BN (when its channels differ) and a 2x2 max-pool, then
further 2x2 max-pools.

Input sizes must be multiples of the largest output stride (128 in the seed), as the padded
512x512 images are: x2 upsampling must land on the finer level's size exactly.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from fcos_plugin_bifpn.layers import FusionNode, Resample, make_activation

FPN_NAMES = ("bifpn_sum", "bifpn_fa")


class BiFPNLayer(nn.Module):
    """One top-down + bottom-up pass over ``len(in_channels)`` levels.

    Submodules: ``top_down[k]`` makes ``td`` of level ``L-2-k``; ``bottom_up[k]`` makes ``out``
    of level ``k+1``.

    Shape: list of L tensors [B, in_channels[i], H / 2^i, W / 2^i] -> list of L tensors
    [B, channels, H / 2^i, W / 2^i].
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int,
        fpn_name: str,
        activation: str,
        bn_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        levels = len(in_channels)
        if levels < 2:
            raise ValueError(f"a BiFPN layer needs at least 2 levels, got {levels}")
        self.num_levels = levels
        c = list(in_channels)

        def node(chs: list[int], scales: list[int]) -> FusionNode:
            return FusionNode(chs, scales, channels, fpn_name, activation, bn_kwargs)

        # td of the coarsest level is its input, which may still have backbone channels
        top_down = []
        for i in range(levels - 2, -1, -1):
            coarser = c[i + 1] if i + 1 == levels - 1 else channels
            top_down.append(node([c[i], coarser], [0, 1]))
        bottom_up = []
        for i in range(1, levels):
            if i < levels - 1:
                bottom_up.append(node([c[i], channels, channels], [0, 0, -1]))
            else:
                bottom_up.append(node([c[i], channels], [0, -1]))
        self.top_down = nn.ModuleList(top_down)
        self.bottom_up = nn.ModuleList(bottom_up)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        levels = self.num_levels
        td: list[Tensor] = [feats[levels - 1]]  # td[j] is level L-1-j
        for k, node in enumerate(self.top_down):
            i = levels - 2 - k
            td.append(node([feats[i], td[-1]]))
        td.reverse()  # td[i] is level i
        outs: list[Tensor] = [td[0]]
        for k, node in enumerate(self.bottom_up):
            i = k + 1
            if i < levels - 1:
                outs.append(node([feats[i], td[i], outs[-1]]))
            else:
                outs.append(node([feats[i], outs[-1]]))
        return outs


class BiFPN(nn.Module):
    """Bidirectional feature pyramid over the backbone levels ``start_level .. end_level``.

    Args:
        in_strides: strides of *all* backbone features, increasing (B0: ``[2, 4, 8, 16, 32]``).
        out_strides: output strides; the first is ``in_strides[start_level]`` and each doubles.
        stride2channels: backbone channels per stride; must hold every ``in_strides`` entry.
        out_channels: channels of every output (and of every node).
        num_outs: number of outputs (``len(out_strides)``); levels past ``end_level`` come from
            max-pooling.
        stack: number of BiFPN layers.
        start_level / end_level: indices into ``in_strides`` of the first / last backbone
            feature used (``end_level=-1``: the last one).
        fpn_name: ``"bifpn_sum"`` (plain addition) or ``"bifpn_fa"`` (fast normalised fusion).
        activation: ``"relu"`` or ``"swish"``, before each node's separable conv.
        bn_kwargs: extra ``nn.BatchNorm2d`` arguments.
        conv_init: ``"normal"`` (HAT's Normal(0, 0.01)) or ``"kaiming"`` (He normal, fan-out).

    Attributes:
        out_strides, out_channels: lists of ``num_outs`` entries describing the outputs.

    Shape: ``forward(feats)`` with ``feats[i]`` ``[B, stride2channels[s_i], H / s_i, W / s_i]``
    for ``s_i`` in ``in_strides`` -> list of ``num_outs`` tensors
    ``[B, out_channels, H / s, W / s]`` for ``s`` in ``out_strides``.

    Initialisation: every conv weight Normal(0, 0.01) (``conv_init="kaiming"``: He normal with
    fan-out; every conv here feeds a BatchNorm, which is scale-invariant, so a 0.01 weight
    makes the first SGD steps act with a far larger effective step; biases, where present, 0),
    BatchNorm weight 1 and bias 0, fast-attention weights 1 (equal weighting at the start).
    """

    def __init__(
        self,
        in_strides: Sequence[int],
        out_strides: Sequence[int],
        stride2channels: dict[int, int],
        out_channels: int,
        num_outs: int,
        stack: int = 3,
        start_level: int = 0,
        end_level: int = -1,
        fpn_name: str = "bifpn_sum",
        activation: str = "relu",
        bn_kwargs: dict[str, Any] | None = None,
        conv_init: str = "normal",
    ) -> None:
        super().__init__()
        if conv_init not in ("normal", "kaiming"):
            raise ValueError(f"conv_init must be 'normal' or 'kaiming', got {conv_init!r}")
        self.conv_init = conv_init
        in_strides = [int(s) for s in in_strides]
        out_strides = [int(s) for s in out_strides]
        stride2channels = {int(k): int(v) for k, v in stride2channels.items()}
        self._check_args(
            in_strides,
            out_strides,
            stride2channels,
            out_channels,
            num_outs,
            stack,
            start_level,
            end_level,
            fpn_name,
            activation,
        )
        bn_kwargs = dict(bn_kwargs or {})
        try:
            nn.BatchNorm2d(1, **bn_kwargs)
        except TypeError as exc:
            raise ValueError(
                f"bn_kwargs {bn_kwargs} are not BatchNorm2d arguments: {exc}; use eps and momentum"
            ) from None
        end = end_level if end_level >= 0 else len(in_strides) + end_level
        self.in_strides = in_strides
        self.stride2channels = stride2channels
        self.start_level = start_level
        self.end_level = end
        self.fpn_name = fpn_name
        self.out_strides: list[int] = out_strides
        self.out_channels: list[int] = [out_channels] * num_outs

        level_channels = [stride2channels[s] for s in in_strides[start_level : end + 1]]
        extra = []
        last = level_channels[-1]
        for _ in range(num_outs - len(level_channels)):
            extra.append(Resample(last, out_channels, -1, bn_kwargs))
            last = out_channels
            level_channels.append(out_channels)
        self.extra = nn.ModuleList(extra)

        layers = []
        for _ in range(stack):
            layers.append(BiFPNLayer(level_channels, out_channels, fpn_name, activation, bn_kwargs))
            level_channels = [out_channels] * num_outs
        self.layers = nn.ModuleList(layers)
        self.reset_parameters()

    @staticmethod
    def _check_args(
        in_strides: list[int],
        out_strides: list[int],
        stride2channels: dict[int, int],
        out_channels: int,
        num_outs: int,
        stack: int,
        start_level: int,
        end_level: int,
        fpn_name: str,
        activation: str,
    ) -> None:
        if not in_strides or any(b <= a for a, b in itertools.pairwise(in_strides)):
            raise ValueError(f"in_strides must be a non-empty increasing list, got {in_strides}")
        missing = [s for s in in_strides if s not in stride2channels]
        if missing:
            raise ValueError(
                f"stride2channels has no entry for stride(s) {missing} of "
                f"in_strides {in_strides}; add 'stride: channels' for each"
            )
        bad = {s: c for s, c in stride2channels.items() if c < 1}
        if bad:
            raise ValueError(f"stride2channels must map strides to positive channels, got {bad}")
        n = len(in_strides)
        if not 0 <= start_level < n:
            raise ValueError(f"start_level must index in_strides (0..{n - 1}), got {start_level}")
        end = end_level if end_level >= 0 else n + end_level
        if not start_level <= end < n:
            raise ValueError(
                f"end_level must index in_strides at or after start_level "
                f"({start_level}..{n - 1}, or -1 for the last), got {end_level}"
            )
        used = in_strides[start_level : end + 1]
        if any(b != 2 * a for a, b in itertools.pairwise(used)):
            raise ValueError(
                f"the backbone levels used (in_strides[{start_level}:{end + 1}] = "
                f"{used}) must double from one to the next"
            )
        if num_outs < max(2, len(used)):
            raise ValueError(
                f"num_outs must be at least {max(2, len(used))} (the backbone "
                f"levels used, {used}), got {num_outs}"
            )
        expected = [used[0] * 2**i for i in range(num_outs)]
        if out_strides != expected:
            raise ValueError(
                f"out_strides must be {expected} for in_strides {in_strides}, "
                f"start_level {start_level} and num_outs {num_outs}, "
                f"got {out_strides}"
            )
        if out_channels < 1:
            raise ValueError(f"out_channels must be >= 1, got {out_channels}")
        if stack < 1:
            raise ValueError(f"stack must be >= 1, got {stack}")
        if fpn_name not in FPN_NAMES:
            raise ValueError(f"fpn_name must be one of {', '.join(FPN_NAMES)}, got {fpn_name!r}")
        make_activation(activation)  # raises ValueError naming the activation

    def reset_parameters(self) -> None:
        """The documented initialisation (see the class docstring)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if self.conv_init == "kaiming":
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                else:
                    nn.init.normal_(m.weight, mean=0.0, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for name, p in self.named_parameters():
            if name.endswith("fuse.weight"):
                nn.init.ones_(p)

    def check_inputs(self, strides: Sequence[int], channels: Sequence[int]) -> None:
        """Raise ``ValueError`` unless features with these strides and channels fit this neck.

        A detector calls it with the backbone's ``out_strides`` and ``out_channels`` when it is
        built, so a mismatch is reported before any data flows.
        """
        strides, channels = [int(s) for s in strides], [int(c) for c in channels]
        if strides != self.in_strides:
            raise ValueError(
                f"in_strides {self.in_strides} do not match the backbone's "
                f"out_strides {strides}; set in_strides: {strides}"
            )
        given = dict(zip(strides, channels))
        wrong = {
            s: (self.stride2channels[s], c)
            for s, c in given.items()
            if self.stride2channels[s] != c
        }
        if wrong:
            detail = ", ".join(
                f"stride {s}: {a} configured, backbone gives {b}" for s, (a, b) in wrong.items()
            )
            raise ValueError(
                f"stride2channels does not match the backbone ({detail}); "
                f"set stride2channels: {given}"
            )

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        levels = list(feats[self.start_level : self.end_level + 1])
        for resample in self.extra:
            levels.append(resample(levels[-1]))
        for layer in self.layers:
            levels = layer(levels)
        return levels
