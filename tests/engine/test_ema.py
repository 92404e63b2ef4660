"""EMA: the YOLOX update rule, checked against a direct computation."""

from __future__ import annotations

import math

import pytest
import torch
from engine_helpers import ctx_for, tiny_trainer

from fcos_core.engine.callbacks.base import Callback
from fcos_core.engine.callbacks.ema import ExponentialMovingAverage


class _Record(Callback):
    """Keeps a copy of the raw weights after every step (runs before the EMA update)."""

    def __init__(self):
        self.snaps = []

    def on_step_end(self, loop, batch, outputs):
        self.snaps.append(
            {
                k: v.detach().clone().double() if v.is_floating_point() else v.detach().clone()
                for k, v in loop.model.state_dict().items()
            }
        )


def test_ema_follows_the_yolox_rule(tmp_path):
    rec = _Record()
    ema = ExponentialMovingAverage(decay=0.9, ramp_steps=3.0)
    trainer = tiny_trainer(tmp_path, callbacks=[rec, ema], num_epochs=2)
    init = {
        k: v.detach().clone().double() if v.is_floating_point() else v.clone()
        for k, v in trainer.model.state_dict().items()
    }
    trainer.run(ctx_for(tmp_path))
    expected = dict(init)
    for n, snap in enumerate(rec.snaps, start=1):
        d = 0.9 * (1 - math.exp(-n / 3.0))
        for k, v in snap.items():
            expected[k] = d * expected[k] + (1 - d) * v if v.is_floating_point() else v
    assert ema.updates == len(rec.snaps) == 4
    got = trainer.ema_model.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(got[k].to(v.dtype), v, rtol=1e-5, atol=1e-6)
    # the EMA is what the loop evaluates, and it differs from the raw weights
    assert trainer.eval_model is ema.model
    raw = trainer.model.state_dict()
    assert any(
        not torch.allclose(raw[k].float(), got[k].float())
        for k in raw
        if raw[k].is_floating_point()
    )
    # integer buffers are copied
    assert int(got["body.bn1.num_batches_tracked"]) == 4


def test_ema_arguments():
    with pytest.raises(ValueError, match="decay"):
        ExponentialMovingAverage(decay=1.0)
    assert ExponentialMovingAverage(0.5, 1.0).current_decay(0) == 0.0
