"""fcos_core.engine.stage_eval (what `fcos val` scores) against the numbers `fcos run` wrote:
the tiny pipeline with stand-ins, every stage, with and without a predictor block."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fcos_core.engine import stage_eval
from fcos_core.engine.pipeline import run_pipeline
from fcos_core.errors import FcosUserError
from fcos_core.logging_setup import get_logger

ALL = ["float", "calibration", "qat", "int_infer", "compile"]


@pytest.fixture(scope="module")
def ran(host, tmp_path_factory):
    """The tiny pipeline run once for the module: (config, summary.json, checkpoint folder)."""
    # by path, not `from conftest import`: at run time `conftest` may name another folder's
    tiny_config = Path(__file__).resolve().parent / "tiny_pipeline.yaml"
    from fcos_core.config import load_config
    from fcos_core.logging_setup import close_logging, configure_logging

    root = tmp_path_factory.mktemp("stage_eval")
    cfg = load_config(tiny_config, host, [f"ckpt_dir={root / 'ckpt'}"])
    configure_logging(None, level="warning")
    try:
        assert run_pipeline(cfg, host, ALL, run_dir=str(root / "run")) == 0
    finally:
        close_logging()
    return cfg, json.loads((root / "run" / "summary.json").read_text()), root / "ckpt"


def _score(cfg, stage, checkpoint=None):
    ctx = stage_eval.stage_context(cfg, stage, None, get_logger("test"))
    ev = stage_eval.prepare(cfg, stage, ctx, checkpoint)
    ev.check_files()
    return ev, ev.run(ctx)


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage,source",
    [
        ("float", "float_predictor"),
        ("calibration", "calibration_trainer"),
        ("qat", "qat_trainer"),
        ("int_infer", "int_infer_predictor"),
    ],
)
def test_each_stage_scores_what_the_pipeline_scored(ran, stage, source):
    cfg, summary, _ = ran
    ev, results = _score(cfg, stage)
    assert ev.source.startswith(source)
    # a predictor's numbers, or (no predictor) the stage's last validation of its best weights
    assert results == summary[stage]["metrics"]


@pytest.mark.slow
def test_checkpoint_replaces_the_weights(ran):
    cfg, _, ckpt = ran
    last = str(ckpt / "float-checkpoint-last.pth.tar")
    ev, _ = _score(cfg, "float", last)
    assert ev.weights == last
    ev, _ = _score(cfg, "calibration", str(ckpt / "calibration-checkpoint-last.pth.tar"))
    assert ev.weights.endswith("calibration-checkpoint-last.pth.tar")


def test_missing_checkpoint_names_the_stage_that_writes_it(tiny_cfg, tmp_path):
    cfg = tiny_cfg()
    ctx = stage_eval.stage_context(cfg, "int_infer", None, get_logger("test"))
    ev = stage_eval.prepare(cfg, "int_infer", ctx)
    with pytest.raises(FcosUserError) as err:
        ev.check_files()
    assert "qat-checkpoint-best.pth.tar" in str(err.value)
    assert "--stage qat" in str(err.value)


@pytest.mark.slow
def test_compile_needs_a_runtime_that_decodes(ran):
    cfg, _, _ = ran
    ctx = stage_eval.stage_context(cfg, "compile", None, get_logger("test"))
    with pytest.raises(FcosUserError, match="cannot run its artifact"):
        stage_eval.prepare(cfg, "compile", ctx)  # the stand-in backend has no detect()


def test_unknown_stage_suggests_the_nearest():
    with pytest.raises(FcosUserError) as err:
        stage_eval.parse_stage("int-infer")
    assert "int_infer" in str(err.value)
