"""Float2Calibration / Float2QAT / QAT2Quantize on a conv-BN-ReLU-add net and a tiny FCOS body:
order checks, checkpoint round trips, QAT vs integer model, export, rules, registration."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from quant_nets import (
    fit_to_teacher,
    images,
    make_ctx,
    make_detector,
    make_small,
    steps_apart,
)

from fcos_core.errors import FcosUserError
from fcos_core.quantization.converters import (
    Float2Calibration,
    Float2QAT,
    QAT2Quantize,
    freeze_observers,
)
from fcos_core.quantization.histogram_observers import KLObserver, MSEObserver
from fcos_core.quantization.integer_model import IntegerModel, integer_program
from fcos_core.quantization.observers import MinMaxObserver, PercentileObserver
from fcos_core.quantization.prepare import fake_quants
from fcos_core.quantization.rules import QuantRules
from fcos_core.quantization_state import get_qstate


def roundtrip(sd: dict) -> dict:
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def outputs(model, x):
    with torch.no_grad():
        return [o.clone() for o in model(x)]


def calibrate(model, steps=3, seed=100):
    with torch.no_grad():
        for i in range(steps):
            model(images(4, seed + i))
    freeze_observers(model)
    return model


def train_qat(model, teacher, steps=5, lr=1e-2):
    """A few SGD steps towards the float teacher's outputs (moves weights and ranges)."""
    return fit_to_teacher(model, teacher, steps, lr, seed0=200)


# -- module-scoped flow on the small net (conversions cost an export each) -------------------


@pytest.fixture(scope="module")
def small_flow():
    ctx = make_ctx()
    float_net = make_small(0)
    calibrated = calibrate(Float2Calibration()(make_small(0), ctx))
    qat = Float2QAT()(make_small(1), ctx)  # other weights: all must come from the checkpoint
    qat.load_state_dict(roundtrip(calibrated.state_dict()))
    qat = train_qat(qat, float_net)
    freeze_observers(qat)
    quantized = QAT2Quantize()(copy.deepcopy(qat), ctx)
    return {
        "ctx": ctx,
        "float": float_net,
        "calibrated": calibrated,
        "qat": qat,
        "quantized": quantized,
    }


def test_states_are_recorded(small_flow):
    assert get_qstate(small_flow["calibrated"]) == "calibration"
    assert get_qstate(small_flow["qat"]) == "qat"
    assert get_qstate(small_flow["quantized"]) == "quantized"
    assert isinstance(small_flow["quantized"], IntegerModel)


def test_calibration_checkpoint_round_trip(small_flow):
    cal = small_flow["calibrated"]
    fresh = Float2QAT()(make_small(7), small_flow["ctx"])
    sd = roundtrip(cal.state_dict())
    assert set(sd) == set(fresh.state_dict())  # same structure after both converters
    fresh.load_state_dict(sd)
    freeze_observers(fresh)
    x = images(3, 5)
    for a, b in zip(outputs(cal, x), outputs(fresh.eval(), x)):
        assert torch.equal(a, b)


def test_qat_checkpoint_round_trip(small_flow):
    qat = small_flow["qat"]
    fresh = Float2QAT()(make_small(8), small_flow["ctx"])
    fresh.load_state_dict(roundtrip(qat.state_dict()))
    freeze_observers(fresh)
    x = images(3, 6)
    for a, b in zip(outputs(qat, x), outputs(fresh.eval(), x)):
        assert torch.equal(a, b)


def test_quantized_checkpoint_round_trip(small_flow):
    ctx = small_flow["ctx"]
    fresh = QAT2Quantize()(Float2QAT()(make_small(9), ctx), ctx)  # uncalibrated structure
    fresh.load_state_dict(roundtrip(small_flow["quantized"].state_dict()))
    x = images(3, 7)
    for a, b in zip(outputs(small_flow["quantized"], x), outputs(fresh, x)):
        assert torch.equal(a, b)


def test_qat_and_quantized_agree_bit_exactly(small_flow):
    # the fake-quant graph computes conv/add outputs with the integer arithmetic in eval mode
    qat, qm = small_flow["qat"], small_flow["quantized"]
    x = images(16, 11)
    for a, b in zip(outputs(qat, x), outputs(qm, x)):
        assert torch.equal(a, b)


def test_quantized_model_traces_and_exports(small_flow):
    qm = small_flow["quantized"]
    x = images(2, 12)
    ref = outputs(qm, x)
    traced = torch.jit.trace(qm, (x,))
    ep = torch.export.export(qm, (x,))
    for r, t, e in zip(ref, traced(x), ep.module()(x)):
        assert torch.equal(r, t) and torch.equal(r, e)


