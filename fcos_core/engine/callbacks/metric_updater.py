"""``MetricUpdater``: feeds each step's outputs to the loop's metrics and logs them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fcos_core.engine.callbacks.base import Callback, LoopView


class MetricUpdater(Callback):
    """Resets the loop's metrics at epoch begin, calls ``metric_update_func(metrics, batch,
    outputs)`` after every step, and logs the metrics every ``step_log_freq`` steps and every
    ``epoch_log_freq`` epochs. The loop's metrics are the trainer's ``train_metrics`` in a
    training loop and the ``val_metrics`` / ``metrics`` in an evaluation loop.

    At epoch end of a training loop the values also go to ``metrics.csv`` as ``train_<name>``;
    an evaluation loop's results are recorded by ``Validation`` / the predictor instead.
    """

    def __init__(
        self,
        metric_update_func: Callable[..., None],
        step_log_freq: int = 1,
        epoch_log_freq: int = 1,
        log_prefix: str = "",
    ) -> None:
        if not callable(metric_update_func):
            raise TypeError(
                "metric_update_func must be a registered function, e.g. "
                "update_metric or update_loss"
            )
        if step_log_freq < 0 or epoch_log_freq < 0:
            raise ValueError("step_log_freq and epoch_log_freq must be >= 0 (0: never)")
        self.metric_update_func = metric_update_func
        self.step_log_freq = step_log_freq
        self.epoch_log_freq = epoch_log_freq
        self.log_prefix = log_prefix

    def _event(self, what: str) -> str:
        return f"{self.log_prefix} {what}".strip()

    def on_epoch_begin(self, loop: LoopView) -> None:
        for metric in loop.metrics:
            metric.reset()

    def on_step_end(self, loop: LoopView, batch: Any, outputs: Any) -> None:
        if not loop.metrics:
            return
        self.metric_update_func(loop.metrics, batch, outputs)
        st = loop.state
        if self.step_log_freq and st.global_step % self.step_log_freq == 0:
            from fcos_core.engine.predictor import compute_metrics

            where = {"epoch": st.epoch + 1} if loop.is_training else {}
            loop.logger.info(
                self._event("step"),
                stage=loop.stage,
                **where,
                step=st.global_step,
                **_rounded(compute_metrics(loop.metrics)),
            )

    def on_epoch_end(self, loop: LoopView) -> None:
        if not loop.metrics:
            return
        st = loop.state
        if loop.is_training:
            from fcos_core.engine.predictor import compute_metrics

            values = compute_metrics(loop.metrics)
            if loop.ctx is not None and loop.ctx.recorder is not None:
                loop.ctx.recorder.log(
                    "epoch",
                    loop.stage,
                    st.epoch,
                    st.global_step,
                    **{f"train_{k}": v for k, v in values.items()},
                )
        else:
            values = dict(getattr(loop, "results", {}) or {})
        if self.epoch_log_freq and (st.epoch + 1) % self.epoch_log_freq == 0:
            where = {"epoch": st.epoch + 1} if loop.is_training else {}
            loop.logger.info(
                self._event("epoch" if loop.is_training else "results"),
                stage=loop.stage,
                **where,
                **_rounded(values),
            )


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in values.items()}
