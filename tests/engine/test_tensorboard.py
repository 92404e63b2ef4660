"""The optional TensorBoard callback writes scalars, validation metrics and images."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import ctx_for, tiny_trainer
from engine_standins import TinySet

from fcos_core.engine.callbacks.base import Callback
from fcos_core.engine.callbacks.tensorboard import TensorBoard, _to_rgb

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="the TensorBoard callback is optional: pip install tensorboard",
)


class _FakeValidation(Callback):
    def on_epoch_end(self, loop):
        loop.state.val_results = {"mAP": 0.25 + loop.state.epoch, "AP50": 0.5}


def test_writes_scalars_metrics_and_images(tmp_path):
    tb = TensorBoard(
        log_dir=str(tmp_path / "tb"), log_freq=1, num_images=2, score_threshold=0.0, to_yuv=False
    )
    trainer = tiny_trainer(
        tmp_path, callbacks=[_FakeValidation(), tb], num_epochs=2, dataset=TinySet(n=8, size=16)
    )
    trainer.run(ctx_for(tmp_path))
    acc = event_accumulator.EventAccumulator(
        str(tmp_path / "tb" / "float"), size_guidance={"images": 0, "scalars": 0}
    )
    acc.Reload()
    tags = acc.Tags()
    assert {"loss/cls", "loss/reg", "lr", "val/mAP", "val/AP50"} <= set(tags["scalars"])
    assert [e.value for e in acc.Scalars("val/mAP")] == pytest.approx([0.25, 1.25])
    assert len(acc.Scalars("loss/cls")) == trainer.state.global_step
    images = acc.Images("detections")
    # one grid per epoch: the two 16x16 images side by side
    assert len(images) == 2 and (images[0].width, images[0].height) == (32, 16)


def test_yuv_round_trip():
    rgb = torch.tensor([[[200.0]], [[30.0]], [[90.0]]])
    y = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    yuv = torch.stack((y, (rgb[2] - y) / 1.772 + 128, (rgb[0] - y) / 1.402 + 128))
    back = _to_rgb((yuv - 128) / 128, 128.0, 128.0, True)
    assert (back.int() - rgb.round().int()).abs().max() <= 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="log_freq"):
        TensorBoard(log_freq=0)