def _numpy_interpreter(records, img: np.ndarray) -> dict:
    """An independent executor of the op records, written from docs/quantization.md."""

    def rshift_round(v, n):
        return (v + (np.int64(1) << (n - 1))) >> n

    def sat(v, dtype):
        lo, hi = {"int8": (-128, 127), "int16": (-32768, 32767), "int32": (-(2**31), 2**31 - 1)}[
            dtype
        ]
        return np.clip(v, lo, hi).astype(np.int64)

    def chan(t):
        return t.reshape(1, -1, 1, 1) if t.ndim == 1 else t

    env = {}
    for rec in records:
        op, t = rec.op, {k: v.numpy() for k, v in rec.tensors.items()}
        a = op.attrs
        x = [img if i == "img" else env[i] for i in op.inputs]
        if op.kind == "quantize":
            inv = np.float32(1.0) / t["scale"].astype(np.float32)
            out = sat(np.round(x[0].astype(np.float32) * inv), op.dtype)
        elif op.kind == "conv2d":
            xi = torch.from_numpy(x[0].astype(np.float64))
            acc = (
                torch.nn.functional.conv2d(
                    xi,
                    torch.from_numpy(t["weight"].astype(np.float64)),
                    None,
                    a["stride"],
                    a["padding"],
                    a["dilation"],
                    a["groups"],
                )
                .numpy()
                .astype(np.int64)
            )
            if "bias" in t:
                acc = acc + chan(t["bias"].astype(np.int64))
            if op.dtype == "int32":
                out = sat(np.maximum(acc, 0) if a["relu"] else acc, "int32")
            else:
                v = rshift_round(acc * chan(t["multiplier"]), chan(t["shift"]))
                out = sat(np.maximum(v, 0) if a["relu"] else v, op.dtype)
        elif op.kind == "add":
            v = rshift_round(x[0] * t["multiplier_a"] + x[1] * t["multiplier_b"], t["shift"])
            out = sat(np.maximum(v, 0) if a["relu"] else v, op.dtype)
        elif op.kind == "requantize":
            out = sat(rshift_round(x[0] * t["multiplier"], t["shift"]), op.dtype)
        elif op.kind == "relu":
            out = np.maximum(x[0], 0)
        elif op.kind == "max_pool2d":
            out = (
                torch.nn.functional.max_pool2d(
                    torch.from_numpy(x[0].astype(np.float64)),
                    a["kernel_size"],
                    a["stride"],
                    a["padding"],
                    a["dilation"],
                    a["ceil_mode"],
                )
                .numpy()
                .astype(np.int64)
            )
        elif op.kind == "upsample_nearest2d":
            f = [int(v) for v in a["scale_factors"]]
            out = x[0].repeat(f[0], axis=2).repeat(f[1], axis=3)
        elif op.kind == "cat":
            out = np.concatenate(x, axis=a["dim"])
        else:
            raise AssertionError(op.kind)
        env[op.name] = out
    return env


def test_op_records_reproduce_the_model_bit_exactly(small_flow):
    qm = small_flow["quantized"]
    records = integer_program(qm)
    kinds = {r.op.kind for r in records}
    assert {"quantize", "conv2d", "add", "max_pool2d", "upsample_nearest2d"} <= kinds
    for r in records:
        if r.op.kind == "conv2d":
            assert r.tensors["weight"].dtype == torch.int8
            assert r.tensors["multiplier"].dtype == torch.int64
            assert r.tensors["bias"].dtype == torch.int32 if "bias" in r.tensors else True
    x = images(2, 13)
    env = _numpy_interpreter(records, x.numpy())
    ints = qm.run_all(x)
    for name in qm.outputs:
        assert np.array_equal(env[name], ints[name].long().numpy()), name
    # and the dequantized outputs are float32(q * s)
    for name, out in zip(qm.outputs, outputs(qm, x)):
        s = qm.ops[name].scale.double().numpy()
        ref = (env[name] * (s.reshape(1, -1, 1, 1) if s.ndim else s)).astype(np.float32)
        assert np.array_equal(ref, out.numpy())


# -- order errors ----------------------------------------------------------------------------


def test_wrong_converter_order_is_a_clear_error(ctx):
    with pytest.raises(FcosUserError, match="QAT2Quantize needs a qat or calibration model") as e:
        QAT2Quantize()(make_small(), ctx)
    assert "Float2QAT" in e.value.hint
    qat = Float2QAT()(make_small(), ctx)
    with pytest.raises(FcosUserError, match="Float2QAT needs a float model"):
        Float2QAT()(qat, ctx)
    with pytest.raises(FcosUserError, match="Float2Calibration needs a float model"):
        Float2Calibration()(qat, ctx)
    q = QAT2Quantize()(qat, ctx)
    with pytest.raises(FcosUserError, match="QAT2Quantize needs"):
        QAT2Quantize()(q, ctx)


