"""The stand-ins of :mod:`fcos_core.testing.standins` as a plugin (torch-free): registers
``tiny_backbone``, ``tiny_neck`` and ``tiny_head`` with schemas, so a test config can say
``backbone: {type: tiny_backbone, out_strides: [8, 16]}``.

Use it through the ``fcos_host`` fixture: ``fcos_host(StandIns())``.
"""

from __future__ import annotations

from typing import Any

import attrs

from fcos_core.hooks import hookimpl
from fcos_core.schema import arg

_MODULE = "fcos_core.testing.standins"


@attrs.frozen(kw_only=True)
class TinyBackboneArgs:
    """Test stand-in backbone: stride-2 conv+BN+ReLU stages."""

    out_strides: list[int] = arg([8, 16], help="strides of the returned features")
    width: int = arg(16, help="channel base of the default per-stage schedule")
    channels: list[int] | None = arg(None, help="explicit channels per stride-2 stage")
    residual_at: list[int] = arg([], help="strides whose stage ends with a residual block")


@attrs.frozen(kw_only=True)
class TinyNeckArgs:
    """Test stand-in neck: 1x1 laterals or one BiFPN-like pass."""

    in_strides: list[int] = arg(help="strides of the incoming features")
    in_channels: list[int] = arg(help="channels of the incoming features")
    out_channels: int = arg(32, help="output channels")
    fusion: str = arg("lateral", help="'lateral' (1x1 per level) or 'bifpn'")


@attrs.frozen(kw_only=True)
class TinyHeadArgs:
    """Test stand-in head with FCOSHead's output structure."""

    num_classes: int = arg(help="object classes")
    in_strides: list[int] = arg(help="strides of the incoming features")
    in_channels: int = arg(32, help="channels of every incoming feature")
    feat_channels: int = arg(16, help="tower channels")


class StandIns:
    """A test plugin registering the stand-ins (factories referenced lazily, so registering
    imports no torch)."""

    @hookimpl
    def register_backbones(self, register: Any) -> None:
        register("tiny_backbone", factory=f"{_MODULE}:TinyBackbone", schema=TinyBackboneArgs)

    @hookimpl
    def register_necks(self, register: Any) -> None:
        register("tiny_neck", factory=f"{_MODULE}:TinyNeck", schema=TinyNeckArgs)

    @hookimpl
    def register_heads(self, register: Any) -> None:
        register("tiny_head", factory=f"{_MODULE}:TinyHead", schema=TinyHeadArgs)
