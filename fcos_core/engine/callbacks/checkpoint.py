"""``Checkpoint``: writes ``<save_dir>/<prefix>checkpoint-last.pth.tar`` and ``-best.pth.tar``.

It runs after every other callback at each event (``run_last``), so what it saves includes the
step's EMA update and the epoch's validation metric. When it saves (rank 0 only; every write
is atomic, see :mod:`fcos_core.engine.checkpoint_io`):

* ``on_loop_begin``, when the starting weights were just validated (``Validation``'s
  ``val_on_train_begin``): ``last`` and, as below, ``best``;
* ``on_step_end`` every ``save_interval_steps`` steps: ``last`` (mid-epoch position);
* ``on_epoch_end`` every ``save_interval`` epochs and after the final epoch: ``last``, and
  ``best`` when the epoch brought a new validation result that beats the best so far
  (``mode: max`` or ``min`` on ``monitor_metric_key``; without a key every save is the best,
  and a stage that never validated gets its final weights as ``best``);
* ``on_loop_end``: ``last`` marked finished (and ``best`` as above; with ``num_epochs: 0``
  this is the only save);
* ``on_interrupt`` (Ctrl-C; SIGTERM during ``fcos run``): ``last`` at the last finished step
  (the trainer holds the first signal until the running step is complete) -- unless a second
  signal cut a step short while the optimizer was changing the weights, in which case the
  previous ``last`` is kept.

The prefix defaults to ``<stage>-``, giving the paths the next stage's ``LoadCheckpoint``
expects (``float-checkpoint-best.pth.tar``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fcos_core.engine.callbacks.base import Callback, LoopView
from fcos_core.engine.checkpoint_io import atomic_save
from fcos_core.errors import FcosUserError


class Checkpoint(Callback):
    """See the module docstring."""

    run_last = True

    def __init__(
        self,
        save_dir: str,
        name_prefix: str | None = None,
        save_interval: int = 1,
        save_interval_steps: int | None = None,
        strict_match: bool = False,
        mode: str = "max",
        monitor_metric_key: str | None = None,
        save_last: bool = True,
        keep_best: bool = True,
    ) -> None:
        if save_interval < 1:
            raise ValueError(f"save_interval must be >= 1, got {save_interval}")
        if save_interval_steps is not None and save_interval_steps < 1:
            raise ValueError(f"save_interval_steps must be >= 1, got {save_interval_steps}")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if not (save_last or keep_best):
            raise ValueError("save_last and keep_best are both false: nothing would be saved")
        self.save_dir = Path(save_dir)
        self.name_prefix = name_prefix
        self.save_interval = save_interval
        self.save_interval_steps = save_interval_steps
        self.strict_match = strict_match
        self.mode = mode
        self.monitor_metric_key = monitor_metric_key
        self.save_last = save_last
        self.keep_best = keep_best
        self.best: float | None = None
        self._seen_val_count = -1
        self._warned = False

    # -- paths ------------------------------------------------------------------------------

    def prefix(self, loop: LoopView) -> str:
        return self.name_prefix if self.name_prefix is not None else f"{loop.stage}-"

    def last_path(self, loop: LoopView) -> Path:
        return self.save_dir / f"{self.prefix(loop)}checkpoint-last.pth.tar"

    def best_path(self, loop: LoopView) -> Path:
        return self.save_dir / f"{self.prefix(loop)}checkpoint-best.pth.tar"

    # -- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "seen_val_count": self._seen_val_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")
        self._seen_val_count = int(state.get("seen_val_count", -1))

    # -- events -----------------------------------------------------------------------------

    def on_loop_begin(self, loop: LoopView) -> None:
        # a validation of the starting weights (Validation's val_on_train_begin) can be the best
        if loop.is_training and loop.state.val_count > 0:
            self.save(loop, consider_best=True)

    def on_step_end(self, loop: LoopView, batch: Any, outputs: Any) -> None:
        n = self.save_interval_steps
        if (
            loop.is_training
            and n
            and loop.state.global_step % n == 0
            and loop.state.batch_in_epoch < loop.state.steps_per_epoch
        ):
            self.save(loop, consider_best=False)

    def on_epoch_end(self, loop: LoopView) -> None:
        st = loop.state
        last_epoch = st.epoch + 1 >= st.num_epochs
        if (st.epoch + 1) % self.save_interval == 0 or last_epoch:
            self.save(loop, epoch_done=True, consider_best=True)

    def on_loop_end(self, loop: LoopView) -> None:
        self.save(loop, consider_best=True)

    def on_interrupt(self, loop: LoopView) -> None:
        if not loop.is_training:
            return
        if not loop.state.consistent:
            loop.logger.warning(
                "the interrupt came during an optimizer step; keeping the previous checkpoint",
                path=str(self.last_path(loop)),
            )
            return
        path = self.save(loop, consider_best=False, interrupted=True)
        if path is not None:
            loop.logger.warning(
                "saved a checkpoint; continue with --resume",
                path=str(path),
                epoch=loop.state.epoch + 1,
                step=loop.state.global_step,
            )

    # -- saving -----------------------------------------------------------------------------

    def _better(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def _monitored(self, loop: LoopView) -> float | None:
        key = self.monitor_metric_key
        if key is None:
            return None
        results = loop.state.val_results
        if key not in results:
            if not self._warned and loop.state.val_count > 0:
                self._warned = True
                loop.logger.warning(
                    "Checkpoint: monitor_metric_key is not among the validation results",
                    key=key,
                    available=sorted(results),
                )
            return None
        return float(results[key])

    def save(
        self,
        loop: LoopView,
        *,
        epoch_done: bool = False,
        consider_best: bool = False,
        interrupted: bool = False,
    ) -> Path | None:
        """Write ``last`` (and ``best`` when due); returns the ``last`` path (None off rank 0)."""
        ctx = loop.ctx
        if ctx is not None and ctx.rank != 0:
            return None
        metric = self._monitored(loop)
        write_best = False
        if consider_best and self.keep_best:
            if self.monitor_metric_key is None or (
                loop.state.val_count == 0 and loop.state.finished
            ):
                # nothing to compare (no key, or a stage that never validates, e.g.
                # int_infer): the final weights are the best there are
                write_best = True
            elif loop.state.val_count != self._seen_val_count and metric is not None:
                write_best = self._better(metric)
            if consider_best:
                self._seen_val_count = loop.state.val_count
            if write_best and metric is not None:
                self.best = metric
        ckpt = loop.checkpoint_dict(epoch_done=epoch_done, interrupted=interrupted, metric=metric)
        last = self.last_path(loop)
        if self.save_last:
            _save(ckpt, last)
        if write_best:
            _save(ckpt, self.best_path(loop))
            loop.logger.info(
                "new best checkpoint",
                path=str(self.best_path(loop)),
                **({self.monitor_metric_key: metric} if metric is not None else {}),
            )
        return last if self.save_last else None


def _save(ckpt: dict[str, Any], path: Path) -> None:
    """``atomic_save``; a full disk or a missing permission names the file and the cause."""
    try:
        atomic_save(ckpt, path)
    except OSError as exc:
        raise FcosUserError(
            f"cannot write the checkpoint {str(path)!r}: {exc.strerror or exc}; the previous "
            "file (if any) is unchanged",
            hint="free disk space or fix the folder's permissions, then continue with --resume "
            "(from the last checkpoint that was written)",
        ) from None
