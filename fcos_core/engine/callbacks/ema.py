"""``ExponentialMovingAverage``: an averaged copy of the weights (YOLOX's ModelEMA rule).

After every optimizer step ``n`` (counting from 1)::

    d_n = decay * (1 - exp(-n / ramp_steps))
    ema = d_n * ema + (1 - d_n) * weights        (every floating-point parameter and buffer)

so early on (small ``n``) the average follows the weights closely and later it averages over
roughly ``1 / (1 - decay)`` steps. Integer buffers (BatchNorm's ``num_batches_tracked``) are
copied. The loop's ``eval_model`` becomes the average: ``Validation``, ``Checkpoint``'s
``state_dict`` (what the next stage loads) and ``SaveTraced`` use it; the raw weights stay in
the checkpoint's ``train_state_dict`` for resuming.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from fcos_core.engine.callbacks.base import Callback, LoopView
from fcos_core.engine.modes import set_mode


class ExponentialMovingAverage(Callback):
    """Keeps ``loop.ema_model``; see the module docstring for the update rule."""

    def __init__(self, decay: float = 0.9998, ramp_steps: float = 2000.0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if ramp_steps <= 0:
            raise ValueError(f"ramp_steps must be > 0, got {ramp_steps}")
        self.decay = decay
        self.ramp_steps = ramp_steps
        self.updates = 0
        self.model: Any = None
        self._float: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        self._other: list[tuple[torch.Tensor, torch.Tensor]] = []

    def current_decay(self, updates: int | None = None) -> float:
        n = self.updates if updates is None else updates
        return self.decay * (1.0 - math.exp(-n / self.ramp_steps))

    def on_loop_begin(self, loop: LoopView) -> None:
        if not loop.is_training:
            return
        self.model = set_mode(copy.deepcopy(loop.model), False)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._pair(loop.model)
        loop.ema_model = self.model

    def _pair(self, model: Any) -> None:
        # state_dict tensors share storage with the live parameters and buffers
        ema_sd = self.model.state_dict()
        src_sd = model.state_dict()
        ema_f, src_f, other = [], [], []
        for k, v in ema_sd.items():
            if v.dtype.is_floating_point:
                ema_f.append(v)
                src_f.append(src_sd[k])
            else:
                other.append((v, src_sd[k]))
        self._float = (ema_f, src_f)
        self._other = other

    @torch.no_grad()
    def on_step_end(self, loop: LoopView, batch: Any, outputs: Any) -> None:
        if not loop.is_training or self.model is None:
            return
        self.updates += 1
        d = self.current_decay()
        ema_f, src_f = self._float
        if ema_f:
            torch._foreach_mul_(ema_f, d)
            torch._foreach_add_(ema_f, src_f, alpha=1.0 - d)
        for dst, src in self._other:
            dst.copy_(src)

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"updates": self.updates}
        if self.model is not None:
            out["ema"] = self.model.state_dict()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state.get("updates", 0))
        if self.model is not None and "ema" in state:
            self.model.load_state_dict(state["ema"])