# -- every observer through the converter --------------------------------------------------


@pytest.mark.parametrize(
    "name,cls,options",
    [
        ("minmax", MinMaxObserver, {}),
        ("percentile", PercentileObserver, {"percentile": 99.9}),
        ("mse", MSEObserver, {}),
        ("kl", KLObserver, {"stride": 8}),
    ],
)
def test_calibration_with_each_observer(name, cls, options, ctx):
    model = Float2Calibration(activation_observer=cls.with_args(**options))(make_small(), ctx)
    acts = [fq for _, fq in fake_quants(model) if not fq.is_weight]
    assert acts and all(
        isinstance(fq.activation_post_process, cls)
        for fq in acts
        if fq.activation_post_process.__class__.__name__ != "FixedRangeObserver"
    )
    calibrate(model, steps=2)
    float_out = outputs(make_small(), images(4, 3))
    q_out = outputs(model, images(4, 3))
    # percentile and KL clip the sparse ReLU output (mostly zeros) hard: lower bars for them
    bar = {"minmax": 20.0, "mse": 20.0, "kl": 10.0, "percentile": 5.0}[name]
    for f, q in zip(float_out, q_out):
        sqnr = 10 * torch.log10((f**2).sum() / ((q - f) ** 2).sum())
        assert sqnr > bar, (name, float(sqnr))
    # the input is never observed: scale 1/128
    inputs = [
        fq for fq in acts if fq.activation_post_process.__class__.__name__ == "FixedRangeObserver"
    ]
    assert len(inputs) == 1 and inputs[0].scale.item() == 1 / 128


# -- the FCOS-like body: int16 outputs, shared head convs, per-stride BN --------------------


@pytest.fixture(scope="module")
def detector_flow():
    ctx = make_ctx()
    cal = Float2Calibration(activation_observer=MinMaxObserver)(make_detector(0), ctx)
    calibrated = calibrate(cal)
    qat = Float2QAT()(make_detector(1), ctx)
    qat.load_state_dict(roundtrip(calibrated.state_dict()))
    qat = train_qat(qat, make_detector(0), steps=3, lr=1e-3)
    freeze_observers(qat)
    quantized = QAT2Quantize()(copy.deepcopy(qat), ctx)
    return {"ctx": ctx, "qat": qat, "quantized": quantized}


def test_detector_body_is_replaced_and_the_rest_kept(detector_flow):
    q = detector_flow["quantized"]
    assert isinstance(q.body, IntegerModel) and isinstance(q.extra, torch.nn.Linear)
    assert q.body.output_dtypes() == ("int16",) * 6
    outs = outputs(q, images(2, 21))
    assert [tuple(o.shape) for o in outs] == [
        (2, 3, 8, 8),
        (2, 3, 4, 4),
        (2, 4, 8, 8),
        (2, 4, 4, 4),
        (2, 1, 8, 8),
        (2, 1, 4, 4),
    ]


def test_detector_int16_outputs_match_qat_within_one_step(detector_flow):
    qat, q = detector_flow["qat"], detector_flow["quantized"]
    x = images(8, 22)
    within, total = 0, 0
    for a, b, s in zip(outputs(qat, x), outputs(q, x), q.body.output_scales()):
        d = steps_apart(a, b, s)
        within += int((d <= 1.0 + 1e-3).sum())
        total += d.numel()
        assert torch.equal(a, b)  # int16 outputs too: bit-exact, not only within a step
    assert within == total


def test_detector_integer_outputs_when_not_dequantized(detector_flow):
    q = copy.deepcopy(detector_flow["quantized"])
    x = images(2, 23)
    floats = outputs(q, x)
    q.body.dequant_output = False
    ints = outputs(q, x)
    assert all(i.dtype == torch.int16 for i in ints)
    for i, f, s in zip(ints, floats, q.body.output_scales()):
        assert torch.equal((i.double() * s.double()).float(), f)


def test_int32_outputs_when_the_head_asks_for_neither(ctx):
    model = make_small(0, int8_output=False, int16_output=False)
    qat = calibrate(Float2QAT()(model, ctx))
    q = QAT2Quantize()(copy.deepcopy(qat), ctx)
    assert q.output_dtypes() == ("int32", "int32")
    x = images(4, 30)
    for a, b, s in zip(outputs(qat, x), outputs(q, x), q.output_scales()):
        assert s.numel() > 1  # per-channel accumulator scale
        assert torch.equal(a, b)  # the exact accumulator, dequantized the same way


# -- rules from the backend ----------------------------------------------------------------


