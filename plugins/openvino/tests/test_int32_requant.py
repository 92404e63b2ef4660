"""The int32 lowering of the export's int64 requantization, on its own: chains in the export's
form (``requant_codes`` of fcos-plugin-onnx) with extreme values -- full-range int16 codes,
31-bit and tiny multipliers, shifts from 1 to 62 varying per channel, accumulators of a wide
ConvInteger, saturation both ways -- against exact Python integers, under OpenVINO and ONNX
Runtime. The int64 graph itself is checked against the same reference under ONNX Runtime, and
shown to be wrong under OpenVINO (the root cause the lowering removes)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fcos_plugin_openvino.int32_requant import (  # noqa: E402
    LoweringError,
    int64_arithmetic,
    lower_int64_requantization,
)

C = 6  # channels


def _reference(v: list[int], n: int, lo: int, hi: int) -> int:
    """fcos's ``sat(floor((v + 2**(n-1)) / 2**n))`` on exact Python integers."""
    return min(max((v + (1 << (n - 1))) >> n, lo), hi)


class _Chain:
    """Build a graph in the export's form: ``x64 -> Mul(M) [+ Mul] -> Add(2**(n-1)) -> Mod ->
    Sub -> Div [-> Add zp] -> Clip -> Cast``."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.inits: list = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, ins: list[str], out: str, **kw) -> str:
        self.nodes.append(helper.make_node(op, ins, [out], name="n_" + out, **kw))
        return out

    def requant(self, v: str, shift: np.ndarray, zp: int, lo: int, hi: int, to: int) -> str:
        sh = shift.reshape(1, -1, 1, 1)
        t = self.node("Add", [v, self.const("off", np.left_shift(np.int64(1), sh - 1))], "t")
        div = self.const("div", np.left_shift(np.int64(1), sh))
        r = self.node("Mod", [t, div], "mod", fmod=0)
        q = self.node("Div", [self.node("Sub", [t, r], "floor"), div], "q")
        if zp:
            q = self.node("Add", [q, self.const("zp", np.array(zp, np.int64))], "qz")
        c = self.node(
            "Clip",
            [
                q,
                self.const("lo", np.array(lo + zp, np.int64)),
                self.const("hi", np.array(hi + zp, np.int64)),
            ],
            "sat",
        )
        return self.node("Cast", [c], "y", to=to)

    def model(self, inputs: list, out_type: int):
        g = helper.make_graph(
            self.nodes,
            "chain",
            inputs,
            [helper.make_tensor_value_info("y", out_type, [None] * 4)],
            initializer=self.inits,
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
        m.ir_version = 10
        return m


def _multipliers(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per channel: full 31-bit multipliers and a few tiny ones; shifts 1..62."""
    m = rng.integers(1 << 30, 1 << 31, C).astype(np.int64)
    m[0], m[1] = 1, 12345  # max_shift clamps: few significant bits
    n = np.array([62, 40, 31, 20, 16, 1], np.int64)[:C]
    return m, n


def _run_ov(model, feed):
    import tempfile
    from pathlib import Path

    import openvino as ov

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.onnx"
        p.write_bytes(model.SerializeToString())
        core = ov.Core()
        compiled = core.compile_model(
            core.read_model(str(p)),
            "CPU",
            {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1},
        )
        return compiled(feed)[0]


def _run_ort(model, feed):
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)[0]


def test_int16_codes_full_range_every_shift():
    rng = np.random.default_rng(0)
    m, n = _multipliers(rng)
    x = rng.integers(-32768, 32768, (2, C, 8, 8)).astype(np.int16)
    x[0, :, 0, :2] = [-32768, 32767]
    b = _Chain()
    x64 = b.node("Cast", ["x"], "x64", to=TensorProto.INT64)
    v = b.node("Mul", [x64, b.const("m", m.reshape(1, -1, 1, 1))], "v")
    b.requant(v, n, 0, -32768, 32767, TensorProto.INT16)
    model = b.model(
        [helper.make_tensor_value_info("x", TensorProto.INT16, list(x.shape))], TensorProto.INT16
    )
    want = np.vectorize(_reference, otypes=[np.int64])(
        x.astype(object) * m.reshape(1, -1, 1, 1).astype(object),
        n.reshape(1, -1, 1, 1),
        -32768,
        32767,
    )
    assert (want == 32767).any() and (want == -32768).any()  # saturation both ways
    assert np.array_equal(_run_ort(model, {"x": x}), want)  # the export's own semantics
    assert not np.array_equal(_run_ov(model, {"x": x}), want)  # OpenVINO's int64 is int32
    assert lower_int64_requantization(model) == 1
    assert int64_arithmetic(model) == []
    for run in (_run_ort, _run_ov):
        got = run(model, {"x": x})
        assert got.dtype == np.int16 and np.array_equal(got, want), run.__name__


