"""TimeLimit: the predictive stop rule on a driven clock, resume keeps the time spent, and a real
run that stops at its budget with the stage finished and summary.json's record."""

from __future__ import annotations

import json
import types

import pytest
import torch

from fcos_core.engine.callbacks.time_limit import TimeLimit
from fcos_core.engine.loop import LoopState
from fcos_core.engine.pipeline import run_pipeline


class _Loop:
    is_training = True
    stage = "float"

    def __init__(self, num_epochs):
        self.state = LoopState(num_epochs=num_epochs, steps_per_epoch=1)
        self.logger = types.SimpleNamespace(info=lambda *a, **k: None)
        self.ctx = types.SimpleNamespace(summary_extra={})


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = _Clock()
    monkeypatch.setattr(TimeLimit, "clock", staticmethod(c))
    return c


def _drive(cb, loop, durations, clock, first_epoch=0):
    """Run epochs of the given durations (seconds) as the trainer does; returns epochs run."""
    ran = []
    for i, d in enumerate(durations):
        loop.state.epoch = first_epoch + i
        clock.now += d
        cb.on_epoch_end(loop)
        ran.append(first_epoch + i + 1)
        if loop.state.stop_reason:
            break
    return ran


def test_stops_when_the_next_epoch_would_cross_the_budget(clock):
    # budget 60 s; epochs of 10 s: after 5 (50 s) one more ends at 60 s, inside; after 6 (60 s)
    # a 7th would end at 70 s -> stop after 6
    cb, loop = TimeLimit(max_minutes=1.0), _Loop(20)
    cb.on_loop_begin(loop)
    assert _drive(cb, loop, [10.0] * 20, clock) == [1, 2, 3, 4, 5, 6]
    assert cb.stopped_epoch == 6 and "time limit" in loop.state.stop_reason
    cb.on_loop_end(loop)
    assert loop.ctx.summary_extra["time_limit"] == {
        "max_minutes": 1.0,
        "elapsed_minutes": 1.0,
        "stopped_epoch": 6,
    }


def test_slower_later_epochs_raise_the_prediction(clock):
    # 2 s epochs, then 20 s ones: by the mean alone (8 s after 6 epochs, 48 s spent) a 7th
    # would start and end at 68 s; the last epoch's 20 s stops the run after 6
    cb, loop = TimeLimit(max_minutes=1.0), _Loop(20)
    cb.on_loop_begin(loop)
    ran = _drive(cb, loop, [2.0] * 4 + [20.0] * 10, clock)
    assert ran == [1, 2, 3, 4, 5, 6] and clock.now - 1000.0 == 48.0


def test_a_run_that_fits_is_not_stopped_and_the_last_epoch_is_no_stop(clock):
    cb, loop = TimeLimit(max_minutes=1.0), _Loop(3)
    cb.on_loop_begin(loop)
    assert _drive(cb, loop, [10.0, 10.0, 50.0], clock) == [1, 2, 3]
    assert loop.state.stop_reason is None and cb.stopped_epoch is None


def test_resume_counts_the_time_already_spent(clock):
    cb, loop = TimeLimit(max_minutes=1.0), _Loop(20)
    cb.on_loop_begin(loop)
    _drive(cb, loop, [10.0] * 3, clock)  # 30 s spent, then the process dies
    saved = cb.state_dict()
    clock.now += 500.0  # time between the processes is not training time
    again, loop2 = TimeLimit(max_minutes=1.0), _Loop(20)
    again.load_state_dict(saved)
    again.on_loop_begin(loop2)
    assert _drive(again, loop2, [10.0] * 20, clock, first_epoch=3) == [4, 5, 6]
    assert again.stopped_epoch == 6


@pytest.mark.parametrize("minutes", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_budget(minutes):
    with pytest.raises(ValueError, match="max_minutes must be a finite number > 0"):
        TimeLimit(max_minutes=minutes)


def test_a_real_run_stops_at_its_budget_and_is_finished(tiny_cfg, host, tmp_path):
    # a budget far below one epoch: the first epoch runs, then training ends
    cfg = tiny_cfg(
        "float_trainer.num_epochs=5",
        "float_trainer.callbacks=['${vars.val_callback}', '${vars.ckpt_callback}', "
        "{type: TimeLimit, max_minutes: 0.00001}]",
        "float_predictor=null",
        "calibration_trainer=null",
        "qat_trainer=null",
        "int_infer_trainer=null",
        "int_infer_predictor=null",
        "compile_cfg=null",
    )
    run_dir = tmp_path / "run"
    assert run_pipeline(cfg, host, ["float"], run_dir=str(run_dir)) == 0
    rec = json.loads((run_dir / "summary.json").read_text())["float"]["time_limit"]
    assert rec["stopped_epoch"] == 1 and rec["max_minutes"] == 0.00001
    last = torch.load(tmp_path / "ckpt" / "float-checkpoint-last.pth.tar", weights_only=True)
    assert last["finished"] and last["global_step"] == 4  # one epoch of 4 batches
    # finished: --resume skips the stage instead of training the remaining epochs
    assert run_pipeline(cfg, host, ["float"], run_dir=str(run_dir), resume=True) == 0
    again = torch.load(tmp_path / "ckpt" / "float-checkpoint-last.pth.tar", weights_only=True)
    assert again["global_step"] == 4