class _Backend:
    def __init__(self, rules):
        self.rules = rules

    def quantization_rules(self):
        return self.rules


def test_backend_rules_are_used():
    ctx = make_ctx()
    ctx.backend = _Backend(QuantRules(add_inputs_share_scale=True, input_scale=1 / 64))
    q = QAT2Quantize()(calibrate(Float2QAT()(make_small(), ctx)), ctx)
    records = {r.op.name: r for r in integer_program(q)}
    quant = [r for r in records.values() if r.op.kind == "quantize"]
    assert quant[0].tensors["scale"].item() == 1 / 64
    for r in records.values():
        if r.op.kind == "add":
            assert torch.equal(r.input_scales[0], r.input_scales[1])
            assert torch.equal(r.tensors["multiplier_a"], r.tensors["multiplier_b"])


def test_unsupported_op_is_refused_with_its_name():
    ctx = make_ctx()
    ctx.backend = _Backend(
        QuantRules(supported_ops={"conv2d", "relu", "add", "upsample_nearest2d"})
    )
    with pytest.raises(FcosUserError, match="max_pool2d"):
        Float2QAT()(make_small(), ctx)


def test_rules_reject_bad_values():
    with pytest.raises(ValueError, match="input_scale"):
        QuantRules(input_scale=0)
    with pytest.raises(ValueError, match="cannot lower"):
        QuantRules(supported_ops={"conv2d", "sigmoid"})
    with pytest.raises(ValueError, match="multiplier_bits"):
        QuantRules(multiplier_bits=40)


# -- registration ------------------------------------------------------------------------


def test_converters_and_observers_are_registered_and_build_from_yaml():
    from fcos_core.plugins import load_host
    from fcos_core.testing import build_block

    host = load_host()
    assert {"Float2Calibration", "Float2QAT", "QAT2Quantize"} <= set(
        host.registries["converters"].names()
    )
    assert set(host.registries["observers"].names()) >= {"minmax", "percentile", "mse", "kl"}
    conv = build_block(
        host, "converters", "type: Float2Calibration\nactivation_observer: {type: kl, bins: 512}\n"
    )
    assert isinstance(conv, Float2Calibration)
    obs = conv.observer(dtype=torch.int16)
    assert isinstance(obs, KLObserver) and obs.bins == 512 and obs.quant_max == 32767
    # a bare name is the observer with its defaults
    obs = build_block(
        host, "converters", "type: Float2Calibration\nactivation_observer: percentile\n"
    ).observer()
    assert isinstance(obs, PercentileObserver) and obs.percentile == 99.99
    # omitted: mse for calibration, a 0.01 moving-average minmax for QAT
    assert isinstance(
        build_block(host, "converters", "type: Float2Calibration").observer(), MSEObserver
    )
    assert build_block(host, "converters", "type: Float2QAT").observer().averaging_constant == 0.01
    conv = build_block(
        host, "converters", "type: Float2QAT\nqat_observer: {type: minmax, averaging_constant: 0.1}"
    )
    assert conv.observer().averaging_constant == 0.1
    assert isinstance(build_block(host, "converters", "type: QAT2Quantize"), QAT2Quantize)


def test_converter_arguments_are_checked():
    with pytest.raises(TypeError, match="'minmax' is an observer name"):
        Float2Calibration(activation_observer="minmax")
    with pytest.raises(ValueError, match="qat_mode"):
        Float2QAT(qat_mode="with_bn")
    with pytest.raises(ValueError, match="averaging_constant"):
        Float2QAT(qat_observer=MinMaxObserver.with_args(averaging_constant=0))
    with pytest.raises(FcosUserError, match="not a SymmetricObserver"):
        Float2Calibration(activation_observer=lambda **kw: torch.nn.Identity())


def test_observer_options_are_checked_in_the_config():
    from fcos_core.errors import ConfigError
    from fcos_core.testing import build_block, make_host

    host = make_host()
    # unknown observer name: the registry's message, at the observer's path
    with pytest.raises(ConfigError, match="median"):
        build_block(
            host, "converters", "type: Float2Calibration\nactivation_observer: {type: median}"
        )
    # an observer option on the converter (the old flat form) names the new form
    with pytest.raises(ConfigError, match="no longer takes 'percentile'"):
        build_block(
            host,
            "converters",
            "type: Float2Calibration\nactivation_observer: percentile\npercentile: 99.9",
        )
    # a bad value is reported when the converter is built, not mid-calibration
    with pytest.raises(ConfigError, match=r"percentile.*rejected its arguments"):
        build_block(
            host,
            "converters",
            "type: Float2Calibration\nactivation_observer: {type: percentile, percentile: 200}",
        )
