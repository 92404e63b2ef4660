"""LoadCheckpoint's reports and ModelConvertPipeline's order checks."""

from __future__ import annotations

import pytest
import torch
from engine_standins import StandinFloat2QAT, StandinQAT2Quantize, TinyDet
from torch import nn

from fcos_core.convert_context import ConvertContext
from fcos_core.engine.checkpoint_io import atomic_save
from fcos_core.engine.convert_pipeline import ModelConvertPipeline
from fcos_core.engine.load_checkpoint import LoadCheckpoint
from fcos_core.errors import FcosUserError
from fcos_core.quantization_state import conversions, get_qat_mode, get_qstate


def _save(tmp_path, state, name="float-checkpoint-best.pth.tar", **extra):
    path = tmp_path / name
    atomic_save({"state_dict": state, **extra}, path)
    return path


def test_missing_and_unexpected_keys_are_named(tmp_path):
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    state = model.state_dict()
    state.pop("1.bias")
    state["2.weight"] = torch.zeros(1)
    path = _save(tmp_path, state)
    with pytest.raises(FcosUserError) as err:
        LoadCheckpoint(str(path))(model)
    msg = str(err.value)
    assert "1 missing key(s)" in msg and "1.bias" in msg
    assert "1 unexpected key(s)" in msg and "2.weight" in msg
    loader = LoadCheckpoint(str(path), allow_miss=True, ignore_extra=True)
    other = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    loader(other)
    assert loader.report["missing"] == ["1.bias"] and loader.report["unexpected"] == ["2.weight"]
    assert torch.equal(other[0].weight, model[0].weight)
    assert not torch.equal(other[1].bias, model[1].bias)  # not in the file: left alone


def test_shape_mismatch_is_always_an_error(tmp_path):
    path = _save(tmp_path, {"weight": torch.zeros(4, 2), "bias": torch.zeros(4)})
    with pytest.raises(FcosUserError, match=r"shape mismatch.*weight \(file \(4, 2\), model"):
        LoadCheckpoint(str(path), strict=False)(nn.Linear(2, 3))


def test_missing_file_names_the_stage_that_writes_it(tmp_path):
    with pytest.raises(FcosUserError) as err:
        LoadCheckpoint(str(tmp_path / "calibration-checkpoint-best.pth.tar"))(nn.Linear(1, 1))
    assert "does not exist" in str(err.value)
    assert "stage 'calibration'" in err.value.hint and "--stage calibration" in err.value.hint


def test_qstate_mismatch_hint(tmp_path):
    qat = StandinFloat2QAT()(TinyDet(4), None)
    path = _save(tmp_path, qat.state_dict(), qstate="qat")
    with pytest.raises(FcosUserError) as err:
        LoadCheckpoint(str(path))(TinyDet(4))
    assert "saved from a qat model but the model is float" in err.value.hint


def test_pipeline_records_order_and_rejects_wrong_order(tmp_path):
    model = TinyDet(4)
    pipe = ModelConvertPipeline(qat_mode="fuse_bn", converters=[StandinQAT2Quantize()])
    with pytest.raises(FcosUserError) as err:
        pipe(model, ConvertContext())
    assert "needs a qat model, but the model is float" in str(err.value)
    assert "Float2QAT" in err.value.hint
    path = _save(
        tmp_path,
        StandinFloat2QAT()(TinyDet(4), None).state_dict(),
        name="qat-checkpoint-best.pth.tar",
    )
    pipe = ModelConvertPipeline(
        qat_mode="fuse_bn",
        converters=[StandinFloat2QAT(), LoadCheckpoint(str(path)), StandinQAT2Quantize()],
    )
    out = pipe(TinyDet(4), ConvertContext(example_inputs={"img": (1, 3, 16, 16)}))
    assert get_qstate(out) == "quantized" and get_qat_mode(out) == "fuse_bn"
    assert conversions(out) == ["StandinFloat2QAT", "LoadCheckpoint", "StandinQAT2Quantize"]
    assert isinstance(out.body, torch.fx.GraphModule)
    with pytest.raises(FcosUserError, match=r"QAT2Quantize needs a qat model.*quantized"):
        ModelConvertPipeline(converters=[StandinQAT2Quantize()])(out)


def test_plain_callables_and_none_results():
    seen = []
    out = ModelConvertPipeline(converters=[lambda m: seen.append("one-arg") or m])(nn.Linear(1, 1))
    assert seen == ["one-arg"] and isinstance(out, nn.Linear)
    with pytest.raises(TypeError, match="returned None"):
        ModelConvertPipeline(converters=[lambda m, ctx: None])(nn.Linear(1, 1))
