"""Evaluation: the ``Predictor`` component and the loop ``Validation`` runs inside training.

An evaluation loop puts the model in eval mode, resets its metrics, runs every data loader
through the batch processor (forward under ``torch.no_grad``), and computes the metrics once at
the end. It fires the usual callback events with one "epoch" spanning all its data loaders.
Metrics are fed by a ``MetricUpdater`` callback when there is one (the seed's configs always
have one); without it the loop feeds them itself (``metric.update(batch, outputs)``).

In a distributed run every rank evaluates (metrics such as COCODetectionMetric gather their
predictions across ranks inside ``compute()``, so all ranks must take part) and rank 0's results
are broadcast. A validation loader without a sampler is evaluated whole by every rank; give it
``sampler: {type: DistributedSampler, shuffle: false}`` to split the work, with a metric that
gathers across ranks.
"""

from __future__ import annotations

from typing import Any

from fcos_core.engine import distributed
from fcos_core.engine.batch_processor import MultiBatchProcessor
from fcos_core.engine.device import batch_size_of
from fcos_core.engine.loop import Loop, LoopState
from fcos_core.engine.modes import set_mode
from fcos_core.engine.progress import Progress, progress_enabled


def compute_metrics(metrics: list[Any]) -> dict[str, float]:
    """Merged ``compute()`` results of several metrics (later ones win on equal keys)."""
    out: dict[str, float] = {}
    for metric in metrics:
        values = metric.compute()
        for k, v in dict(values).items():
            try:
                out[str(k)] = float(v)
            except (TypeError, ValueError):
                continue
    return out


class EvalLoop(Loop):
    """One evaluation pass of ``model`` over ``data_loaders`` (see the module docstring)."""

    is_training = False

    def __init__(
        self,
        model: Any,
        data_loaders: list[Any],
        batch_processor: Any,
        metrics: list[Any],
        callbacks: Any,
        device: Any,
        ctx: Any,
        log_interval: int = 0,
        desc: str = "eval",
    ) -> None:
        super().__init__(model, None, callbacks, None)
        self.device = device
        self.ctx = ctx
        self.data_loaders = list(data_loaders)
        self.batch_processor = batch_processor or MultiBatchProcessor(need_grad_update=False)
        self.metrics = list(metrics)
        self.log_interval = log_interval
        self.desc = desc
        self.feeds_metrics = not any(type(cb).__name__ == "MetricUpdater" for cb in self.callbacks)

    def run(self) -> dict[str, float]:
        set_mode(self.model, False)
        for metric in self.metrics:
            metric.reset()
        total = sum(len(dl) for dl in self.data_loaders)
        self.state = LoopState(num_epochs=1, steps_per_epoch=total)
        st = self.state
        self.fire("on_loop_begin")
        self.fire("on_epoch_begin")
        bar = Progress(total, self.desc, progress_enabled(self.ctx.rank if self.ctx else 0))
        try:
            for loader in self.data_loaders:
                if hasattr(loader, "set_epoch"):
                    loader.set_epoch(0)
                for batch in loader:
                    self.fire("on_step_begin")
                    outputs = self.batch_processor(self.model, batch, self.device, None, self)
                    st.last_batch_size = batch_size_of(batch)
                    st.batch_in_epoch += 1
                    st.global_step += 1
                    if self.feeds_metrics:
                        for metric in self.metrics:
                            metric.update(batch, outputs)
                    self.fire("on_step_end", batch, outputs)
                    bar.update()
                    if self.log_interval and st.global_step % self.log_interval == 0:
                        self.logger.info(self.desc, step=st.global_step, of=total)
        finally:
            bar.close()
        self.results = compute_metrics(self.metrics)
        self.fire("on_epoch_end")
        st.finished = True
        self.fire("on_loop_end")
        return self.results


def _seed_loaders(loaders: list[Any], seed: int | None) -> None:
    for dl in loaders:
        if hasattr(dl, "set_seed"):
            dl.set_seed(seed if seed is not None else 0)


class Predictor(Loop):
    """Evaluates a (converted) model over a list of data loaders.

    Args:
        model: the model (eval mode returns per-image detections).
        model_convert_pipeline: e.g. LoadCheckpoint of the stage's best checkpoint.
        data_loader: a list of data loaders, evaluated in turn.
        batch_processor: forward of one batch (``need_grad_update: false``).
        device: torch device; None picks CUDA when present, else CPU.
        metrics: metric(s) to compute.
        callbacks: callbacks of the loop (e.g. a ``MetricUpdater``).
        log_interval: log progress every this many batches (0: never).
    """

    def __init__(
        self,
        model: Any,
        data_loader: Any,
        model_convert_pipeline: Any = None,
        batch_processor: Any = None,
        device: str | None = None,
        metrics: Any = None,
        callbacks: Any = (),
        log_interval: int = 50,
    ) -> None:
        super().__init__(model, model_convert_pipeline, callbacks, device)
        loaders = data_loader if isinstance(data_loader, (list, tuple)) else [data_loader]
        if not loaders or any(dl is None for dl in loaders):
            raise ValueError("data_loader must be a non-empty list of data loader blocks")
        if batch_processor is not None and getattr(batch_processor, "need_grad_update", False):
            raise ValueError("a Predictor's batch_processor must have need_grad_update: false")
        if log_interval < 0:
            raise ValueError(f"log_interval must be >= 0, got {log_interval}")
        self.data_loaders = list(loaders)
        self.batch_processor = batch_processor
        self.metrics = self.as_list(metrics)
        self.log_interval = log_interval

    def run(self, ctx: Any) -> dict[str, float]:
        """Evaluate; returns the metrics (rank 0's, on every rank)."""
        self.prepare_model(ctx)
        _seed_loaders(self.data_loaders, ctx.seed)
        loop = EvalLoop(
            self.model,
            self.data_loaders,
            self.batch_processor,
            self.metrics,
            self.callbacks,
            self.device,
            ctx,
            self.log_interval,
            desc=f"{ctx.stage} predict",
        )
        self.results = distributed.broadcast_object(loop.run())
        self.logger.info("predictor results", stage=ctx.stage, **self.results)
        if ctx.is_main:  # the per-class table of a metric that has one (rank 0 computes it)
            from fcos_core.engine import per_class

            per_class.report(
                ctx, self.logger, ctx.stage, per_class.collect(self.metrics), "predictor"
            )
        if ctx.recorder is not None:
            ctx.recorder.log(
                "predict", ctx.stage, 0, 0, **{f"val_{k}": v for k, v in self.results.items()}
            )
        return self.results
