"""``Trainer``: the single-process training loop (the DDP trainer extends it).

``trainer.run(ctx)`` converts the model (``model_convert_pipeline``), moves it to its device,
builds the optimizer with the model's parameters, then fires the callback events of
:mod:`fcos_core.engine.callbacks.base` around the epochs. ``num_epochs: 0`` trains nothing but
still fires ``on_loop_begin``/``on_loop_end`` (the int_infer stage uses that to save the
quantized weights and the traced model).

Stopping:

* a callback may end training after an epoch by setting ``state.stop_reason``
  (``EarlyStopping``, when the monitored metric stalls): the loop then ends as after its last
  epoch (``on_loop_end``, ``last`` marked finished);
* a NaN or infinite loss term raises :class:`~fcos_core.engine.errors.NonFiniteLossError`
  (``fcos run`` exits with code 2) before that step touches the weights; no checkpoint is
  written, so the last good one stays;
* a NaN or infinite gradient (with a finite loss) skips that optimizer step: the gradients are
  zeroed, ``on_step_end`` is not fired (no EMA update, no step checkpoint), one warning is
  logged and the count goes to ``metrics.csv`` (``nonfinite_grad_steps``) and ``summary.json``;
  after ``max_nonfinite_steps`` such steps in a row
  :class:`~fcos_core.engine.errors.NonFiniteGradientError` stops training (exit code 2) without
  saving;
* Ctrl-C (``KeyboardInterrupt``) waits for the running step to finish
  (:mod:`~fcos_core.engine.step_interrupts`; a second Ctrl-C does not wait), then fires
  ``on_interrupt`` (``Checkpoint`` saves the position of that step) and re-raises, so
  ``fcos run`` exits with code 130; SIGTERM (a cluster scheduler, ``docker stop``) takes the
  same path during ``fcos run`` and exits with code 143. ``--resume`` continues from there.
"""

from __future__ import annotations

import itertools
from typing import Any

from fcos_core.engine.batch_processor import MultiBatchProcessor
from fcos_core.engine.checkpoint_io import capture_rng
from fcos_core.engine.device import batch_size_of
from fcos_core.engine.errors import NonFiniteGradientError, NonFiniteLossError
from fcos_core.engine.loop import Loop, LoopState
from fcos_core.engine.modes import set_mode
from fcos_core.engine.progress import Progress, progress_enabled
from fcos_core.engine.quant_report_writer import REPORT_BATCHES, write_stage_report
from fcos_core.engine.step_interrupts import step_interrupts_deferred
from fcos_core.schema import LazyComponent


