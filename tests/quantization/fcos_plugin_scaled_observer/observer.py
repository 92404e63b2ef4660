"""``ScaledAbsMaxObserver``: clip at a fixed fraction of the running max |x|."""

from __future__ import annotations

import torch

from fcos_core.quantization.observers import SymmetricObserver


class ScaledAbsMaxObserver(SymmetricObserver):
    """Range ``[-factor * max|x|, factor * max|x|]`` over everything observed.

    Args:
        factor: fraction of the running max |x| kept, in (0, 1].
        **kwargs: the per-tensor arguments (``dtype``, ...) for SymmetricObserver.
    """

    def __init__(self, factor: float = 0.5, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        if not 0.0 < factor <= 1.0:
            raise ValueError(f"factor: must be in (0, 1], got {factor}")
        self.factor = float(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == 0:
            return x
        amax = x.detach().abs().max().float() * self.factor
        self.max_val.copy_(torch.maximum(self.max_val, amax))
        self.min_val.copy_(-self.max_val)
        return x
