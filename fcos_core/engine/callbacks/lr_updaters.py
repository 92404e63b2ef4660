"""Learning-rate schedules as callbacks: ``CosLrUpdater`` and ``StepDecayLrUpdater``.

Both set every parameter group's lr at ``on_step_begin`` as ``initial_lr * factor(position)``,
where ``initial_lr`` is the group's lr when training started (kept in the optimizer's state, as
torch's schedulers do) and the position is (epoch, global step). Being a pure function of the
position, the schedule needs no state of its own to resume exactly.
"""

from __future__ import annotations

import abc
import math

from fcos_core.engine.callbacks.base import Callback, LoopView


class _LrUpdater(Callback, abc.ABC):
    def __init__(self, step_log_interval: int) -> None:
        if step_log_interval < 0:
            raise ValueError(f"step_log_interval must be >= 0, got {step_log_interval}")
        self.step_log_interval = step_log_interval

    @abc.abstractmethod
    def factor(self, epoch: int, global_step: int, steps_per_epoch: int, num_epochs: int) -> float:
        """Multiplier of the base learning rate at this point of the schedule."""

    def on_loop_begin(self, loop: LoopView) -> None:
        if loop.optimizer is None:
            return
        for group in loop.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])

    def on_step_begin(self, loop: LoopView) -> None:
        if loop.optimizer is None:
            return
        st = loop.state
        f = self.factor(st.epoch, st.global_step, st.steps_per_epoch, st.num_epochs)
        for group in loop.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * f
        st.lr = loop.optimizer.param_groups[0]["lr"]
        if self.step_log_interval and st.global_step % self.step_log_interval == 0:
            loop.logger.debug("lr", stage=loop.stage, step=st.global_step, lr=st.lr)


class CosLrUpdater(_LrUpdater):
    """Linear warm-up, then cosine decay, by step.

    With ``W`` warm-up steps (``warmup_len`` epochs x steps per epoch when ``warmup_by:
    epoch``), ``T`` total steps, start ratio ``s`` and final ratio ``m``, the factor at step
    ``t`` (0-based) is::

        warm-up by step:   s + (1 - s) * t / W                      for t < W
        warm-up by epoch:  s + (1 - s) * e / warmup_len             for epoch e < warmup_len
        after:             m + (1 - m) * (1 + cos(pi * (t - W) / (T - W))) / 2

    i.e. torch's ``LinearLR(start_factor=s, total_iters=W)`` followed by
    ``CosineAnnealingLR(T_max=T - W, eta_min=m * lr)``.

    ``min_warmup_steps`` is a floor on ``W``: when the configured warm-up is shorter (one epoch
    of a 30-image data set is 4 steps), the warm-up becomes a per-step ramp over
    ``min_warmup_steps`` steps (capped at half the run), so the jump to the full lr happens
    after the early, large gradients have settled rather than at the first epoch boundary.
    """

    def __init__(
        self,
        warmup_len: int = 0,
        warmup_by: str = "epoch",
        warmup_start_ratio: float = 0.1,
        min_lr_ratio: float = 0.0,
        step_log_interval: int = 1,
        min_warmup_steps: int = 0,
    ) -> None:
        super().__init__(step_log_interval)
        if warmup_len < 0:
            raise ValueError(f"warmup_len must be >= 0, got {warmup_len}")
        if warmup_by not in ("epoch", "step"):
            raise ValueError(f"warmup_by must be 'epoch' or 'step', got {warmup_by!r}")
        if not 0.0 <= warmup_start_ratio <= 1.0:
            raise ValueError(f"warmup_start_ratio must be in [0, 1], got {warmup_start_ratio}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        if min_warmup_steps < 0:
            raise ValueError(f"min_warmup_steps must be >= 0, got {min_warmup_steps}")
        self.min_warmup_steps = min_warmup_steps
        self.warmup_len = warmup_len
        self.warmup_by = warmup_by
        self.warmup_start_ratio = warmup_start_ratio
        self.min_lr_ratio = min_lr_ratio

    def factor(self, epoch: int, global_step: int, steps_per_epoch: int, num_epochs: int) -> float:
        s, m = self.warmup_start_ratio, self.min_lr_ratio
        total = num_epochs * steps_per_epoch
        warm = self.warmup_len * (steps_per_epoch if self.warmup_by == "epoch" else 1)
        floor = min(self.min_warmup_steps, total // 2)
        if warm < floor:  # too short: a per-step ramp over the floor instead
            warm = floor
            if global_step < warm:
                return s + (1 - s) * global_step / warm
        elif self.warmup_by == "epoch":
            if epoch < self.warmup_len:
                return s + (1 - s) * epoch / self.warmup_len
        elif global_step < warm:
            return s + (1 - s) * global_step / warm
        progress = (global_step - warm) / max(total - warm, 1)
        return m + (1 - m) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


class StepDecayLrUpdater(_LrUpdater):
    """Multiplies the lr by ``lr_decay_factor`` at each epoch in ``lr_decay_id`` (0-based):
    factor at epoch ``e`` = ``lr_decay_factor ** (number of ids <= e)``, like torch's
    ``MultiStepLR(milestones=lr_decay_id, gamma=lr_decay_factor)`` stepped per epoch."""

    def __init__(
        self, lr_decay_id: list[int], lr_decay_factor: float = 0.1, step_log_interval: int = 1
    ) -> None:
        super().__init__(step_log_interval)
        if any(e < 0 for e in lr_decay_id):
            raise ValueError(f"lr_decay_id must hold epochs >= 0, got {lr_decay_id}")
        if lr_decay_factor <= 0:
            raise ValueError(f"lr_decay_factor must be > 0, got {lr_decay_factor}")
        self.lr_decay_id = sorted(lr_decay_id)
        self.lr_decay_factor = lr_decay_factor

    def factor(self, epoch: int, global_step: int, steps_per_epoch: int, num_epochs: int) -> float:
        return self.lr_decay_factor ** sum(1 for e in self.lr_decay_id if e <= epoch)
