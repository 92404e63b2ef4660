"""Validation's ``val_on_train_begin``: the starting weights are scored before the first step,
and a fine-tune whose epochs never beat them keeps them as the ``best`` checkpoint; not on
``--resume``."""

from __future__ import annotations

import json

import torch

from fcos_core.engine.pipeline import run_pipeline


def _cfg(tiny_cfg, values, begin):
    return tiny_cfg(
        "float_trainer.num_epochs=3",
        f"float_trainer.val_metrics={{type: ScriptedMetric, values: {values}}}",
        "float_trainer.callbacks=[{type: Validation, data_loader: '${val_data_loader}', "
        f"val_on_train_begin: {str(begin).lower()}}}, '${{vars.ckpt_callback}}']",
        "float_predictor=null",
        "calibration_trainer=null",
        "qat_trainer=null",
        "int_infer_trainer=null",
        "int_infer_predictor=null",
        "compile_cfg=null",
    )


def test_a_fine_tune_that_never_beats_its_start_keeps_the_start(tiny_cfg, host, tmp_path):
    # start 0.9, then three epochs that score lower: best is the untouched start
    cfg = _cfg(tiny_cfg, [0.9, 0.5, 0.6, 0.7], begin=True)
    run_dir = tmp_path / "run"
    assert run_pipeline(cfg, host, ["float"], run_dir=str(run_dir)) == 0
    ckpt = tmp_path / "ckpt"
    best = torch.load(ckpt / "float-checkpoint-best.pth.tar", weights_only=True)
    last = torch.load(ckpt / "float-checkpoint-last.pth.tar", weights_only=True)
    assert best["metric"] == 0.9 and best["global_step"] == 0
    assert last["finished"] and last["global_step"] == 3 * 4
    changed = [
        k
        for k in best["state_dict"]
        if not torch.equal(best["state_dict"][k], last["state_dict"][k])
    ]
    assert changed  # the kept best is the starting weights, not the trained ones
    summary = json.loads((run_dir / "summary.json").read_text())["float"]
    assert summary["metrics"]["mAP"] == 0.7  # the last validation is still reported


def test_resume_does_not_score_the_start_again(tiny_cfg, host, tmp_path):
    cfg = _cfg(tiny_cfg, [0.9, 0.5, 0.6, 0.7], begin=True)
    assert run_pipeline(cfg, host, ["float"], run_dir=str(tmp_path / "run")) == 0
    # a finished stage is skipped on --resume; an unfinished one would restore after
    # on_loop_begin, so the start must not be validated then: check the flag is honoured
    from fcos_core.engine.callbacks.validation import Validation

    calls = []

    class _Ctx:
        resume = True

    class _Loop:
        is_training = True
        ctx = _Ctx()

    v = Validation(data_loader=[object()], val_on_train_begin=True)
    v.validate = lambda loop: calls.append(loop)
    v.on_loop_begin(_Loop())
    assert calls == []
    _Loop.ctx = type("C", (), {"resume": False})()
    v.on_loop_begin(_Loop())
    assert len(calls) == 1


def test_an_epoch_that_beats_the_start_wins(tiny_cfg, host, tmp_path):
    cfg = _cfg(tiny_cfg, [0.3, 0.5, 0.8, 0.6], begin=True)
    assert run_pipeline(cfg, host, ["float"], run_dir=str(tmp_path / "run")) == 0
    best = torch.load(tmp_path / "ckpt" / "float-checkpoint-best.pth.tar", weights_only=True)
    assert best["metric"] == 0.8 and best["global_step"] == 2 * 4


def test_off_by_default_the_first_validation_is_epoch_one(tiny_cfg, host, tmp_path):
    cfg = _cfg(tiny_cfg, [0.9, 0.5, 0.6], begin=False)
    run_dir = tmp_path / "run"
    assert run_pipeline(cfg, host, ["float"], run_dir=str(run_dir)) == 0
    best = torch.load(tmp_path / "ckpt" / "float-checkpoint-best.pth.tar", weights_only=True)
    assert best["metric"] == 0.9 and best["global_step"] == 4
    summary = json.loads((run_dir / "summary.json").read_text())["float"]
    assert summary["metrics"]["mAP"] == 0.6  # the last validation