class Trainer(Loop):
    """Single-process training loop.

    Args:
        model: the model; in train mode ``model(batch)`` returns a dict of scalar losses.
        num_epochs: epochs to train (0: no training).
        model_convert_pipeline: converter applied before training (``converter(model, ctx)``).
        data_loader: training data (needed when num_epochs > 0).
        optimizer: a lazy optimizer block built with ``model=`` (or a built optimizer).
        batch_processor: processes one batch (default: ``MultiBatchProcessor``).
        device: torch device; None picks CUDA when present, else CPU.
        callbacks: callbacks, see :mod:`fcos_core.engine.callbacks`.
        train_metrics: metric(s) of the training loop (e.g. ``LossShow``).
        val_metrics: metric(s) the ``Validation`` callback computes.
        max_nonfinite_steps: stop after this many consecutive steps whose gradient was NaN or
            infinite (each is skipped; see the module docstring).
        min_total_steps: train at least this many steps: when ``num_epochs`` epochs of the data
            loader (capped by ``max_steps_per_epoch``) are fewer, the number of epochs is raised
            (logged). A fine-tune sized in steps (QAT) then also works on a data set of a few
            batches per epoch.
        lr_base_batch_size: when set, every parameter group's lr is multiplied by
            ``total batch / lr_base_batch_size`` (the linear scaling rule, mmdet's
            ``auto_scale_lr``), the total batch being the data loader's batch size times the
            number of processes: the configured lr is the lr *at* that batch size, so changing
            ``batch_size_per_gpu`` or the GPU count keeps the per-image step size.
    """

    is_training = True

    def __init__(
        self,
        model: Any,
        num_epochs: int,
        model_convert_pipeline: Any = None,
        data_loader: Any = None,
        optimizer: Any = None,
        batch_processor: Any = None,
        device: str | None = None,
        callbacks: Any = (),
        train_metrics: Any = None,
        val_metrics: Any = None,
        max_steps_per_epoch: int | None = None,
        max_nonfinite_steps: int = 10,
        lr_base_batch_size: int | None = None,
        min_total_steps: int | None = None,
    ) -> None:
        super().__init__(model, model_convert_pipeline, callbacks, device)
        if lr_base_batch_size is not None and lr_base_batch_size < 1:
            raise ValueError(f"lr_base_batch_size must be >= 1 or null, got {lr_base_batch_size}")
        self.lr_base_batch_size = lr_base_batch_size
        if min_total_steps is not None and min_total_steps < 1:
            raise ValueError(f"min_total_steps must be >= 1 or null, got {min_total_steps}")
        self.min_total_steps = min_total_steps
        if max_nonfinite_steps < 1:
            raise ValueError(f"max_nonfinite_steps must be >= 1, got {max_nonfinite_steps}")
        self.max_nonfinite_steps = max_nonfinite_steps
        self.nonfinite_steps = 0  # steps skipped for a NaN/inf gradient (this process's run)
        self._nonfinite_in_a_row = 0
        if max_steps_per_epoch is not None and max_steps_per_epoch < 1:
            raise ValueError(f"max_steps_per_epoch must be >= 1 or null, got {max_steps_per_epoch}")
        self.max_steps_per_epoch = max_steps_per_epoch
        if num_epochs < 0:
            raise ValueError(f"num_epochs must be >= 0, got {num_epochs}")
        if num_epochs > 0 and data_loader is None:
            raise ValueError("num_epochs > 0 needs a data_loader (or set num_epochs: 0)")
        if num_epochs > 0 and optimizer is None:
            raise ValueError("num_epochs > 0 needs an optimizer block (e.g. type: SGD)")
        if (
            num_epochs > 0
            and batch_processor is not None
            and not getattr(batch_processor, "need_grad_update", True)
        ):
            raise ValueError(
                "the training batch_processor has need_grad_update: false, so "
                "nothing would be trained; set it to true"
            )
        self.num_epochs = num_epochs
        self.data_loader = data_loader
        self._optimizer_spec = optimizer
        self.batch_processor = (
            batch_processor
            if batch_processor is not None
            else (MultiBatchProcessor(need_grad_update=True) if num_epochs > 0 else None)
        )
        self.metrics = self.as_list(train_metrics)
        self.val_metrics = self.as_list(val_metrics)
        self._report_images: list[Any] = []  # a few training batches for the quant report

    # -- setup ------------------------------------------------------------------------------

    def wrap_model(self) -> None:
        """Hook for the DDP trainer: wrap ``self.model`` into ``self.train_model``."""

    def build_optimizer(self) -> None:
        spec = self._optimizer_spec
        if spec is None or self.num_epochs == 0:
            self.optimizer = None
        elif isinstance(spec, LazyComponent):
            self.optimizer = spec.build(model=self.model)
        elif callable(spec) and not hasattr(spec, "param_groups"):
            self.optimizer = spec(model=self.model)  # a factory (tests, python users)
        else:
            self.optimizer = spec
        if self.optimizer is not None and self.lr_base_batch_size is not None:
            self._scale_lr(self.optimizer, self.lr_base_batch_size)

    def _scale_lr(self, optimizer: Any, base_batch_size: int) -> None:
        """The linear scaling rule (see ``lr_base_batch_size``); logged, and applied before
        the lr updaters record each group's ``initial_lr``."""
        from fcos_core.engine import distributed

        per_process = getattr(self.data_loader, "batch_size", None)
        if per_process is None:
            raise ValueError("lr_base_batch_size needs a data_loader with a batch_size")
        total = int(per_process) * distributed.get_world_size()
        factor = total / base_batch_size
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * factor
        self.logger.info(
            "lr scaled to the total batch",
            stage=self.stage,
            total_batch=total,
            lr_base_batch_size=self.lr_base_batch_size,
            factor=round(factor, 4),
            lr=optimizer.param_groups[0]["lr"],
        )

    def setup(self, ctx: Any) -> None:
        self.prepare_model(ctx)
        self.wrap_model()
        self.build_optimizer()
        if (
            self.data_loader is not None
            and hasattr(self.data_loader, "set_seed")
            and ctx.seed is not None
        ):
            self.data_loader.set_seed(ctx.seed)
        steps = len(self.data_loader) if self.data_loader is not None and self.num_epochs else 0
        if self.max_steps_per_epoch is not None:
            steps = min(steps, self.max_steps_per_epoch)
        if (
            self.min_total_steps
            and steps
            and self.num_epochs
            and self.num_epochs * steps < self.min_total_steps
        ):
            raised = -(-self.min_total_steps // steps)
            self.logger.info(
                "epochs raised to reach min_total_steps",
                stage=self.stage,
                num_epochs=self.num_epochs,
                steps_per_epoch=steps,
                min_total_steps=self.min_total_steps,
                now=raised,
            )
            self.num_epochs = raised
        self.state = LoopState(num_epochs=self.num_epochs, steps_per_epoch=steps)

    # -- run --------------------------------------------------------------------------------

    def run(self, ctx: Any) -> dict[str, float]:
        """Train; returns the last validation results (empty without validation)."""
        self.setup(ctx)
        ckpt = self.peek_resume()
        if ckpt is not None and ckpt.get("finished"):
            weights = ckpt.get("train_state_dict") or ckpt["state_dict"]
            self.model.load_state_dict(weights, strict=False)
            self.results = dict(ckpt.get("metrics") or {})
            self.state.finished = True
            self.logger.info(
                "resume: this stage already finished; skipping it",
                stage=self.stage,
                checkpoint=ckpt.get("_path"),
            )
            return self.results
        self.fire("on_loop_begin")
        if ckpt is not None:
            self.restore(ckpt)
        self.state.rng_snapshot = capture_rng()
        try:
            self.train_epochs()
            self.state.finished = True
            write_stage_report(self, ctx, self._report_images)
            self.fire("on_loop_end")
        except KeyboardInterrupt as exc:
            self.logger.warning(
                f"interrupted ({getattr(exc, 'signal_name', 'Ctrl-C')})",
                stage=self.stage,
                epoch=self.state.epoch + 1,
                step=self.state.global_step,
            )
            for cb in self._order:
                try:
                    cb.on_interrupt(self)
                except Exception as exc:  # noqa: BLE001 - saving must not hide the interrupt
                    self.logger.error(
                        "callback failed while handling the interrupt",
                        callback=type(cb).__name__,
                        error=str(exc),
                    )
            raise
        except NonFiniteLossError as exc:
            self.logger.error(
                "non-finite loss; stopping",
                stage=self.stage,
                term=exc.term,
                value=exc.value,
                step=exc.step,
                epoch=exc.epoch + 1,
            )
            raise
        except NonFiniteGradientError as exc:
            self.logger.error(
                "non-finite gradients; stopping",
                stage=self.stage,
                step=exc.step,
                epoch=exc.epoch + 1,
                consecutive=exc.consecutive,
                skipped=exc.total,
            )
            raise
        self.results = dict(self.state.val_results)
        return self.results

    def train_epochs(self) -> None:
        st = self.state
        if self.num_epochs == 0:
            return
        bar_on = progress_enabled(self.ctx.rank)
        start_batch = st.batch_in_epoch
        set_mode(self.train_model, True)
        for epoch in range(st.epoch, self.num_epochs):
            st.epoch = epoch
            st.batch_in_epoch = start_batch
            if hasattr(self.data_loader, "set_epoch"):
                self.data_loader.set_epoch(epoch)
            self.fire("on_epoch_begin")
            bar = Progress(
                st.steps_per_epoch,
                f"{self.stage} {epoch + 1}/{self.num_epochs}",
                bar_on,
                initial=start_batch,
            )
            try:
                for batch in self._batches(start_batch):
                    if len(self._report_images) < REPORT_BATCHES and isinstance(batch, dict):
                        self._report_images.append(batch["img"])
                    # Ctrl-C/SIGTERM wait for the step's end: the checkpoint then holds it
                    with step_interrupts_deferred():
                        self.fire("on_step_begin")
                        outputs = self.batch_processor(
                            self.train_model, batch, self.device, self.optimizer, self
                        )
                        st.last_batch_size = batch_size_of(batch)
                        st.batch_in_epoch += 1
                        st.global_step += 1
                        if getattr(self.batch_processor, "last_step_skipped", False):
                            self._skipped_step()
                        else:
                            self._nonfinite_in_a_row = 0
                            self.fire("on_step_end", batch, outputs)
                        st.consistent = True
                        st.rng_snapshot = capture_rng()
                    bar.update(st.last_losses)
            finally:
                bar.close()
            self.fire("on_epoch_end")
            st.rng_snapshot = capture_rng()
            set_mode(self.train_model, True)  # validation may have switched modes
            start_batch = 0
            if st.stop_reason:  # a callback (EarlyStopping) ended training after this epoch
                self.logger.info(
                    "training stopped early",
                    stage=self.stage,
                    epoch=epoch + 1,
                    of=self.num_epochs,
                    reason=st.stop_reason,
                )
                break

    def _skipped_step(self) -> None:
        """The batch processor skipped this step's optimizer step (NaN/inf gradient)."""
        st = self.state
        self.nonfinite_steps += 1
        self._nonfinite_in_a_row += 1
        self.logger.warning(
            "non-finite gradient; skipped the optimizer step",
            stage=self.stage,
            epoch=st.epoch + 1,
            step=st.global_step,
            grad_norm=getattr(self.batch_processor, "last_grad_norm", None),
            skipped=self.nonfinite_steps,
            in_a_row=self._nonfinite_in_a_row,
        )
        if self.ctx is not None and self.ctx.recorder is not None:
            self.ctx.recorder.log(
                "step",
                self.stage,
                st.epoch,
                st.global_step,
                nonfinite_grad_steps=self.nonfinite_steps,
            )
        if self._nonfinite_in_a_row >= self.max_nonfinite_steps:
            raise NonFiniteGradientError(
                self.stage, st.epoch, st.global_step, self._nonfinite_in_a_row, self.nonfinite_steps
            )

    def _batches(self, start_batch: int) -> Any:
        """The current epoch's batches from ``start_batch`` on (at most steps_per_epoch)."""
        remaining = max(0, self.state.steps_per_epoch - start_batch)
        if hasattr(self.data_loader, "iter_from"):
            return itertools.islice(self.data_loader.iter_from(start_batch), remaining)
        # a data loader from elsewhere: skip by reading (exact only if its order is seeded)
        if start_batch:
            self.logger.warning(
                "this data loader cannot skip batches; reading and dropping "
                "the ones already trained on",
                skip=start_batch,
            )
        return itertools.islice(iter(self.data_loader), start_batch, start_batch + remaining)
