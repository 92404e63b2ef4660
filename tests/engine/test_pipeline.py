"""The stage pipeline end to end with stand-ins: run folder, summary, checkpoints, skipping."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from fcos_core.engine.checkpoint_io import load_file
from fcos_core.engine.pipeline import run_pipeline
from fcos_core.engine.summary import COCO_KEYS
from fcos_core.errors import FcosUserError

ALL = ["float", "calibration", "qat", "int_infer", "compile"]


@pytest.mark.slow
def test_all_stages(tiny_cfg, host, tmp_path, capsys):
    cfg = tiny_cfg()
    run_dir = tmp_path / "run"
    assert run_pipeline(cfg, host, ALL, run_dir=str(run_dir)) == 0
    out = capsys.readouterr().out
    assert "stage" in out and "mAP" in out and "checkpoint" in out
    for stage in ALL:
        assert stage in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert list(summary) == ALL
    for stage in ALL[:4]:
        entry = summary[stage]
        assert set(entry["metrics"]) == set(COCO_KEYS)
        assert entry["seconds"] > 0 and entry["checkpoint"].endswith("-checkpoint-best.pth.tar")
    assert summary["float"]["source"] == "predictor"  # float_predictor is configured
    assert summary["qat"]["source"] == "validation"  # no qat_predictor: last validation
    ckpt = tmp_path / "ckpt"
    assert load_file(ckpt / "qat-checkpoint-best.pth.tar")["qstate"] == "qat"
    assert load_file(ckpt / "int_infer-checkpoint-best.pth.tar")["qstate"] == "quantized"
    traced = list(ckpt.glob("int_infer-*.pt*"))
    assert traced, "SaveTraced wrote nothing"
    report = json.loads((ckpt / "compile" / "report.json").read_text())
    assert report["qstate"] == "quantized" and report["shapes"] == [[1, 1], [1, 1]]
    assert report["options"]["name"] == "tiny_model"
    # run folder
    for name in (
        "config.resolved.yaml",
        "log.jsonl",
        "metrics.csv",
        "loss.png",
        "lr.png",
        "map.png",
    ):
        assert (run_dir / name).is_file(), name
        assert (run_dir / name).stat().st_size > 0
    rows = list(csv.DictReader((run_dir / "metrics.csv").read_text().splitlines()))
    cols = set(rows[0])
    assert {
        "kind",
        "stage",
        "epoch",
        "step",
        "lr",
        "loss",
        "loss_cls",
        "loss_reg",
        "train_cls",
        "val_mAP",
    } <= cols
    float_steps = [r for r in rows if r["stage"] == "float" and r["kind"] == "step"]
    assert [int(r["step"]) for r in float_steps] == list(range(1, 9))
    events = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert any(e["event"] == "train" and e["logger"] == "fcos.float" for e in events)
    assert all({"timestamp", "level", "event"} <= set(e) for e in events)


@pytest.mark.slow
def test_single_stage_skip_and_missing_previous_checkpoint(tiny_cfg, host, tmp_path, capsys):
    cfg = tiny_cfg("qat_trainer=null", "int_infer_trainer=null")
    with pytest.raises(FcosUserError) as err:
        run_pipeline(cfg, host, ["calibration"], run_dir=str(tmp_path / "run"))
    assert "float-checkpoint-best.pth.tar" in str(err.value)
    assert "stage 'float'" in err.value.hint
    run_pipeline(cfg, host, ["float"], run_dir=str(tmp_path / "run"))
    run_pipeline(cfg, host, ["calibration", "qat", "int_infer"], run_dir=str(tmp_path / "run"))
    log = (tmp_path / "run" / "log.jsonl").read_text()
    assert "no qat_trainer block" in log and "no int_infer_trainer block" in log
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert list(summary) == ["float", "calibration"]  # merged across the two invocations


@pytest.mark.slow
def test_stage_alone_equals_stage_in_pipeline(tiny_cfg, host, tmp_path):
    cfg = tiny_cfg("calibration_trainer=null", "qat_trainer=null", "int_infer_trainer=null")
    run_pipeline(cfg, host, ALL, run_dir=str(tmp_path / "a"))
    first = load_file(tmp_path / "ckpt" / "float-checkpoint-last.pth.tar")["state_dict"]
    run_pipeline(cfg, host, ["float"], run_dir=str(tmp_path / "b"), overwrite=True)
    second = load_file(tmp_path / "ckpt" / "float-checkpoint-last.pth.tar")["state_dict"]
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_compile_without_a_backend_names_the_package(tmp_path):
    from types import SimpleNamespace

    from engine_helpers import ctx_for

    from fcos_core.engine.compile_stage import run_compile_stage

    cfg = SimpleNamespace(
        compile_backend=None, compile_options=None, data={"compile_cfg": {"march": "nash_e"}}
    )
    with pytest.raises(FcosUserError) as err:
        run_compile_stage(cfg, ctx_for(tmp_path, stage="compile"))
    assert "march 'nash_e'" in str(err.value) and "pip install fcos-plugin-nash-e" in err.value.hint
    assert run_compile_stage(SimpleNamespace(compile_backend=None, data={}), None) is None
