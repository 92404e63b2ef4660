"""``Validation``: evaluates the model during training and when it ends.

Runs an evaluation loop (:class:`~fcos_core.engine.predictor.EvalLoop`) over ``data_loader``
with the trainer's ``val_metrics`` every ``val_interval`` epochs (at ``on_epoch_end``) and,
with ``val_on_train_end``, at ``on_loop_end`` unless the last epoch was just validated; with
``val_on_train_begin`` also the starting weights, before the first step (a fine-tune -- QAT --
whose steps never beat its starting point then keeps it as ``best``; not on ``--resume``). The
model evaluated is ``val_model`` when given (with ``init_with_train_model``: loaded with the
training weights first), else the loop's ``eval_model`` -- the EMA copy when an
``ExponentialMovingAverage`` callback keeps one, else the training model.

The results go to ``loop.state.val_results`` (``Checkpoint`` picks the best from them, the
pipeline reports the last ones), to the log, and to ``metrics.csv`` as ``val_<name>``. When a
metric breaks its numbers down by class (COCODetectionMetric), the last validation's per-class
table is logged when the stage ends and goes to the stage's ``summary.json`` entry as
``per_class`` (see :mod:`fcos_core.engine.per_class`). In a
distributed run every rank validates (see :mod:`fcos_core.engine.predictor`) and rank 0's
results are broadcast.
"""

from __future__ import annotations

import time
from typing import Any

from fcos_core.engine import distributed
from fcos_core.engine.callbacks.base import Callback, LoopView
from fcos_core.engine.modes import set_mode


class Validation(Callback):
    """See the module docstring."""

    def __init__(
        self,
        data_loader: Any,
        batch_processor: Any = None,
        callbacks: Any = (),
        val_model: Any = None,
        init_with_train_model: bool = False,
        val_interval: int = 1,
        val_on_train_end: bool = True,
        log_interval: int = 0,
        val_on_train_begin: bool = False,
    ) -> None:
        if data_loader is None:
            raise ValueError("Validation needs a data_loader")
        if val_interval < 1:
            raise ValueError(f"val_interval must be >= 1, got {val_interval}")
        if init_with_train_model and val_model is None:
            raise ValueError("init_with_train_model needs a val_model to copy the weights into")
        if batch_processor is not None and getattr(batch_processor, "need_grad_update", False):
            raise ValueError("Validation's batch_processor must have need_grad_update: false")
        self.data_loader = data_loader
        self.batch_processor = batch_processor
        self.callbacks = list(callbacks or [])
        self.val_model = val_model
        self.init_with_train_model = init_with_train_model
        self.val_interval = val_interval
        self.val_on_train_end = val_on_train_end
        self.val_on_train_begin = val_on_train_begin
        self.log_interval = log_interval
        self._last_validated: tuple[int, int] | None = None
        self._per_class: list[dict[str, Any]] = []

    def on_loop_begin(self, loop: LoopView) -> None:
        # the starting weights (not on --resume: they were scored when the run began); with a
        # Checkpoint monitoring the metric, a fine-tune that never beats them keeps them
        resume = bool(getattr(loop.ctx, "resume", False))
        if self.val_on_train_begin and loop.is_training and not resume:
            self.validate(loop)

    def on_epoch_end(self, loop: LoopView) -> None:
        if (loop.state.epoch + 1) % self.val_interval == 0:
            self.validate(loop)

    def on_loop_end(self, loop: LoopView) -> None:
        if self.val_on_train_end and self._last_validated != self._position(loop):
            self.validate(loop)
        if self._per_class and getattr(loop.ctx, "is_main", True):
            from fcos_core.engine import per_class

            per_class.report(loop.ctx, loop.logger, loop.stage, self._per_class, "last validation")

    @staticmethod
    def _position(loop: LoopView) -> tuple[int, int]:
        return (loop.state.global_step, loop.state.val_count)

    def _model(self, loop: LoopView) -> Any:
        if self.val_model is None:
            return loop.eval_model
        model = self.val_model.to(loop.device)
        if self.init_with_train_model:
            missing, unexpected = model.load_state_dict(loop.eval_model.state_dict(), strict=False)
            if missing or unexpected:
                loop.logger.warning(
                    "val_model and the training model differ",
                    missing=list(missing)[:10],
                    unexpected=list(unexpected)[:10],
                )
        return model

    def validate(self, loop: LoopView) -> dict[str, float]:
        from fcos_core.engine.predictor import EvalLoop

        ctx = loop.ctx
        t0 = time.perf_counter()
        # every rank takes part: metrics may gather predictions across ranks in compute()
        if hasattr(self.data_loader, "set_seed"):
            self.data_loader.set_seed(ctx.seed if ctx is not None and ctx.seed is not None else 0)
        if not loop.val_metrics:
            loop.logger.warning(
                "Validation without val_metrics: nothing to compute; add "
                "val_metrics to the trainer",
                stage=loop.stage,
            )
        model = self._model(loop)
        was_training = model.training
        inner = EvalLoop(
            model,
            [self.data_loader],
            self.batch_processor,
            loop.val_metrics,
            self.callbacks,
            loop.device,
            ctx,
            self.log_interval,
            desc=f"{loop.stage} validation",
        )
        results = inner.run()
        from fcos_core.engine import per_class

        self._per_class = per_class.collect(loop.val_metrics)
        set_mode(model, was_training)
        results = distributed.broadcast_object(results)
        st = loop.state
        st.val_results = dict(results)
        st.val_count += 1
        self._last_validated = self._position(loop)
        loop.logger.info(
            "validation",
            stage=loop.stage,
            epoch=st.epoch + 1,
            seconds=round(time.perf_counter() - t0, 2),
            **{k: round(v, 6) for k, v in results.items()},
        )
        if ctx is not None and ctx.recorder is not None:
            ctx.recorder.log(
                "epoch",
                loop.stage,
                st.epoch,
                st.global_step,
                **{f"val_{k}": v for k, v in results.items()},
            )
            ctx.recorder.flush()
        return results
