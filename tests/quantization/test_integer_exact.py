"""The integer-exact fake-quant graph (fcos_core.quantization.integer_exact): eval outputs equal
the integer model bit for bit, the exact accumulator equals the float64 reference, training
mode keeps gradients, the weight scales follow the weights after an optimizer step, and the
plain fake-quant graph (integer_exact: off) does *not* reach this (why the pass exists)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from quant_nets import (
    fit_to_teacher,
    images,
    make_ctx,
    make_detector,
    make_small,
    steps_apart,
)

from fcos_core.quantization import int_ops
from fcos_core.quantization.converters import (
    Float2Calibration,
    Float2QAT,
    QAT2Quantize,
    freeze_observers,
)
from fcos_core.quantization.integer_exact import IntegerExactOutput
from fcos_core.quantization.observers import MinMaxObserver
from fcos_core.quantization.prepare import fake_quants


def _outs(model, x):
    with torch.no_grad():
        return [o.clone() for o in model(x)]


def _calibrated_qat(make, ctx, integer_exact="eval", seed=0):
    cal = Float2Calibration(activation_observer=MinMaxObserver)(make(seed), ctx)
    with torch.no_grad():
        for i in range(3):
            cal(images(4, 300 + i))
    freeze_observers(cal)
    qat = Float2QAT(integer_exact=integer_exact)(make(seed), ctx)
    qat.load_state_dict(cal.state_dict())
    return qat


def _sgd_steps(model, teacher, steps=3, lr=5e-3):
    return fit_to_teacher(model, teacher, steps, lr, seed0=400)


@pytest.mark.parametrize("groups,cin,cout,k", [(1, 16, 8, 3), (16, 16, 16, 3), (1, 64, 32, 1)])
def test_exact_accumulator_equals_float64_reference(groups, cin, cout, k):
    g = torch.Generator().manual_seed(groups + cin)
    x = torch.randint(-128, 128, (2, cin, 9, 9), generator=g).double()
    w = torch.randint(-128, 128, (cout, cin // groups, k, k), generator=g).to(torch.int8)
    b = torch.randint(-5000, 5000, (cout,), generator=g).to(torch.int32)
    got = int_ops.conv2d_acc(x, w, b, (1, 1), (k // 2, k // 2), (1, 1), groups)
    assert int_ops._float32_holds_partial_sums(x, w)  # the float32 path was taken
    ref = F.conv2d(x, w.double(), None, 1, k // 2, 1, groups).long()
    ref = ref + b.long().reshape(1, -1, 1, 1)
    assert got.dtype == torch.int64 and torch.equal(got, ref)


def test_large_accumulators_fall_back_to_float64():
    # int16 inputs: partial sums beyond 2**24, where float32 would round
    x = torch.full((1, 64, 3, 3), 32767.0, dtype=torch.float64)
    x[0, ::2] = -32767.0
    w = torch.full((1, 64, 1, 1), 127, dtype=torch.int8)
    w[0, 1::3] = -113
    assert not int_ops._float32_holds_partial_sums(x, w)
    got = int_ops.conv2d_acc(x, w, None, (1, 1), (0, 0), (1, 1), 1)
    ref = F.conv2d(x, w.double()).long()
    assert torch.equal(got, ref)


def test_traced_integer_conv_keeps_float64():
    # a trace must not bake in the float32 choice made for one input
    x = torch.full((1, 4, 3, 3), 3.0, dtype=torch.float64)
    w = torch.ones(2, 4, 1, 1, dtype=torch.int8)
    traced = torch.jit.trace(
        lambda a: int_ops.conv2d_acc(a, w, None, (1, 1), (0, 0), (1, 1), 1), (x,)
    )
    big = torch.full((1, 4, 3, 3), 2.0**40 + 1, dtype=torch.float64)
    assert torch.equal(traced(big), F.conv2d(big, w.double()).long())


@pytest.mark.slow
def test_eval_outputs_equal_the_integer_model_after_training_steps():
    """The QAT weights move every step; eval must quantize the weights as they are now (the
    weight scales follow), and every conv/add output must match the integer model exactly."""
    ctx = make_ctx()
    qat = _calibrated_qat(make_detector, ctx)
    _sgd_steps(qat, make_detector(0))
    x = images(8, 31)
    fq_outs = _outs(qat, x)
    q = QAT2Quantize()(copy.deepcopy(qat), ctx)
    for a, b in zip(fq_outs, _outs(q, x)):
        assert torch.equal(a, b)


def test_training_mode_always_trains_on_integer_values_with_gradients():
    ctx = make_ctx()
    qat = _calibrated_qat(make_small, ctx, integer_exact="always")
    qat.train()
    x = images(4, 40)
    outs = qat(x)
    sum(o.square().mean() for o in outs).backward()
    grads = [p.grad for p in qat.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)
    # the training forward is the integer model's output for the current weights
    q = QAT2Quantize()(copy.deepcopy(qat), ctx)
    for a, b in zip(outs, _outs(q, x)):
        assert torch.equal(a.detach(), b)


def test_eval_mode_training_forward_is_plain_fake_quant():
    ctx = make_ctx()
    qat = _calibrated_qat(make_small, ctx, integer_exact="eval")
    qat.train()
    modules = [m for m in qat.modules() if isinstance(m, IntegerExactOutput)]
    assert modules and not any(m.active(torch.ones(1, dtype=torch.uint8)) for m in modules)
    qat.eval()
    assert all(m.active(torch.ones(1, dtype=torch.uint8)) for m in modules)
    assert not any(m.active(torch.zeros(1, dtype=torch.uint8)) for m in modules)


@pytest.mark.slow
def test_plain_fake_quant_is_not_bit_exact():
    """Without the pass the int16 outputs drift (float32 accumulation, round-half-even): the
    reason it exists. With it, the same model agrees exactly."""
    ctx = make_ctx()
    x = images(8, 50)
    results = {}
    for mode in ("off", "eval"):
        qat = _calibrated_qat(make_detector, ctx, integer_exact=mode)
        _sgd_steps(qat, make_detector(0))
        q = QAT2Quantize()(copy.deepcopy(qat), ctx)
        exact = [torch.equal(a, b) for a, b in zip(_outs(qat, x), _outs(q, x))]
        steps = [
            float(steps_apart(a, b, s).max())
            for a, b, s in zip(_outs(qat, x), _outs(q, x), q.body.output_scales())
        ]
        results[mode] = (all(exact), max(steps))
    assert results["eval"] == (True, 0.0)
    assert results["off"][0] is False and results["off"][1] >= 1.0


def test_exact_nodes_add_no_state_and_are_gone_after_conversion():
    ctx = make_ctx()
    on = Float2QAT()(make_small(0), ctx)
    off = Float2QAT(integer_exact="off")(make_small(0), ctx)
    assert set(on.state_dict()) == set(off.state_dict())
    assert any(isinstance(m, IntegerExactOutput) for m in on.modules())
    freeze_observers(on)
    q = QAT2Quantize()(on, ctx)
    assert not any(isinstance(m, IntegerExactOutput) for m in q.modules())


def test_bad_mode_is_refused():
    with pytest.raises(ValueError, match="integer_exact"):
        Float2QAT(integer_exact="sometimes")


def test_weight_scale_follows_weights_in_eval():
    ctx = make_ctx()
    qat = _calibrated_qat(make_small, ctx)
    qat.eval()
    gm = qat.graph_module
    weight_fqs = [fq for _, fq in fake_quants(gm) if fq.is_weight]
    with torch.no_grad():
        for p in qat.parameters():
            p.mul_(1.5)
        qat(images(1, 60))
    for fq in weight_fqs:
        w = gm.get_parameter(fq.weight_target)
        amax = w.detach().abs().flatten(1).amax(1)
        assert torch.allclose(fq.scale, amax / 127, rtol=1e-6)
