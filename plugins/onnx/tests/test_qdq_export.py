"""The QDQ exporter against the fcos integer model: every value, every output form, the
uint8/int8 activation storage, int8/int16/int32 outputs, pyramid input and opset limits."""

from __future__ import annotations

import numpy as np
import onnx_testnets as nets
import onnxruntime as ort
import pytest
import torch

from fcos_core.quantization.integer_model import integer_program
from fcos_plugin_onnx.agreement import code_agreement, to_codes
from fcos_plugin_onnx.qdq_export import ExportError, build_qdq_model, check_program


def _session(exported, optimized_path=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    if optimized_path:
        so.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(
        exported.model.SerializeToString(), so, providers=["CPUExecutionProvider"]
    )


def _export(model, **kw):
    kw.setdefault("input_shape", (1, 3, nets.SIZE, nets.SIZE))
    kw.setdefault("strides", nets.STRIDES)
    return build_qdq_model(
        integer_program(model.body),
        model.body.outputs,
        dequant_output=model.body.dequant_output,
        **kw,
    )


def _specs(exported):
    return [
        {"name": s.name, "scale": s.scale, "zero_point": s.zero_point} for s in exported.outputs
    ]


@pytest.mark.parametrize("uint8", [True, False])
def test_every_integer_value_matches_the_integer_model(trained, uint8):
    """Each intermediate tensor of ORT's graph, as integer codes, against IntegerModel.run_all.

    Measured: identical codes for every value with uint8 storage; with int8 storage ORT runs
    some convs in float and one element in ~10^4 moves by one step. The bound (99.9 % equal,
    none beyond one step) leaves room for other CPUs' rounding."""
    q = trained["deploy"]
    exported = _export(q, max_logit=True, expose_values=True, uint8_activations=uint8)
    x = torch.cat([trained["batch"]["img"], nets.images(4, seed=11)])
    outs = _session(exported).run(None, {"img": x.numpy()})
    env = q.body.run_all(x)
    values = exported.values
    assert len(values) >= 30  # every int8 value of the program is exposed
    assert {"add", "cat", "max_pool2d", "upsample_nearest2d"} <= {v.name for v in values}
    for j, spec in enumerate(values):
        raw = outs[len(exported.outputs) + j]
        assert raw.dtype == np.dtype(spec.dtype)
        if spec.dtype in ("uint8", "int8"):
            assert spec.dtype == ("uint8" if uint8 else "int8")
            assert spec.zero_point == (128 if uint8 else 0)
        d = np.abs(to_codes(raw, spec.scale, spec.zero_point) - env[spec.name].numpy())
        assert (d == 0).mean() >= 0.999, spec.name
        assert d.max() <= 1, spec.name


def test_uint8_storage_lets_ort_fuse_every_int8_conv(trained, tmp_path):
    """ORT's x86 QLinearConv takes uint8 activations: with uint8 storage every conv with an
    int8 output fuses (the int16 head predictors run as float convs); with plain int8 storage
    ORT rewrites only some Q/DQ pairs to uint8 and fewer convs fuse."""
    import onnx

    q = trained["deploy"]
    program = integer_program(q.body)
    int8_convs = sum(1 for r in program if r.op.kind == "conv2d" and r.op.dtype == "int8")
    fused = {}
    for uint8 in (True, False):
        path = tmp_path / f"opt_{uint8}.onnx"
        _session(_export(q, max_logit=True, uint8_activations=uint8), path)
        ops = [n.op_type for n in onnx.load(str(path)).graph.node]
        fused[uint8] = ops.count("QLinearConv")
    assert fused[True] == int8_convs
    assert fused[False] < fused[True]


@pytest.mark.parametrize("dequant", [False, True])
def test_int16_outputs_codes_and_floats(trained, dequant):
    q = trained["deploy"]
    q.body.dequant_output = dequant
    try:
        exported = _export(q, max_logit=True)
        x = trained["batch"]["img"]
        outs = _session(exported).run(None, {"img": x.numpy()})
        with torch.no_grad():
            ref = q(x)
    finally:
        q.body.dequant_output = False
    assert [s.name for s in exported.outputs][:3] == ["cls_8", "cls_16", "cls_32"]
    assert exported.outputs[-1].name == "max_logit_32"
    assert len(outs) == len(ref) == 4 * len(nets.STRIDES)
    for o, r in zip(outs, ref):
        assert o.shape == tuple(r.shape)
        assert o.dtype == (np.float32 if dequant else np.int16)
    res = code_agreement(ref, outs, _specs(exported))
    assert res["within_1"] >= 0.999 and res["within_2"] == 1.0, res


def _untrained(**kw):
    model = nets.randomise_bn(nets.make_fcos(seed=3, train=False, **kw), 3).eval()
    return nets.quantize(model, [nets.images(4, seed=s) for s in (1, 2)])


@pytest.mark.parametrize("dequant", [False, True])
def test_int32_accumulator_outputs(dequant):
    """A head with neither int8 nor int16 output keeps the last convs' int32 accumulators
    (per-channel scale s_in * s_w[c]); ORT computes them as float convs. Measured: every
    element within one accumulator step for codes; floats within a relative 1e-5."""
    q = _untrained(int16_output=False, dequant_output=dequant)
    assert set(q.body.output_dtypes()) == {"int32"}
    exported = _export(q)
    x = nets.images(2, seed=5)
    outs = _session(exported).run(None, {"img": x.numpy()})
    with torch.no_grad():
        ref = q(x)
    for o, r, spec in zip(outs, ref, exported.outputs):
        assert len(spec.scale) == r.shape[1]  # per output channel
        if dequant:
            assert o.dtype == np.float32
            np.testing.assert_allclose(o, r.numpy(), rtol=1e-5, atol=1e-6)
        else:
            assert o.dtype == np.int32
            assert np.abs(o.astype(np.int64) - r.numpy().astype(np.int64)).max() <= 1


def test_int8_outputs_are_plain_int8_codes():
    q = _untrained(int16_output=False, int8_output=True, dequant_output=False)
    assert set(q.body.output_dtypes()) == {"int8"}
    exported = _export(q)  # uint8 storage inside, int8 (zero point 0) at the outputs
    x = nets.images(2, seed=6)
    outs = _session(exported).run(None, {"img": x.numpy()})
    with torch.no_grad():
        ref = q(x)
    for o in outs:
        assert o.dtype == np.int8
    res = code_agreement(ref, outs, _specs(exported))
    assert res["within_1"] >= 0.999 and res["max_steps"] <= 2, res


def test_pyramid_input_is_raw_uint8_planes(trained):
    """``pyramid``: uint8 [B, 3, H, W] in; (x - 128) / 128 inside equals Normalize(128, 128)."""
    q = trained["deploy"]
    exported = _export(q, max_logit=True, pyramid_input=True)
    assert exported.input_dtype == "uint8"
    raw = torch.randint(0, 256, (2, 3, nets.SIZE, nets.SIZE), dtype=torch.uint8)
    outs = _session(exported).run(None, {"img": raw.numpy()})
    with torch.no_grad():
        ref = q((raw.float() - 128) / 128)
    res = code_agreement(ref, outs, _specs(exported))
    assert res["within_1"] >= 0.999 and res["within_2"] == 1.0, res


def test_opset_below_21_cannot_hold_int16(trained):
    program = integer_program(trained["deploy"].body)
    problems = check_program(program, opset=20)
    int16 = [r for r in program if r.op.dtype == "int16"]
    assert len(problems) == len(int16) == 3 * len(nets.STRIDES)
    layer, kind, reason = problems[0]
    assert kind == "conv2d" and layer == int16[0].op.attrs["source"] and "opset" in reason
    with pytest.raises(ExportError, match="opset >= 21"):
        _export(trained["deploy"], opset=20)
    with pytest.raises(ExportError, match="needs >= 18"):
        _export(trained["deploy"], opset=17)
    assert check_program(program, opset=21) == []
