"""FCOSBody: backbone -> neck -> head, the part of the detector that is quantized and compiled."""

from __future__ import annotations

from torch import Tensor, nn


class FCOSBody(nn.Module):
    """``img [B, 3, H, W]`` -> the head's flat tuple ``(cls_0.., box_0.., ctr_0..)``.

    Kept as one module with tensor-only inputs and outputs so that the quantization flow can
    export it and swap it for a converted graph with the same output structure.

    Args:
        backbone: image -> list of features ordered by increasing stride.
        neck: backbone features -> list of features at the neck's out strides.
        head: neck features -> flat tuple of per-stride outputs (see ``FCOSHead``).
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.head = head

    def forward(self, img: Tensor) -> tuple[Tensor, ...]:
        """See the class docstring."""
        return tuple(self.head(self.neck(self.backbone(img))))