@pytest.mark.parametrize("bias_bits", [20, 31], ids=["bias_in_acc", "bias_as_constant"])
def test_wide_conv_accumulator_with_bias_zero_point_and_relu(bias_bits):
    """ConvInteger over 2048 input channels (|acc| up to ~2**25), an int32 bias (small: added
    to the accumulator; up to 2**31: a constant of the chain), uint8 storage with zero point
    128 and a fused ReLU (lower bound 0)."""
    rng = np.random.default_rng(1)
    cin = 2048
    w = rng.integers(0, 256, (C, cin, 1, 1)).astype(np.uint8)
    w[:, : cin // 2] = 255  # large same-sign products: accumulators far from zero
    x = rng.integers(0, 256, (1, cin, 4, 4)).astype(np.uint8)
    x[..., :2] = 255
    x[..., 2:] = 0
    bias = rng.integers(-(1 << (bias_bits - 1)), 1 << (bias_bits - 1), C).astype(np.int64)
    bias[0] = -(1 << (bias_bits - 1))
    m = rng.integers(1 << 30, 1 << 31, C).astype(np.int64)
    n = np.array([45, 44, 43, 38, 52, 47], np.int64)
    b = _Chain()
    zp8 = b.const("zp8", np.array(128, np.uint8))
    acc = b.node("ConvInteger", ["x", b.const("w", w), zp8, zp8], "acc", kernel_shape=[1, 1])
    a64 = b.node("Cast", [acc], "acc64", to=TensorProto.INT64)
    a64 = b.node("Add", [a64, b.const("bias", bias.reshape(1, -1, 1, 1))], "accb")
    v = b.node("Mul", [a64, b.const("m", m.reshape(1, -1, 1, 1))], "v")
    b.requant(v, n, 128, 0, 127, TensorProto.UINT8)
    model = b.model(
        [helper.make_tensor_value_info("x", TensorProto.UINT8, list(x.shape))], TensorProto.UINT8
    )
    accs = np.einsum(
        "ck,bkhw->bchw", w[:, :, 0, 0].astype(np.int64) - 128, x.astype(np.int64) - 128
    )
    accs = accs + bias.reshape(1, -1, 1, 1)
    assert np.abs(accs).max() > 1 << 24
    want = (
        np.vectorize(_reference, otypes=[np.int64])(
            accs.astype(object) * m.reshape(1, -1, 1, 1).astype(object),
            n.reshape(1, -1, 1, 1),
            0,
            127,
        )
        + 128
    )
    assert np.array_equal(_run_ort(model, {"x": x}), want)
    lower_int64_requantization(model)
    for run in (_run_ort, _run_ov):
        assert np.array_equal(run(model, {"x": x}), want), run.__name__


def test_add_of_two_codes_one_shift():
    """``sat(round((a * Ma + b * Mb) / 2**n))`` of two int16 inputs, one shared shift."""
    rng = np.random.default_rng(2)
    a = rng.integers(-32768, 32768, (1, C, 8, 8)).astype(np.int16)
    c = rng.integers(-32768, 32768, (1, C, 8, 8)).astype(np.int16)
    ma, mb, n = (1 << 31) - 1, 987654321, 33
    b = _Chain()
    pa = b.node(
        "Mul",
        [b.node("Cast", ["a"], "a64", to=TensorProto.INT64), b.const("ma", np.array(ma, np.int64))],
        "pa",
    )
    pb = b.node(
        "Mul",
        [b.node("Cast", ["c"], "c64", to=TensorProto.INT64), b.const("mb", np.array(mb, np.int64))],
        "pb",
    )
    b.requant(b.node("Add", [pa, pb], "v"), np.array([n]), 0, -32768, 32767, TensorProto.INT16)
    spec = [helper.make_tensor_value_info(k, TensorProto.INT16, list(a.shape)) for k in "ac"]
    model = b.model(spec, TensorProto.INT16)
    want = np.vectorize(_reference, otypes=[np.int64])(
        a.astype(object) * ma + c.astype(object) * mb, n, -32768, 32767
    )
    lower_int64_requantization(model)
    for run in (_run_ort, _run_ov):
        assert np.array_equal(run(model, {"a": a, "c": c}), want), run.__name__


def test_unknown_int64_source_is_refused():
    """A multiplied int64 value that is neither a ConvInteger accumulator nor 8/16-bit codes
    (here an int32 graph input: its range is unknown) is not guessed at."""
    b = _Chain()
    v = b.node(
        "Mul",
        [b.node("Cast", ["x"], "x64", to=TensorProto.INT64), b.const("m", np.array(3, np.int64))],
        "v",
    )
    b.requant(v, np.array([2]), 0, -128, 127, TensorProto.INT8)
    model = b.model(
        [helper.make_tensor_value_info("x", TensorProto.INT32, [1, 1, 2, 2])], TensorProto.INT8
    )
    with pytest.raises(LoweringError, match="neither"):
        lower_int64_requantization(model)
