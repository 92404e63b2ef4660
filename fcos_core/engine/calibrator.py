"""``Calibrator``: feeds ``num_steps`` batches through a calibration model, without gradients.

The model (after ``model_convert_pipeline``, e.g. ``LoadCheckpoint`` then ``Float2Calibration``)
runs in eval mode under ``torch.no_grad``; its observers record activation ranges. The data
loader is restarted (next epoch's order) when it has fewer than ``num_steps`` batches. The
events are those of one training epoch, so ``Validation`` and ``Checkpoint`` work as usual.

In a distributed run every rank calibrates on the same batches (same seed, no sampler), so the
observers agree; rank 0 saves. ``--resume`` does not resume a calibration midway (it is short);
a finished one is skipped.
"""

from __future__ import annotations

import copy
from typing import Any

from fcos_core.engine import distributed
from fcos_core.engine.batch_processor import MultiBatchProcessor
from fcos_core.engine.checkpoint_io import capture_rng
from fcos_core.engine.device import batch_size_of
from fcos_core.engine.loop import Loop, LoopState
from fcos_core.engine.modes import set_mode
from fcos_core.engine.progress import Progress, progress_enabled
from fcos_core.engine.quant_report_writer import REPORT_BATCHES, write_stage_report
from fcos_core.quantization_state import get_qstate


class Calibrator(Loop):
    """Calibration loop.

    Args:
        model: the model to calibrate.
        data_loader: calibration data.
        num_steps: number of batches to run.
        model_convert_pipeline: conversions before calibration.
        batch_processor: forward of one batch (default: no gradients).
        device: torch device; None picks CUDA when present, else CPU.
        callbacks: callbacks (Validation, Checkpoint, ...).
        val_metrics: metric(s) the Validation callback computes.
        log_interval: log every this many steps (0: never).
        bias_correction_images: after the ranges are fixed, correct every conv bias so the
            quantized model's mean outputs equal the float model's, measured on this many
            calibration images (the first batches'; 0: off).
            :mod:`fcos_core.quantization.bias_correction` says why; all these images go
            through the model at once, so the memory is that of one forward pass over them.
    """

    is_training = False

    def __init__(
        self,
        model: Any,
        data_loader: Any,
        num_steps: int,
        model_convert_pipeline: Any = None,
        batch_processor: Any = None,
        device: str | None = None,
        callbacks: Any = (),
        val_metrics: Any = None,
        log_interval: int = 1,
        bias_correction_images: int = 0,
    ) -> None:
        super().__init__(model, model_convert_pipeline, callbacks, device)
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if data_loader is None:
            raise ValueError("a Calibrator needs a data_loader")
        if batch_processor is not None and getattr(batch_processor, "need_grad_update", False):
            raise ValueError("a Calibrator's batch_processor must have need_grad_update: false")
        if log_interval < 0:
            raise ValueError(f"log_interval must be >= 0, got {log_interval}")
        if bias_correction_images < 0:
            raise ValueError(f"bias_correction_images must be >= 0, got {bias_correction_images}")
        self.bias_correction_images = bias_correction_images
        self.data_loader = data_loader
        self.num_steps = num_steps
        self.batch_processor = batch_processor or MultiBatchProcessor(need_grad_update=False)
        self.val_metrics = self.as_list(val_metrics)
        self.log_interval = log_interval

    def run(self, ctx: Any) -> dict[str, float]:
        """Calibrate; returns the last validation results (empty without validation)."""
        self.prepare_model(ctx)
        self.results = distributed.broadcast_object(self._calibrate(ctx))
        return self.results

    def _calibrate(self, ctx: Any) -> dict[str, float]:
        ckpt = self.peek_resume()
        if ckpt is not None and ckpt.get("finished"):
            self.model.load_state_dict(ckpt["state_dict"], strict=False)
            self.logger.info(
                "resume: calibration already finished; skipping it", checkpoint=ckpt.get("_path")
            )
            return dict(ckpt.get("metrics") or {})
        if hasattr(self.data_loader, "set_seed"):
            self.data_loader.set_seed(ctx.seed if ctx.seed is not None else 0)
        self.state = LoopState(num_epochs=1, steps_per_epoch=self.num_steps)
        st = self.state
        set_mode(self.model, False)
        self.fire("on_loop_begin")
        self.fire("on_epoch_begin")
        bar = Progress(self.num_steps, f"{self.stage} calibration", progress_enabled(ctx.rank))
        data_epoch = 0
        report_images: list[Any] = []
        correction_images: list[Any] = []
        n_correction = 0
        try:
            while st.global_step < self.num_steps:
                self.data_loader.set_epoch(data_epoch)
                before = st.global_step
                for batch in self.data_loader:
                    if len(report_images) < REPORT_BATCHES and isinstance(batch, dict):
                        report_images.append(batch["img"])
                    if n_correction < self.bias_correction_images and isinstance(batch, dict):
                        take = batch["img"][: self.bias_correction_images - n_correction]
                        correction_images.append(take)
                        n_correction += int(take.shape[0])
                    self.fire("on_step_begin")
                    outputs = self.batch_processor(self.model, batch, self.device, None, self)
                    st.last_batch_size = batch_size_of(batch)
                    st.batch_in_epoch += 1
                    st.global_step += 1
                    self.fire("on_step_end", batch, outputs)
                    bar.update()
                    if self.log_interval and st.global_step % self.log_interval == 0:
                        self.logger.info("calibration", step=st.global_step, of=self.num_steps)
                    if st.global_step >= self.num_steps:
                        break
                if st.global_step == before:
                    raise ValueError("the calibration data loader gave no batches")
                data_epoch += 1
        finally:
            bar.close()
        st.rng_snapshot = capture_rng()
        if get_qstate(self.model) == "calibration":
            # fix the ranges and switch fake-quant on: validation then measures the
            # calibrated (quantized) model, and eval-mode batches no longer move the ranges
            from fcos_core.quantization.converters import body_of, freeze_observers

            freeze_observers(self.model)
            reference = None
            if self.bias_correction_images:
                # the correction moves biases the float view of the graph shares: the report
                # compares with the float model as it was before (the body holds them all)
                reference = copy.deepcopy(body_of(self.model))
                self._correct_biases(correction_images)
            write_stage_report(self, ctx, report_images, reference)
        self.fire("on_epoch_end")
        st.finished = True
        self.fire("on_loop_end")
        return dict(st.val_results)

    def _correct_biases(self, images: list[Any]) -> None:
        from fcos_core.quantization.bias_correction import correct_biases

        if len(images) == 0:
            raise ValueError("bias correction: the calibration batches held no images")
        result = correct_biases(self.model, [img.to(self.device) for img in images])
        self.logger.info(
            "bias correction",
            images=result.images,
            convs=len(result.corrected),
            without_bias=len(result.skipped),
            largest_vs_output_rms=", ".join(
                f"{s.layer} {s.max_shift:.3f}" for s in result.largest()
            ),
        )
