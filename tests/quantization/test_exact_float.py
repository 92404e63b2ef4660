"""Calibration, QAT and the integer model turn TF32 off (cuBLAS and cuDNN).

TF32 rounds float32 inputs to 10 mantissa bits; the integer-exact paths hold int16 values in
float32 convolutions, so on an Ampere-or-later GPU they would no longer match the integer
model bit for bit. The flags are process-wide torch settings that exist (and can be read and
set) without a GPU, so this checks on CPU that each path sets them; benchmarks/gpu_check.py
checks the bits on a GPU.
"""

from __future__ import annotations

import types

import pytest
import torch
from quant_nets import make_ctx, make_small

from fcos_core.engine.loop import Loop
from fcos_core.quantization import int_ops
from fcos_core.quantization.converters import Float2Calibration, Float2QAT, QAT2Quantize
from fcos_core.quantization.exact_float import require_exact_float32, tf32_enabled


@pytest.fixture
def tf32_on():
    """Both TF32 flags on (as a user's float training may set them); restored afterwards."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _off() -> bool:
    return not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


def test_require_exact_float32_reports_and_clears(tf32_on):
    assert tf32_enabled()
    assert require_exact_float32("test") is True
    assert _off() and not tf32_enabled()
    assert require_exact_float32("test") is False  # already off


@pytest.mark.parametrize("converter", [Float2Calibration, Float2QAT])
def test_preparing_for_calibration_or_qat_turns_tf32_off(converter, tf32_on):
    converter()(make_small(0), make_ctx())
    assert _off()


def test_the_integer_model_turns_tf32_off(tf32_on):
    ctx = make_ctx()
    qat = Float2QAT()(make_small(0), ctx)
    torch.backends.cuda.matmul.allow_tf32 = True  # float work in between may turn it on again
    torch.backends.cudnn.allow_tf32 = True
    QAT2Quantize()(qat, ctx)
    assert _off()


def test_a_loop_with_a_quantized_model_turns_tf32_off(tf32_on):
    """A stage loop (calibrator, QAT trainer, predictor) given an already converted model."""
    model = Float2QAT()(make_small(0), make_ctx())
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    ctx = types.SimpleNamespace(device="cpu", local_rank=0, channels_last=False, stage="qat")
    loop = Loop(model, None, (), "cpu")
    loop.prepare_model(ctx)
    assert _off()


def test_a_float_loop_leaves_tf32_alone(tf32_on):
    ctx = types.SimpleNamespace(device="cpu", local_rank=0, channels_last=False, stage="float")
    Loop(make_small(0), None, (), "cpu").prepare_model(ctx)
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32


def test_the_exact_accumulator_is_exact_with_int16_inputs():
    """The values TF32 would round (int16 activations): the float32 accumulator is exact."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-32768, 32767, (1, 2, 5, 5), generator=g)
    w = torch.randint(-127, 127, (3, 2, 3, 3), generator=g)
    acc = int_ops.conv2d_acc(x, w, None, (1, 1), (1, 1), (1, 1), 1)
    ref = torch.zeros_like(acc)
    xp = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for c in range(3):
        for i in range(5):
            for j in range(5):
                ref[0, c, i, j] = (xp[0, :, i : i + 3, j : j + 3] * w[c]).sum()
    assert torch.equal(acc, ref)
