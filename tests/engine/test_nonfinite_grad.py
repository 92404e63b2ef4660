"""A finite loss with a NaN/inf gradient: the optimizer step is skipped and counted, the weights
(and the EMA) stay finite; too many such steps in a row stop training with a clear error."""

from __future__ import annotations

import math

import pytest
import torch
from engine_helpers import ctx_for, tiny_trainer, weights
from engine_standins import TinySet

from fcos_core.engine.batch_processor import MultiBatchProcessor
from fcos_core.engine.callbacks.base import Callback
from fcos_core.engine.callbacks.checkpoint import Checkpoint
from fcos_core.engine.callbacks.ema import ExponentialMovingAverage
from fcos_core.engine.checkpoint_io import load_file
from fcos_core.engine.errors import NonFiniteGradientError
from fcos_core.errors import FcosUserError


class _InfGradAt(Callback):
    """Makes one weight's gradient infinite in the steps ``bad`` (0-based); the loss stays
    finite. Records the parameters before each bad step and after it (BatchNorm's running
    statistics change in every forward pass, so they are left out)."""

    def __init__(self, bad):
        self.bad = set(bad)
        self.handle = None
        self.before = {}
        self.after = {}
        self.pending = None

    def on_step_begin(self, loop):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        step = loop.state.global_step
        if self.pending is not None:
            self.after[self.pending] = _params(loop.model)
            self.pending = None
        if step in self.bad:
            self.before[step] = _params(loop.model)
            self.pending = step
            weight = loop.model.body.cls.weight
            self.handle = weight.register_hook(lambda g: torch.full_like(g, math.inf))


def _params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _finite(state):
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_nonfinite_gradient_steps_are_skipped_and_counted(tmp_path):
    spy = _InfGradAt({2, 4})
    ema = ExponentialMovingAverage(decay=0.9, ramp_steps=2.0)
    trainer = tiny_trainer(
        tmp_path,
        num_epochs=2,
        dataset=TinySet(n=12, size=16),
        callbacks=[spy, ema, Checkpoint(save_dir=str(tmp_path / "ckpt"), save_interval_steps=1)],
    )
    ctx = ctx_for(tmp_path)
    trainer.run(ctx)
    assert trainer.state.global_step == 6 and trainer.state.finished
    assert trainer.nonfinite_steps == 2
    # the skipped steps changed no weight, and nothing anywhere became NaN/inf
    for step in (2, 4):
        before, after = spy.before[step], spy.after[step]
        assert all(torch.equal(before[k], after[k]) for k in before)
    assert _finite(trainer.model.state_dict()) and _finite(trainer.ema_model.state_dict())
    assert ema.updates == 4  # the EMA was not updated on the two skipped steps
    last = load_file(tmp_path / "ckpt" / "float-checkpoint-last.pth.tar")
    assert _finite(last["state_dict"]) and _finite(last["train_state_dict"])
    counts = [
        r["nonfinite_grad_steps"]
        for r in ctx.recorder.rows("step", "float")
        if "nonfinite_grad_steps" in r
    ]
    assert counts == [1.0, 2.0]


def test_consecutive_nonfinite_gradients_stop_with_a_clear_error(tmp_path):
    spy = _InfGradAt(range(1, 100))
    trainer = tiny_trainer(
        tmp_path,
        num_epochs=3,
        dataset=TinySet(n=16, size=16),
        max_nonfinite_steps=3,
        callbacks=[spy, Checkpoint(save_dir=str(tmp_path / "ckpt"), save_interval_steps=1)],
    )
    with pytest.raises(NonFiniteGradientError) as err:
        trainer.run(ctx_for(tmp_path))
    exc = err.value
    assert isinstance(exc, FcosUserError)  # `fcos run` prints it and exits with code 2
    assert (exc.consecutive, exc.total, exc.step) == (3, 3, 4)
    assert "3 consecutive steps" in str(exc) and "max_nonfinite_steps" in exc.hint
    assert _finite(trainer.model.state_dict())
    last = load_file(tmp_path / "ckpt" / "float-checkpoint-last.pth.tar")
    assert last["global_step"] == 1  # the last good step's checkpoint stays
    with pytest.raises(ValueError, match="max_nonfinite_steps"):
        tiny_trainer(tmp_path, max_nonfinite_steps=0)


def test_grad_scaler_skips_by_itself_and_is_not_counted_twice():
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bp = MultiBatchProcessor(need_grad_update=True, loss_collector=lambda out: [out["loss"]])
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    bp._get_scaler = lambda device: scaler
    before = weights(model)
    handle = model.weight.register_hook(lambda g: torch.full_like(g, math.inf))

    def forward(batch):
        return {"loss": model(batch["x"]).sum()}

    bp(forward, {"x": torch.ones(1, 2)}, torch.device("cpu"), opt)
    handle.remove()
    assert not bp.last_step_skipped  # the scaler's own skip, not one of ours
    assert scaler.get_scale() < 2.0**10  # ... which lowered its scale
    assert all(torch.equal(before[k], v) for k, v in weights(model).items())


def test_skipped_steps_reach_summary_and_metrics_csv(tiny_cfg, host, tmp_path, monkeypatch):
    import csv
    import json

    from fcos_core.engine.pipeline import run_pipeline

    real = torch.nn.utils.get_total_norm
    calls = []

    def norm_inf_on_second_step(grads, *args, **kwargs):
        calls.append(1)
        return torch.tensor(math.nan) if len(calls) == 2 else real(grads, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "get_total_norm", norm_inf_on_second_step)
    cfg = tiny_cfg(
        "calibration_trainer=null",
        "qat_trainer=null",
        "int_infer_trainer=null",
        "float_predictor=null",
        "float_trainer.num_epochs=1",
    )
    run_pipeline(cfg, host, ["float"], run_dir=str(tmp_path / "run"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["float"]["nonfinite_grad_steps"] == 1
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").read_text().splitlines()))
    marked = [(r["step"], r["nonfinite_grad_steps"]) for r in rows if r["nonfinite_grad_steps"]]
    assert marked == [("2", "1")]
