"""find_integer_model / require_integer_model: the integer model inside a deploy model, one
rule for every compile backend and exporter."""

from __future__ import annotations

import pytest
import torch
from quant_nets import images, make_ctx, make_detector, make_small
from torch import nn

from fcos_core.errors import FcosUserError
from fcos_core.quantization.converters import Float2Calibration, QAT2Quantize, freeze_observers
from fcos_core.quantization.find_integer import find_integer_model, require_integer_model
from fcos_core.quantization.integer_model import IntegerModel


class _PostProcess(nn.Module):
    def __init__(self, for_compile: bool) -> None:
        super().__init__()
        self.for_compile = for_compile


def quantize(model: nn.Module) -> nn.Module:
    ctx = make_ctx()
    cal = Float2Calibration()(model, ctx)
    with torch.no_grad():
        cal(images(2, 0))
    freeze_observers(cal)
    return QAT2Quantize()(cal, ctx)


def test_float_models_are_not_quantized():
    for model in (make_small(), make_detector()):
        assert find_integer_model(model) is None
        with pytest.raises(FcosUserError, match="not a quantized deploy model") as err:
            require_integer_model(model)
        assert "QAT2Quantize" in err.value.hint


def test_integer_model_and_detector_body():
    int_model = quantize(make_small())
    assert isinstance(int_model, IntegerModel)
    assert find_integer_model(int_model) == (int_model, None)
    assert require_integer_model(int_model) == (int_model, None)

    detector = quantize(make_detector())
    assert isinstance(detector.body, IntegerModel)
    assert find_integer_model(detector) == (detector.body, None)  # no post-process
    detector.post_process = _PostProcess(for_compile=False)
    assert find_integer_model(detector) == (detector.body, None)  # not meant for compiling
    detector.post_process = _PostProcess(for_compile=True)
    assert require_integer_model(detector) == (detector.body, detector.post_process)
