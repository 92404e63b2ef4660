"""``StatsMonitor``: a periodic log line (and metrics.csv row) with the training numbers."""

from __future__ import annotations

import time
from typing import Any

from fcos_core.engine.callbacks.base import Callback, LoopView


def _eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


class StatsMonitor(Callback):
    """Every ``log_freq`` steps: epoch, step, lr, loss terms, images/s and ETA.

    Throughput and ETA are measured over the steps since the previous line, so a slow first
    step (warm-up, compilation) does not distort them for long.
    """

    def __init__(self, log_freq: int = 1) -> None:
        if log_freq < 1:
            raise ValueError(f"log_freq must be >= 1, got {log_freq}")
        self.log_freq = log_freq
        self._t = 0.0
        self._images = 0
        self._steps = 0

    def on_loop_begin(self, loop: LoopView) -> None:
        self._t = time.perf_counter()
        self._images = 0
        self._steps = 0

    def on_step_end(self, loop: LoopView, batch: Any, outputs: Any) -> None:
        st = loop.state
        self._images += st.last_batch_size
        self._steps += 1
        if st.global_step % self.log_freq:
            return
        now = time.perf_counter()
        elapsed = max(now - self._t, 1e-9)
        per_step = elapsed / max(self._steps, 1)
        img_s = self._images / elapsed
        remaining = max(st.total_steps - st.global_step, 0) if loop.is_training else 0
        lr = current_lr(loop)
        losses = {f"loss_{k}" if k != "loss" else k: round(v, 6) for k, v in st.last_losses.items()}
        fields: dict[str, Any] = {
            "stage": loop.stage,
            "epoch": f"{st.epoch + 1}/{max(st.num_epochs, 1)}",
            "step": f"{st.batch_in_epoch}/{st.steps_per_epoch}",
            **losses,
            "img_s": round(img_s, 2),
        }
        if lr is not None:
            fields["lr"] = float(f"{lr:.6g}")
        if loop.is_training:
            fields["eta"] = _eta(remaining * per_step)
        loop.logger.info("train" if loop.is_training else "step", **fields)
        if loop.ctx is not None and loop.ctx.recorder is not None and loop.is_training:
            values = {**losses, "img_per_s": img_s}
            if lr is not None:
                values["lr"] = lr
            loop.ctx.recorder.log("step", loop.stage, st.epoch, st.global_step, **values)
        self._t = now
        self._images = 0
        self._steps = 0


def current_lr(loop: LoopView) -> float | None:
    opt = getattr(loop, "optimizer", None)
    if opt is None or not getattr(opt, "param_groups", None):
        return None
    return float(opt.param_groups[0]["lr"])
