"""``TensorBoard``: scalars and a few images with drawn detections, for ``tensorboard --logdir``.

Every ``log_freq`` training steps it writes the loss terms and the learning rate; at each epoch
end it writes the validation results that a ``Validation`` callback listed *before* it left in
``loop.state.val_results``, and ``num_images`` images of the last training batch with the
evaluation model's detections drawn on them (the normalisation is undone with ``mean``,
``std`` and ``to_yuv`` as the data pipeline applied them). Rank 0 only. Needs the optional
``tensorboard`` package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fcos_core.engine.callbacks.base import Callback, LoopView
from fcos_core.engine.callbacks.stats_monitor import current_lr
from fcos_core.errors import FcosUserError
from fcos_core.yuv import yuv444_to_rgb


def _to_rgb(img: torch.Tensor, mean: float, std: float, to_yuv: bool) -> torch.Tensor:
    """A normalised [3, H, W] image back to uint8 RGB."""
    x = img.detach().float().cpu() * std + mean
    if to_yuv:  # the inverse of ToTensor(to_yuv=True)
        x = yuv444_to_rgb(x)
    return x.clamp(0, 255).round().to(torch.uint8)


class TensorBoard(Callback):
    """Write training scalars, validation metrics and detection images for TensorBoard.

    Args:
        log_dir: event folder; None: ``<run folder>/tensorboard``.
        log_freq: write the loss terms and learning rate every this many steps.
        num_images: images with drawn detections per epoch (0: none).
        score_threshold: draw detections scoring at least this.
        mean, std, to_yuv: how the images were normalised (to show them as they were).
    """

    def __init__(
        self,
        log_dir: str | None = None,
        log_freq: int = 10,
        num_images: int = 4,
        score_threshold: float = 0.3,
        mean: float = 128.0,
        std: float = 128.0,
        to_yuv: bool = True,
    ) -> None:
        if log_freq < 1:
            raise ValueError(f"log_freq must be >= 1, got {log_freq}")
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise FcosUserError(
                "the TensorBoard callback needs the tensorboard package",
                hint="pip install tensorboard, or remove the callback",
            ) from None
        self._writer_cls = SummaryWriter
        self.log_dir, self.log_freq, self.num_images = log_dir, log_freq, num_images
        self.score_threshold, self.mean, self.std, self.to_yuv = (
            score_threshold,
            mean,
            std,
            to_yuv,
        )
        self.writer: Any = None
        self._images: torch.Tensor | None = None

    def on_loop_begin(self, loop: LoopView) -> None:
        if getattr(loop.ctx, "rank", 0) != 0:
            return
        folder = self.log_dir or (
            Path(loop.ctx.run_dir) / "tensorboard"
            if loop.ctx.run_dir is not None
            else "tensorboard"
        )
        self.writer = self._writer_cls(log_dir=str(Path(folder) / loop.stage))

    def on_step_end(self, loop: LoopView, batch: Any, outputs: Any) -> None:
        if self.writer is None or not loop.is_training:
            return
        if isinstance(batch, dict) and self.num_images:
            self._images = batch["img"][: self.num_images].detach().cpu()
        st = loop.state
        if st.global_step % self.log_freq:
            return
        for name, value in st.last_losses.items():
            self.writer.add_scalar(f"loss/{name}", float(value), st.global_step)
        lr = current_lr(loop)
        if lr is not None:
            self.writer.add_scalar("lr", float(lr), st.global_step)

    def on_epoch_end(self, loop: LoopView) -> None:
        if self.writer is None:
            return
        st = loop.state
        for name, value in st.val_results.items():
            self.writer.add_scalar(f"val/{name}", float(value), st.epoch + 1)
        if self._images is not None and len(self._images):
            self.writer.add_images("detections", self._draw(loop), st.epoch + 1, dataformats="NHWC")
        self.writer.flush()

    def _draw(self, loop: LoopView) -> torch.Tensor:
        import numpy as np
        from PIL import Image, ImageDraw

        from fcos_core.engine.modes import set_mode

        model = loop.eval_model
        was_training = model.training
        set_mode(model, False)
        imgs = self._images
        with torch.no_grad():
            dets = model(
                {"img": imgs.to(loop.device), "img_shape": [tuple(imgs.shape[-2:])] * len(imgs)}
            )
        set_mode(model, was_training)
        out = []
        for img, det in zip(imgs, dets):
            pil = Image.fromarray(
                _to_rgb(img, self.mean, self.std, self.to_yuv).permute(1, 2, 0).numpy()
            )
            draw = ImageDraw.Draw(pil)
            for box, score, label in zip(
                det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()
            ):
                if score >= self.score_threshold:
                    draw.rectangle(box, outline=(255, 64, 64), width=1)
                    draw.text((box[0] + 1, box[1]), f"{label}:{score:.2f}", fill=(255, 255, 0))
            out.append(torch.from_numpy(np.array(pil)))
        return torch.stack(out)

    def on_loop_end(self, loop: LoopView) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
