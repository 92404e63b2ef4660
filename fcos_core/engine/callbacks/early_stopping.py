"""``EarlyStopping``: end training when the monitored validation metric stalls.

It reads ``loop.state.val_results`` after each new validation (``loop.state.val_count``
changed), so it must see the epoch's validation: it runs after the other callbacks
(``run_last``, like ``Checkpoint``). When ``patience`` validations in a row did not beat the
best value by more than ``min_delta``, it sets ``loop.state.stop_reason``; the trainer finishes
the epoch's events and then ends training as after its last epoch (``on_loop_end``: the final
validation, ``last`` marked finished, the stage report), so a ``--resume`` of the run skips the
stage instead of training on. The ``best`` checkpoint is ``Checkpoint``'s, which picks the best
epoch by the same metric when configured alike (the schema's help says so).

State (best value, epoch of the best, validations without improvement, the stop) is kept in
checkpoints, so a resumed run counts on from where it was. The record -- ``{"monitor", "mode",
"best", "best_epoch", "stopped_epoch" (null: ran all epochs), "patience", "min_delta"}`` -- goes
to summary.json as the stage's ``early_stopping``.
"""

from __future__ import annotations

import math
from typing import Any

from fcos_core.engine.callbacks.base import Callback, LoopView


class EarlyStopping(Callback):
    """See the module docstring."""

    run_last = True  # after Validation at on_epoch_end: this epoch's result is there

    def __init__(
        self, monitor: str = "mAP", mode: str = "max", patience: int = 3, min_delta: float = 0.0
    ) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        if not (min_delta >= 0.0 and math.isfinite(min_delta)):
            raise ValueError(f"min_delta must be a finite number >= 0, got {min_delta}")
        self.monitor = monitor
        self.mode = mode
        self.patience = patience
        self.min_delta = float(min_delta)
        self.best: float | None = None
        self.best_epoch: int | None = None  # 1-based
        self.bad: int = 0  # validations in a row without improvement
        self.stopped_epoch: int | None = None  # 1-based
        self._seen_val_count = 0
        self._warned = False

    # -- decisions --------------------------------------------------------------------------

    def improved(self, value: float) -> bool:
        """``value`` beats the best so far by more than ``min_delta`` (NaN never does)."""
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def on_epoch_end(self, loop: LoopView) -> None:
        st = loop.state
        if not loop.is_training or st.val_count == self._seen_val_count:
            return  # no new validation this epoch (val_interval > 1)
        self._seen_val_count = st.val_count
        if self.monitor not in st.val_results:
            if not self._warned:
                self._warned = True
                loop.logger.warning(
                    "EarlyStopping: the monitored metric is not among the "
                    "validation results; not stopping early",
                    monitor=self.monitor,
                    available=sorted(st.val_results),
                )
            return
        value = float(st.val_results[self.monitor])
        if self.improved(value):
            self.best, self.best_epoch, self.bad = value, st.epoch + 1, 0
        else:
            self.bad += 1
        self._publish(loop)
        if self.bad >= self.patience and st.epoch + 1 < st.num_epochs:
            self.stopped_epoch = st.epoch + 1
            st.stop_reason = (
                f"early stopping: {self.monitor} has not improved by more than "
                f"{self.min_delta:g} for {self.bad} validation(s); best "
                f"{self.best} at epoch {self.best_epoch}"
            )
            self._publish(loop)
            loop.logger.info(
                "early stopping",
                stage=loop.stage,
                epoch=st.epoch + 1,
                monitor=self.monitor,
                value=value,
                best=self.best,
                best_epoch=self.best_epoch,
                patience=self.patience,
            )

    def on_loop_begin(self, loop: LoopView) -> None:
        self._publish(loop)

    def on_loop_end(self, loop: LoopView) -> None:
        self._publish(loop)

    def record(self) -> dict[str, Any]:
        """What summary.json keeps (the stage's ``early_stopping``)."""
        return {
            "monitor": self.monitor,
            "mode": self.mode,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "stopped_epoch": self.stopped_epoch,
            "patience": self.patience,
            "min_delta": self.min_delta,
        }

    def _publish(self, loop: LoopView) -> None:
        extra = getattr(getattr(loop, "ctx", None), "summary_extra", None)
        if isinstance(extra, dict):
            extra["early_stopping"] = self.record()

    # -- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad": self.bad,
            "stopped_epoch": self.stopped_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")
        self.best_epoch = state.get("best_epoch")
        self.bad = int(state.get("bad", 0))
        self.stopped_epoch = state.get("stopped_epoch")
        self._seen_val_count = 0  # a resumed loop counts its validations from 0 again
