"""``TimeLimit``: end training before a wall-clock budget runs out.

A fixed time budget is how models are compared fairly (``benchmarks/bench_real_data.py``
trains fcos and torchvision's FCOS for the same minutes) and how a user says "train for two
hours". An epoch count sized from a probe run overshoots whenever later epochs are slower
than the probe's (more detections to validate, more best checkpoints to write), so this
callback predicts instead of reacting: after each epoch it ends training when one more epoch
-- as long as the mean epoch so far or the last one, whichever is longer -- would cross the
budget. It runs after the other callbacks
(``run_last``) so that the epoch's validation and checkpoint writes are part of the epoch's
duration. The time spent is kept in checkpoints, so a resumed run counts on. The record --
``{"max_minutes", "elapsed_minutes", "stopped_epoch" (null: ran all epochs)}`` -- goes to
summary.json as the stage's ``time_limit``.
"""

from __future__ import annotations

import math
import time
from typing import Any

from fcos_core.engine.callbacks.base import Callback, LoopView


class TimeLimit(Callback):
    """See the module docstring."""

    run_last = True
    #: the clock (seconds); a class attribute so tests can drive it
    clock = staticmethod(time.monotonic)

    def __init__(self, max_minutes: float) -> None:
        if not (math.isfinite(max_minutes) and max_minutes > 0):
            raise ValueError(f"max_minutes must be a finite number > 0, got {max_minutes}")
        self.max_minutes = float(max_minutes)
        self.spent_s = 0.0  # training time of earlier processes (a resumed run)
        self.epochs_timed = 0  # epochs whose duration is in spent_s / this process's clock
        self.stopped_epoch: int | None = None  # 1-based
        self._t0: float | None = None
        self._epochs_at_t0 = 0
        self._spent_at_t0 = 0.0

    def elapsed_s(self) -> float:
        """Training seconds so far, over every process of this stage."""
        if self._t0 is None:
            return self.spent_s
        return self._spent_at_t0 + (self.clock() - self._t0)

    def on_loop_begin(self, loop: LoopView) -> None:
        self._start()
        self._publish(loop)

    def _start(self) -> None:
        self._t0 = self.clock()
        self._epochs_at_t0 = self.epochs_timed
        self._spent_at_t0 = self.spent_s

    def on_epoch_end(self, loop: LoopView) -> None:
        if not loop.is_training:
            return
        if self._t0 is None:  # resumed without on_loop_begin: start timing now
            self._start()
        self.epochs_timed += 1
        before = self.spent_s
        self.spent_s = self.elapsed_s()
        # the mean lags behind epochs that get slower (more detections to validate, more best
        # checkpoints to write): the next epoch is predicted at the longer of the two
        per_epoch = max(self.spent_s / self.epochs_timed, self.spent_s - before)
        budget_s = self.max_minutes * 60.0
        st = loop.state
        if self.spent_s + per_epoch > budget_s and st.epoch + 1 < st.num_epochs:
            self.stopped_epoch = st.epoch + 1
            st.stop_reason = (
                f"time limit: {self.spent_s / 60:.2f} of {self.max_minutes:g} "
                f"minutes spent, one more epoch takes ~{per_epoch / 60:.2f}"
            )
            loop.logger.info(
                "time limit reached",
                stage=loop.stage,
                epoch=st.epoch + 1,
                elapsed_min=round(self.spent_s / 60, 2),
                max_minutes=self.max_minutes,
            )

    def on_loop_end(self, loop: LoopView) -> None:
        self.spent_s = self.elapsed_s()
        self._publish(loop)

    def record(self) -> dict[str, Any]:
        """What summary.json keeps (the stage's ``time_limit``)."""
        return {
            "max_minutes": self.max_minutes,
            "elapsed_minutes": round(self.elapsed_s() / 60.0, 3),
            "stopped_epoch": self.stopped_epoch,
        }

    def _publish(self, loop: LoopView) -> None:
        extra = getattr(getattr(loop, "ctx", None), "summary_extra", None)
        if isinstance(extra, dict):
            extra["time_limit"] = self.record()

    # -- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "spent_s": self.elapsed_s(),
            "epochs_timed": self.epochs_timed,
            "stopped_epoch": self.stopped_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.spent_s = float(state.get("spent_s", 0.0))
        self.epochs_timed = int(state.get("epochs_timed", 0))
        self.stopped_epoch = state.get("stopped_epoch")
        self._start()  # the restored time is the base; this process's clock runs from here
