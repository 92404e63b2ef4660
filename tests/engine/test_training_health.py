"""TrainingHealth: plateau and post-warmup jump warnings, once per term, into summary.json."""

from __future__ import annotations

import json
import math
import types

import pytest

from fcos_core.engine.callbacks.lr_updaters import CosLrUpdater, StepDecayLrUpdater
from fcos_core.engine.callbacks.training_health import TrainingHealth, schedule_peak_step
from fcos_core.engine.loop import LoopState
from fcos_core.engine.pipeline import run_pipeline

SPE, EPOCHS = 10, 8  # steps per epoch, epochs; warmup = 1 epoch = 10 steps


class _Logger:
    def __init__(self):
        self.warnings = []

    def warning(self, event, **kw):
        self.warnings.append((event, kw))

    def info(self, *a, **kw):
        pass

    debug = info


class _Loop:
    is_training = True
    stage = "float"

    def __init__(self, callbacks):
        self.state = LoopState(num_epochs=EPOCHS, steps_per_epoch=SPE)
        self.callbacks = callbacks
        self.logger = _Logger()
        self.ctx = types.SimpleNamespace(summary_extra={})


def _drive(history, health=None):
    """Feed ``history(step)`` (step counted from 1) through the callback like a trainer."""
    health = health or TrainingHealth()
    loop = _Loop([CosLrUpdater(warmup_len=1, warmup_by="epoch"), health])
    health.on_loop_begin(loop)
    for epoch in range(EPOCHS):
        loop.state.epoch = epoch
        for _ in range(SPE):
            loop.state.global_step += 1
            terms = history(loop.state.global_step)
            loop.state.last_losses = {
                **terms,
                "loss": sum(v for k, v in terms.items() if not k.endswith("_floor")),
            }
            health.on_step_end(loop, None, None)
        health.on_epoch_end(loop)
    health.on_loop_end(loop)
    return health, loop


def _wiggle(t):
    return 0.01 * math.sin(1.7 * t)  # +-1% noise, deterministic


def _healthy(t):
    # centerness barely moves (within 5%) but only because its floor rises: the learnable gap
    # falls from 0.26 to ~0.02, so it is being learnt
    floor = 0.40 + 0.24 * (1 - math.exp(-t / 15))
    gap = 0.02 + 0.24 * math.exp(-t / 15)
    return {
        "cls": 0.2 + 1.0 * math.exp(-t / 15) + _wiggle(t),
        "reg": 0.3 + 0.7 * math.exp(-t / 30),
        "centerness": floor + gap,
        "centerness_floor": floor,
    }


def _stuck(t):
    # cls never moves; centerness falls 13% but only with its floor (gap constant 0.02)
    floor = 0.58 + 0.09 * math.exp(-t / 20)
    return {
        **_healthy(t),
        "cls": 0.7 * (1 + _wiggle(t)),
        "centerness": floor + 0.02,
        "centerness_floor": floor,
    }


def _jump(t):
    return {**_healthy(t), "reg": 1.0 + _wiggle(t) if t <= SPE else 4.0 + _wiggle(t)}


def _kinds(health):
    return sorted((w["term"], w["kind"]) for w in health.warnings)


def test_warmup_end_is_where_the_schedule_peaks():
    assert schedule_peak_step(CosLrUpdater(warmup_len=2, warmup_by="epoch"), 10, 5) == 20
    assert schedule_peak_step(CosLrUpdater(warmup_len=15, warmup_by="step"), 10, 5) == 15
    assert (
        schedule_peak_step(
            CosLrUpdater(warmup_len=1, warmup_by="epoch", min_warmup_steps=12), 4, 10
        )
        == 12
    )
    assert schedule_peak_step(CosLrUpdater(), 10, 5) == 0
    assert schedule_peak_step(StepDecayLrUpdater(lr_decay_id=[2]), 10, 5) == 0


def test_healthy_history_gives_no_warning():
    health, loop = _drive(_healthy)
    assert health.warnings == [] and loop.logger.warnings == []
    assert loop.ctx.summary_extra == {"health_warnings": []}


def test_plateau_warns_once_per_term_and_uses_the_floor():
    health, loop = _drive(_stuck)
    assert _kinds(health) == [("centerness", "plateau"), ("cls", "plateau")]
    cls = next(w for w in health.warnings if w["term"] == "cls")
    # 1 warmup epoch (epoch 1); epochs 2, 3, 4 are the first three within 5% after warmup
    assert cls["epochs"] == [2, 3, 4] and cls["epoch"] == 4
    first = sum(_stuck(t)["cls"] for t in range(1, SPE + 1)) / SPE
    assert cls["first"] == pytest.approx(first, abs=1e-6)
    ctr = next(w for w in health.warnings if w["term"] == "centerness")
    assert "centerness - centerness_floor" in ctr["message"]
    for _event, kw in loop.logger.warnings:
        assert "learning rate" in kw["message"] and "warmup" in kw["message"]
        assert "fcos analyze-data" in kw["message"]
    assert len(loop.logger.warnings) == 2


def test_jump_right_after_warmup_warns_once():
    health, loop = _drive(_jump)
    assert _kinds(health) == [("reg", "jump")]
    w = health.warnings[0]
    ref = sum(_jump(t)["reg"] for t in range(1, SPE + 1)) / SPE  # window 20 > 10 warmup steps
    post = sum(_jump(t)["reg"] for t in range(SPE + 1, SPE + 21)) / 20
    assert w["ref"] == pytest.approx(ref, abs=1e-6) and w["mean"] == pytest.approx(post, abs=1e-6)
    assert w["ratio"] >= 3 and w["steps"] == [SPE + 1, SPE + 20]
    assert "reg" in loop.logger.warnings[0][1]["message"]


def test_warnings_survive_a_resume_without_repeating():
    first = TrainingHealth()
    _drive(_stuck, first)
    again = TrainingHealth()
    again.load_state_dict(json.loads(json.dumps(first.state_dict())))  # checkpoint-safe data
    health, loop = _drive(_stuck, again)
    assert _kinds(health) == [("centerness", "plateau"), ("cls", "plateau")]
    assert loop.logger.warnings == []  # already given before the "resume"
    assert len(loop.ctx.summary_extra["health_warnings"]) == 2


def test_warnings_land_in_summary_json(tiny_cfg, host, tmp_path):
    # lr 0: the losses cannot move, so every term stays at its first-epoch value
    cfg = tiny_cfg(
        "float_trainer.optimizer.lr=0.0",
        "float_trainer.num_epochs=3",
        "float_trainer.callbacks=[{type: TrainingHealth, warmup_steps: 0, plateau_epochs: 2}]",
        "float_predictor=null",
        "calibration_trainer=null",
        "qat_trainer=null",
        "int_infer_trainer=null",
        "int_infer_predictor=null",
        "compile_cfg=null",
    )
    run_dir = tmp_path / "run"
    run_pipeline(cfg, host, ["float"], run_dir=str(run_dir))
    summary = json.loads((run_dir / "summary.json").read_text())
    got = summary["float"]["health_warnings"]
    assert sorted((w["term"], w["kind"]) for w in got) == [("cls", "plateau"), ("reg", "plateau")]
    assert all(w["stage"] == "float" and w["epochs"] == [2, 3] for w in got)
