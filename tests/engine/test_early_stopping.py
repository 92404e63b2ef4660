"""EarlyStopping: the decision rule (patience, min_delta, mode), a run that stops when its
metric stalls with the best epoch's checkpoint kept, summary.json's record, resume."""

from __future__ import annotations

import json
import types

import pytest
import torch

from fcos_core.engine.callbacks.early_stopping import EarlyStopping
from fcos_core.engine.loop import LoopState
from fcos_core.engine.pipeline import run_pipeline


class _Loop:
    is_training = True
    stage = "float"

    def __init__(self, num_epochs):
        self.state = LoopState(num_epochs=num_epochs, steps_per_epoch=1)
        self.logger = types.SimpleNamespace(
            info=lambda *a, **k: None, warning=lambda *a, **k: self.warned.append(k)
        )
        self.warned = []
        self.ctx = types.SimpleNamespace(summary_extra={})


def _drive(values, cb, num_epochs=None):
    """Validate once per epoch with ``values`` (None: no validation that epoch); returns the
    loop and the epochs that ran (1-based), stopping as the trainer does."""
    loop = _Loop(num_epochs or len(values))
    ran = []
    for epoch, v in enumerate(values):
        loop.state.epoch = epoch
        if v is not None:
            loop.state.val_results = {"mAP": v}
            loop.state.val_count += 1
        cb.on_epoch_end(loop)
        ran.append(epoch + 1)
        if loop.state.stop_reason:
            break
    return loop, ran


@pytest.mark.parametrize(
    "values, kw, ran, best_epoch",
    [
        # max, patience 2: 0.5 at epoch 2, then two validations without a gain -> stop at 4
        ([0.1, 0.5, 0.4, 0.5, 0.9, 0.9], dict(patience=2), 4, 2),
        # min_delta: 0.505 beats 0.5 by less than 0.01, so it is no improvement
        ([0.1, 0.5, 0.505, 0.509, 0.508, 0.9], dict(patience=3, min_delta=0.01), 5, 2),
        # still improving: runs every epoch, never stops
        ([0.1, 0.2, 0.3, 0.4], dict(patience=1), 4, 4),
        # min: a loss that falls, then rises
        ([3.0, 2.0, 2.5, 2.4, 1.0], dict(mode="min", patience=2, monitor="mAP"), 4, 2),
        # NaN is never an improvement
        ([0.3, float("nan"), float("nan"), 0.9], dict(patience=2), 3, 1),
        # val_interval 2: epochs without a validation do not count
        ([0.3, None, 0.2, None, 0.2, None, 0.9], dict(patience=2), 5, 1),
    ],
)
def test_decision_rule(values, kw, ran, best_epoch):
    loop, epochs = _drive(values, EarlyStopping(**kw))
    assert epochs[-1] == ran
    rec = loop.ctx.summary_extra["early_stopping"]
    assert rec["best_epoch"] == best_epoch
    assert rec["stopped_epoch"] == (ran if ran < len(values) else None)
    assert (loop.state.stop_reason is not None) == (ran < len(values))


def test_last_epoch_is_not_a_stop_and_missing_metric_warns():
    loop, epochs = _drive([0.5, 0.4, 0.3], EarlyStopping(patience=2))
    assert epochs == [1, 2, 3] and loop.state.stop_reason is None  # the run ended anyway
    cb = EarlyStopping(monitor="AP50")
    loop, epochs = _drive([0.5, 0.4, 0.3], cb)
    assert epochs == [1, 2, 3] and len(loop.warned) == 1 and cb.best is None


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(patience=0), "patience must be >= 1"),
        (dict(mode="up"), "mode must be 'max' or 'min'"),
        (dict(min_delta=-1.0), "min_delta must be a finite"),
    ],
)
def test_bad_arguments(kw, message):
    with pytest.raises(ValueError, match=message):
        EarlyStopping(**kw)


def test_state_survives_a_resume():
    cb = EarlyStopping(patience=3)
    _drive([0.5, 0.4], cb, num_epochs=6)  # best 0.5 at 1, one bad validation
    again = EarlyStopping(patience=3)
    again.load_state_dict(cb.state_dict())
    loop = _Loop(6)
    for epoch, v in [(2, 0.45), (3, 0.45)]:  # a resumed loop counts validations from 0 again
        loop.state.epoch = epoch
        loop.state.val_results = {"mAP": v}
        loop.state.val_count += 1
        again.on_epoch_end(loop)
    assert loop.state.stop_reason is not None and again.stopped_epoch == 4


# --- a real run: the tiny pipeline with a metric that follows a script -------------------------


def test_a_stalling_run_stops_and_keeps_the_best_checkpoint(tiny_cfg, host, tmp_path):
    # best 0.6 at epoch 2; 0.5, 0.55, 0.6 do not beat it by more than 0.01 -> stop after 5
    cfg = tiny_cfg(
        "float_trainer.num_epochs=8",
        "float_trainer.val_metrics={type: ScriptedMetric, values: [0.2, 0.6, 0.5, 0.55, 0.6, 0.9]}",
        "float_trainer.callbacks=['${vars.val_callback}', '${vars.ckpt_callback}', "
        "{type: EarlyStopping, monitor: mAP, mode: max, patience: 3, min_delta: 0.01}]",
        "float_predictor=null",
        "calibration_trainer=null",
        "qat_trainer=null",
        "int_infer_trainer=null",
        "int_infer_predictor=null",
        "compile_cfg=null",
    )
    run_dir = tmp_path / "run"
    assert run_pipeline(cfg, host, ["float"], run_dir=str(run_dir)) == 0
    summary = json.loads((run_dir / "summary.json").read_text())["float"]
    assert summary["early_stopping"] == {
        "monitor": "mAP",
        "mode": "max",
        "best": 0.6,
        "best_epoch": 2,
        "stopped_epoch": 5,
        "patience": 3,
        "min_delta": 0.01,
    }
    assert summary["metrics"]["mAP"] == 0.6  # the last validation (epoch 5), not re-run
    ckpt = tmp_path / "ckpt"
    best = torch.load(ckpt / "float-checkpoint-best.pth.tar", weights_only=True)
    last = torch.load(ckpt / "float-checkpoint-last.pth.tar", weights_only=True)
    assert best["metric"] == 0.6 and best["epoch"] == 2  # saved at the end of epoch 2
    assert last["finished"] and last["global_step"] == 5 * 4  # 5 epochs of 4 batches
    # the kept best is epoch 2's weights, not the last ones
    diff = [
        k
        for k in best["state_dict"]
        if not torch.equal(best["state_dict"][k], last["state_dict"][k])
    ]
    assert diff
    # the stage is finished: --resume skips it instead of training the remaining epochs
    assert run_pipeline(cfg, host, ["float"], run_dir=str(run_dir), resume=True) == 0
    again = torch.load(ckpt / "float-checkpoint-last.pth.tar", weights_only=True)
    assert again["global_step"] == 5 * 4
